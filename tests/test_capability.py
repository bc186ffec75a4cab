"""Running without CAP_SYS_ADMIN, dropped with capsh (libcap2-bin): one clear line naming
the capability, exit 1, and nothing left behind — no new BPF program (bpftool), the stats
sysctl and its crash marker untouched, the port not held. tests/test_daemon.py covers the
setpriv variant; this one drops the capability from the bounding set the way an init
script or container runtime would, through a shell."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from linnix_exporter.kernel.stats_markers import markers
from linnix_exporter.kernel.stats_switch import SYSCTL
from tests.kernel_helpers import REPO, bpftool_progs, free_port

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--bpf.stats-method", "sysctl"),  # the path that would write the sysctl
        ("--no-probes.enabled", "--bpf.read-method", "syscall"),
    ],
    ids=["defaults", "sysctl-method", "no-probes"],
)
def test_capsh_drop_sys_admin(extra: tuple[str, ...]) -> None:
    capsh = shutil.which("capsh")
    assert capsh, "capsh missing: install Debian's libcap2-bin"
    port = free_port()
    cmd = [
        sys.executable, "-m", "linnix_exporter", "run",
        "--web.listen-address", f"127.0.0.1:{port}", *extra,
    ]  # fmt: skip
    before_progs = set(bpftool_progs())
    before_sysctl = SYSCTL.read_text()
    # One process from capsh to python (each execs the next): its pid names its markers.
    proc = subprocess.Popen(
        [capsh, "--drop=cap_sys_admin", "--", "-c", f"exec {shlex.join(cmd)}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    out, err = proc.communicate(timeout=60)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    # The shell really ran without it: CapEff of a process started the same way.
    probe = subprocess.run(
        [capsh, "--drop=cap_sys_admin", "--", "-c", "grep CapEff /proc/self/status"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert not int(probe.stdout.split()[1], 16) & (1 << 21), probe.stdout
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "CAP_SYS_ADMIN" in lines[0] and "Traceback" not in p.stderr
    assert set(bpftool_progs()) - before_progs == set()
    assert SYSCTL.read_text() == before_sysctl
    assert markers(pid=proc.pid) == []
    with socket.socket() as s:  # the port was never taken (or was released)
        s.bind(("127.0.0.1", port))
