"""Host preparation: capabilities, headers fallback, BTF, tracefs; and log output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linnix_exporter.kernel import host
from tests.kernel_helpers import REPO, free_port


def test_missing_caps_from_mask() -> None:
    only_bpf = 1 << host.CAP_BPF
    assert host.missing_caps((host.CAP_SYS_ADMIN, host.CAP_BPF), only_bpf) == ["CAP_SYS_ADMIN"]
    assert host.missing_caps((host.CAP_BPF,), only_bpf) == []


def test_caps_read_from_proc(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000200000\n")
    assert host.effective_caps(str(status)) == 1 << host.CAP_SYS_ADMIN


def test_headers_linked_from_debian_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    arch = src / "linux-headers-6.1.0-9-amd64"
    common = src / "linux-headers-6.1.0-9-common"
    (arch / "include" / "generated").mkdir(parents=True)
    common.mkdir()
    modules = tmp_path / "modules"
    msg = host.ensure_kernel_headers("9.9.9-test", modules, str(src / "linux-headers-*-amd64"))
    assert "linked" in msg
    assert (modules / "9.9.9-test" / "build").resolve() == arch.resolve()
    assert (modules / "9.9.9-test" / "source").resolve() == common.resolve()
    # Second call finds them and changes nothing.
    assert "present" in host.ensure_kernel_headers("9.9.9-test", modules, str(src / "x-*"))


def test_no_headers_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(host.HostError, match="apt-get install linux-headers-amd64"):
        host.ensure_kernel_headers("9.9.9-test", tmp_path, str(tmp_path / "none-*"))


def test_no_btf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(host.HostError, match="CONFIG_DEBUG_INFO_BTF"):
        host.check_btf(tmp_path / "vmlinux")


@pytest.mark.kernel
def test_tracefs_is_mounted_after_prepare() -> None:
    host.prepare()
    assert (host.TRACEFS / "events" / "sched" / "sched_process_fork").is_dir()


@pytest.mark.kernel
def test_logs_are_json_lines_when_not_a_tty() -> None:
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "linnix_exporter",
            "run",
            "--no-probes.enabled",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "debug",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0
    records = [json.loads(line) for line in err.splitlines()]
    events = [r["event"] for r in records]
    assert "listening" in events and "stopping" in events
    assert all({"level", "timestamp"} <= r.keys() for r in records)
    assert os.environ.get("LINNIX_EXPORTER_LOG_FORMAT") is None
