"""A kernel where BPF_ENABLE_STATS is denied, for real: a seccomp filter (classic BPF,
installed with prctl from ctypes) makes bpf(BPF_ENABLE_STATS) fail with EPERM and lets
every other syscall, and every other bpf() command, through. The exporter runs under it:

- `--bpf.stats-method auto` falls back to the sysctl (reported, stats really on, the
  sysctl put back at exit);
- `--bpf.stats-method enable_stats_fd` runs with stats off, says so in /metrics, the log
  and /readyz;
- the values scraped from those real runs, fed to promtool with alerts/linnix-rules.yaml,
  make LinnixBpfStatsDisabled fire for the denied run and stay silent for the others.

"Stats on" is checked independently: a trivial program run with BPF_PROG_TEST_RUN, and
bpftool's run_cnt for it (the kernel counts runs only while stats are on)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from alerts import rules
from linnix_exporter.kernel.bpf_syscall import BpfError
from linnix_exporter.kernel.stats_markers import markers, saved
from linnix_exporter.kernel.stats_switch import SYSCTL
from tests.kernel_helpers import REPO, Daemon, daemon
from tests.support.statsprobe import assert_stats_off, free_window, stats_counting, stats_holders

pytestmark = pytest.mark.kernel

BPF_ENABLE_STATS = 32
ALERT = "LinnixBpfStatsDisabled"
RULES_FILE = REPO / rules.RULES_FILE

# ---- the seccomp filter -----------------------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# (AUDIT_ARCH_*, __NR_bpf) per machine: the filter must compare both, since syscall
# numbers differ between architectures.
ARCHES = {"x86_64": (0xC000003E, 321), "aarch64": (0xC00000B7, 280)}
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_NR, _ARCH, _ARG0 = 0, 4, 16
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def deny_enable_stats_filter() -> bytes:
    """if arch == ours and nr == bpf and (u32)args[0] == BPF_ENABLE_STATS: EPERM; else allow.
    The kernel reads bpf()'s cmd as an int, so the low 32 bits of args[0] are the cmd."""
    arch, nr_bpf = ARCHES[platform.machine()]
    return b"".join(
        [
            _insn(_LD_W_ABS, 0, 0, _ARCH),
            _insn(_JEQ_K, 0, 5, arch),  # other arch: allow (jump to the last insn)
            _insn(_LD_W_ABS, 0, 0, _NR),
            _insn(_JEQ_K, 0, 3, nr_bpf),
            _insn(_LD_W_ABS, 0, 0, _ARG0),
            _insn(_JEQ_K, 0, 1, BPF_ENABLE_STATS),
            _insn(_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
            _insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ]
    )


def deny_enable_stats() -> None:
    """Install the filter on this process (inherited by its exec and its children)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prog = deny_enable_stats_filter()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("<HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))  # sock_fprog
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    zero = ctypes.c_ulong(0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), fbuf, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) (CONFIG_SECCOMP_FILTER?)")


# A tiny wrapper: install the filter, then exec the command (argv after -c CODE).
WRAPPER = (
    "import os, sys; from tests.test_stats_denied import deny_enable_stats; "
    "deny_enable_stats(); os.execv(sys.argv[1], sys.argv[1:])"
)


DENY = (sys.executable, "-c", WRAPPER)  # argv prefix: the command runs under the filter


def denied(cmd: list[str]) -> list[str]:
    return [*DENY, *cmd]


# ---- independent checks --------------------------------------------------------------------


def seccomp_mode(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln.split()[1] for ln in f if ln.startswith("Seccomp:")))


# ---- running the exporter ----------------------------------------------------------------


def exporter(method: str, deny: bool) -> contextlib.AbstractContextManager[Daemon]:
    return daemon(
        "--collect.interval", "1s", "--no-probes.enabled", "--bpf.read-method", "syscall",
        "--bpf.stats-method", method,
        launcher=DENY if deny else (),
    )  # fmt: skip


def wait_first_tick(d: Daemon, timeout: float = 30) -> tuple[int, str]:
    """/readyz once a collection is done (ready or not): (status, body)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert d.proc.poll() is None, d.proc.stderr.read() if d.proc.stderr else ""
        with contextlib.suppress(OSError):
            status, body, _ = d.get("/readyz")
            if "no collection yet" not in body:
                return status, body.strip()
        time.sleep(0.1)
    raise AssertionError("no collection in time")


def stats_samples(m: dict[str, float]) -> dict[str, float]:
    """method label -> value of linnix_bpf_stats_enabled, as served."""
    prefix = "linnix_bpf_stats_enabled{method="
    return {k[len(prefix) : -1]: v for k, v in m.items() if k.startswith(prefix)}


def log_events(d: Daemon) -> list[dict[str, Any]]:
    assert d.proc.stderr is not None and d.proc.poll() is not None
    return [json.loads(line) for line in d.proc.stderr.read().splitlines() if line.strip()]


# ---- promtool from the real output -------------------------------------------------------


def _alert_rule() -> dict[str, Any]:
    for g in rules.groups_yaml():
        assert isinstance(g, dict) and isinstance(g["rules"], list)
        for r in g["rules"]:
            if isinstance(r, dict) and r.get("alert") == ALERT:
                return r
    raise AssertionError(f"{ALERT} not in the rules")


def _render(template: str, labels: dict[str, str]) -> str:
    for k, v in labels.items():
        template = template.replace("{{ $labels." + k + " }}", v)
    assert "{{" not in template, template  # a template this test does not know how to fill
    return template


def promtool_rule_test(
    tmp: Path, samples: dict[str, float], instance: str, firing: list[str]
) -> subprocess.CompletedProcess[str]:
    """Feed the scraped linnix_bpf_stats_enabled samples, held for 15 minutes, to the
    shipped rules; expect the alert at 10 min to be firing for the series of the methods
    in `firing`, and for no other."""
    job = "linnix-exporter"
    series = [
        {
            "series": f'linnix_bpf_stats_enabled{{job="{job}",instance="{instance}",'
            f'method="{method}"}}',
            "values": f"{value:g}x15",
        }
        for method, value in samples.items()
    ]
    rule = _alert_rule()
    exp: list[dict[str, Any]] = []
    for method in firing:
        labels = {"job": job, "instance": instance, "method": method}
        exp.append(
            {
                "exp_labels": {**labels, **rule["labels"]},
                "exp_annotations": {
                    k: _render(str(v), labels) for k, v in rule["annotations"].items()
                },
            }
        )
    test = {
        "rule_files": [str(RULES_FILE)],
        "evaluation_interval": "1m",
        "group_eval_order": [g.name for g in rules.groups()],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "10m", "alertname": ALERT, "exp_alerts": exp}],
            }
        ],
    }
    path = tmp / f"stats_{'_'.join(firing) or 'silent'}.yaml"
    path.write_text(json.dumps(test, indent=1))  # JSON is YAML
    return subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def assert_alert(tmp: Path, samples: dict[str, float], instance: str, firing: bool) -> None:
    """promtool agrees that the alert fires for every scraped series (firing) or for
    none, and disagrees with the opposite expectation (so the check can fail)."""
    methods = sorted(samples)
    ok = promtool_rule_test(tmp, samples, instance, methods if firing else [])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = promtool_rule_test(tmp, samples, instance, [] if firing else methods)
    assert wrong.returncode == 1 and ALERT in wrong.stdout + wrong.stderr, wrong.stdout


# ---- tests -------------------------------------------------------------------------------


def test_filter_denies_enable_stats_only() -> None:
    """Under the filter: BPF_ENABLE_STATS -> EPERM; other bpf() commands still work."""
    code = (  # load a program, find it by walking ids, read its info: all allowed
        "from linnix_exporter.kernel.bpf_syscall import *\n"
        "from tests.support import trivial_prog\n"
        "fd = trivial_prog.load('lnx_seccomp')\n"
        "seen = prog_id_of_fd(fd) in [p.id for p in ProgReader().all()]\n"
        "try:\n    enable_stats(); print('enabled')\n"
        "except BpfError as e:\n    print('errno', e.errno, seen)\n"
    )
    p = subprocess.run(
        denied([sys.executable, "-c", code]), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["errno", str(errno.EPERM), "True"], p.stdout
    # Without the filter the same call works (so the filter is what denies it).
    from linnix_exporter.kernel.bpf_syscall import enable_stats

    try:
        os.close(enable_stats())
    except BpfError as e:  # pragma: no cover - this machine allows it
        pytest.fail(f"BPF_ENABLE_STATS fails even without the filter: {e}")


def test_auto_falls_back_to_sysctl(tmp_path: Path) -> None:
    free_window("the fallback must find the sysctl at 0 to switch it", sysctl_only=True)
    orig = SYSCTL.read_text().strip()
    with exporter("auto", deny=True) as d:
        d.wait_ready()
        assert seccomp_mode(d.proc.pid) == 2  # the daemon itself runs filtered
        m = d.wait_tick(1)
        samples = stats_samples(m)
        assert samples == {"sysctl": 1.0}, samples
        assert SYSCTL.read_text().strip() == "1"
        assert saved(d.proc.pid) == [orig]  # crash marker holds the value to restore
        assert stats_counting()
        assert d.get("/readyz")[0] == 200
        assert d.stop(signal.SIGTERM) == 0
    events = log_events(d)
    (stats_event,) = [e for e in events if e["event"] == "bpf stats"]
    assert stats_event["method"] == "sysctl" and stats_event["enabled"] is True
    assert "BPF_ENABLE_STATS failed" in stats_event["note"]
    assert "not permitted" in stats_event["note"]
    assert SYSCTL.read_text().strip() == orig
    assert markers(pid=d.proc.pid) == []
    assert_stats_off()
    assert_alert(tmp_path, samples, f"127.0.0.1:{d.port}", firing=False)


def test_enable_stats_fd_denied_runs_with_stats_off(tmp_path: Path) -> None:
    orig = SYSCTL.read_text().strip()
    with exporter("enable_stats_fd", deny=True) as d:
        status, why = wait_first_tick(d)
        assert status == 503 and why == "BPF statistics are off (method off)", (status, why)
        m = d.wait_tick(1)
        samples = stats_samples(m)
        assert samples == {"off": 0.0}, samples
        # Really off: the daemon holds no enable-stats fd and did not touch the sysctl,
        # and the kernel does not count runs once other holders (if any) let go.
        assert str(d.proc.pid) not in [h.split()[0] for h in stats_holders()], stats_holders()
        assert SYSCTL.read_text().strip() == orig
        assert_stats_off()
        assert d.get("/healthz")[0] == 200  # alive, just not ready
        assert d.stop(signal.SIGTERM) == 0
    events = log_events(d)
    (stats_event,) = [e for e in events if e["event"] == "bpf stats"]
    assert stats_event["level"] == "warning"
    assert stats_event["enabled"] is False and stats_event["method"] == "off"
    assert "BPF_ENABLE_STATS failed" in stats_event["note"]
    assert SYSCTL.read_text().strip() == orig
    assert_alert(tmp_path, samples, f"127.0.0.1:{d.port}", firing=True)


def test_without_filter_the_fd_works_and_the_alert_stays_silent(tmp_path: Path) -> None:
    """The control: same flags, no filter."""
    with exporter("enable_stats_fd", deny=False) as d:
        d.wait_ready()
        assert seccomp_mode(d.proc.pid) == 0
        samples = stats_samples(d.wait_tick(1))
        assert samples == {"enable_stats_fd": 1.0}, samples
        assert stats_counting()
        assert d.stop(signal.SIGTERM) == 0
    assert_stats_off()
    assert_alert(tmp_path, samples, f"127.0.0.1:{d.port}", firing=False)
