"""README features through the daemon itself, on the real kernel: each flag or behaviour
the README promises, run from the command line and observed from outside (HTTP, bpftool,
/proc, the sysctl file), not through the classes that implement it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from linnix_exporter import __version__
from linnix_exporter.kernel.stats_markers import markers, saved
from linnix_exporter.kernel.stats_switch import SYSCTL, StatsSwitch
from tests.kernel_helpers import (
    REPO,
    Daemon,
    bpftool_progs,
    daemon,
    forks,
    held_ids,
    parse_metrics,
)
from tests.support import trivial_prog
from tests.support.certs import self_signed
from tests.support.statsprobe import free_window

pytestmark = pytest.mark.kernel

RUN = (sys.executable, "-m", "linnix_exporter", "run", "--web.listen-address", "127.0.0.1:0")


def events(d: Daemon) -> list[dict[str, object]]:
    assert d.proc.stderr is not None
    return [json.loads(ln) for ln in d.proc.stderr.read().splitlines() if ln.startswith("{")]


# ---- HTTP ---------------------------------------------------------------------------


def test_custom_telemetry_path_budget_and_build_info() -> None:
    with daemon("--no-probes.enabled", "--web.telemetry-path", "/stats",
                "--overhead.budget", "2.5%", "--bpf.node-budget", "7%") as d:  # fmt: skip
        d.wait_ready()
        status, body, _ = d.get("/stats")
        assert status == 200
        m = parse_metrics(body)
        assert m["linnix_overhead_budget_ratio{}"] == 0.025
        assert m["linnix_bpf_budget_ratio{}"] == 0.07
        info = f"python_version={platform.python_version()},version={__version__}"
        assert m[f"linnix_exporter_build_info{{{info}}}"] == 1
        assert d.get("/metrics")[0] == 404
        assert 'href="/stats"' in d.get("/")[1]
        assert d.stop() == 0


def test_old_flag_spellings_work_with_a_deprecation_line() -> None:
    """--overhead-budget and --node-name (before the dotted scheme) still configure the
    daemon; each use logs one warning naming the new spelling."""
    with daemon("--no-probes.enabled", "--overhead-budget", "3%", "--node-name", "n1") as d:
        d.wait_ready()
        assert d.metrics()["linnix_overhead_budget_ratio{}"] == 0.03
        assert d.stop() == 0
        warned = [e for e in events(d) if e.get("event") == "deprecated flag, use the new spelling"]
    assert [(e["flag"], e["use"], e["level"]) for e in warned] == [
        ("--overhead-budget", "--overhead.budget", "warning"),
        ("--node-name", "--node.name", "warning"),
    ]


def test_prometheus_disabled_serves_only_health() -> None:
    with daemon("--no-probes.enabled", "--no-prometheus.enabled") as d:
        d.wait_ready()  # /readyz answers 200
        assert d.get("/healthz")[0] == 200
        assert d.get("/metrics")[0] == 404
        assert d.stop() == 0


def https_get(
    port: int, path: str, ctx: ssl.SSLContext, auth: tuple[str, str] | None
) -> tuple[int, str, dict[str, str]]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def test_web_config_file_tls_and_basic_auth(tmp_path: Path) -> None:
    """TLS and basic auth from --web.config.file, in the daemon: every path needs the
    password, plain HTTP is refused, the certificate is the configured one."""
    certs = self_signed(tmp_path)
    pw_hash = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  alice: '{pw_hash}'\n"
    )
    ctx = ssl.create_default_context(cafile=str(certs / "server.crt"))
    good = ("alice", "s3cret")
    with daemon("--no-probes.enabled", "--web.config.file", str(cfg)) as d:
        deadline = time.monotonic() + 60
        while True:
            assert d.proc.poll() is None, "daemon exited"
            try:
                if https_get(d.port, "/readyz", ctx, good)[0] == 200:
                    break
            except (OSError, ssl.SSLError):
                pass
            assert time.monotonic() < deadline, "never ready over TLS"
            time.sleep(0.2)
        status, body, _ = https_get(d.port, "/metrics", ctx, good)
        assert status == 200 and "linnix_bpf_programs " in body
        for path in ("/metrics", "/healthz", "/readyz"):
            status, _, headers = https_get(d.port, path, ctx, None)
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
        assert https_get(d.port, "/metrics", ctx, ("alice", "wrong"))[0] == 401
        assert d.get("/healthz")[0] == 400  # plain HTTP to the TLS port
        assert d.stop() == 0


# ---- collection ---------------------------------------------------------------------


def test_failed_collection_keeps_the_last_tick_and_counts() -> None:
    """A collection that fails (here: the daemon cannot open one more fd, its soft
    RLIMIT_NOFILE lowered from outside) leaves the last good tick served and counts the
    failure; raising the limit again, it recovers by itself."""
    with daemon("--no-probes.enabled", "--collect.interval", "500ms") as d:
        d.wait_ready()
        s = d.session()  # opened first: the scrapes below need no new fd in the daemon
        m = s.metrics()
        pid = d.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # A new fd takes the lowest free number, which must be below the soft limit: with
        # the limit at 3, every open() fails while the fds already open keep working.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, hard))
        try:
            time.sleep(1.5)  # ~3 collections
            frozen = s.metrics()
            time.sleep(1.0)
            later = s.metrics()
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        key = "linnix_exporter_collections_total{}"
        errors = "linnix_exporter_collect_errors_total{}"
        stamp = "linnix_exporter_last_collect_timestamp_seconds{}"
        assert m[errors] == 0
        assert later[key] == frozen[key] and later[stamp] == frozen[stamp]  # the last good
        assert later[errors] >= frozen[errors] + 1 >= 2  # each failed collection counted
        deadline = time.monotonic() + 10
        while (after := s.metrics())[key] == later[key]:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.1)
        assert after[errors] >= later[errors] and after[stamp] > later[stamp]
        s.close()
        assert d.stop() == 0
    logged = [e["event"] for e in events(d)]
    assert logged.count("collection failed") == 1  # once per distinct error, not per tick
    assert "collection recovered" in logged


# ---- statistics switch ----------------------------------------------------------------


@pytest.fixture
def sysctl_off() -> Iterator[None]:
    """The sysctl off before (another agent on a shared node may hold it on for a
    while: wait, bounded) and after, whatever the test left."""
    free_window("the sysctl tests need kernel.bpf_stats_enabled at 0", sysctl_only=True)
    try:
        yield
    finally:
        StatsSwitch().recover_after_crash()  # markers a killed daemon of ours left
        SYSCTL.write_text("0")


@pytest.mark.usefixtures("sysctl_off")
def test_stats_already_on_is_left_on() -> None:
    SYSCTL.write_text("1")  # another agent turned them on
    with daemon("--no-probes.enabled", "--bpf.stats-method", "sysctl") as d:
        d.wait_ready()
        m = d.wait_tick(0)
        assert m["linnix_bpf_stats_enabled{method=already_on}"] == 1
        assert markers(pid=d.proc.pid) == []  # nothing of ours to restore
        assert d.stop() == 0
    assert SYSCTL.read_text().strip() == "1"  # not ours to switch off


@pytest.mark.usefixtures("sysctl_off")
def test_sysctl_restored_after_a_killed_run() -> None:
    with daemon("--no-probes.enabled", "--bpf.stats-method", "sysctl") as d:
        d.wait_ready()
        assert SYSCTL.read_text().strip() == "1"
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        killed = d.proc.pid
    # Left changed by the killed run, with the value to restore in the marker.
    assert SYSCTL.read_text().strip() == "1"
    assert saved(killed) == ["0"]
    with daemon("--no-probes.enabled") as d:
        d.wait_ready()
        assert SYSCTL.read_text().strip() == "0"
        assert markers(pid=killed) == []
        assert d.metrics()["linnix_bpf_stats_enabled{method=enable_stats_fd}"] == 1
        assert d.stop() == 0
    restored = [e for e in events(d) if str(e["event"]).startswith("restored kernel.bpf_stats")]
    assert len(restored) == 1 and restored[0]["value"] == "0"


# ---- exit 1 when the host cannot run it --------------------------------------------------


def in_mount_namespace(setup: str) -> subprocess.CompletedProcess[str]:
    """The daemon in a private mount namespace prepared by `setup` (shell), as on a host
    where that is how things are."""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{setup} && exec "$@"', "sh",
         *RUN],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def test_no_btf_exits_1_naming_it() -> None:
    r = in_mount_namespace("mount -t tmpfs none /sys/kernel/btf")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("linnix-exporter: error:") and "/sys/kernel/btf/vmlinux" in last


def test_probe_compile_failure_exits_1_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "probes.c"
    broken.write_text("int linnix_fork(void *ctx) { return not_declared; }\n")
    r = in_mount_namespace(f"mount --bind {broken} {REPO / 'bpf' / 'probes.c'}")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("linnix-exporter: error: cannot load the probes")
    assert "not_declared" in last  # the compiler's own error, not a bare "failed"


# ---- flags in a running daemon ---------------------------------------------------------


def owners_of(m: dict[str, float], prog_id: int) -> set[int]:
    """owner_pid of every owner_info series of one program (labels in any order)."""
    pids = set()
    for k in m:
        if k.startswith("linnix_bpf_program_owner_info{"):
            labels = dict(x.split("=", 1) for x in k[k.index("{") + 1 : -1].split(","))
            if labels["id"] == str(prog_id):
                pids.add(int(labels["owner_pid"]))
    return pids


@pytest.fixture
def programs() -> Iterator[dict[str, int]]:
    """Two programs loaded before the daemon: name -> id."""
    fds = [trivial_prog.load("lnx_inc_a"), trivial_prog.load("lnx_exc_b")]
    try:
        progs = bpftool_progs()
        yield {
            p["name"]: i for i, p in progs.items() if p.get("name") in ("lnx_inc_a", "lnx_exc_b")
        }
    finally:
        trivial_prog.close_all(fds)


def id_mark() -> int:
    """The id the kernel gives a program loaded now (then unloaded). Ids are handed out
    in order, so two marks one apart mean no program was loaded between them, not even
    one that came and went between two listings."""
    fd = trivial_prog.load("lnx_idmark")
    try:
        (prog_id,) = [i for i, p in bpftool_progs().items() if p.get("name") == "lnx_idmark"]
        return prog_id
    finally:
        os.close(fd)


@contextlib.contextmanager
def fd_sharer_process() -> Iterator[int]:
    """A new process that loaded nothing but holds our program fds (forked with them):
    a new owner of programs that already existed. Yields its pid."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_fd)
        os.read(read_fd, 1)  # until the test closes its end
        os._exit(0)
    os.close(read_fd)
    try:
        yield pid
    finally:
        os.close(write_fd)
        os.waitpid(pid, 0)


def test_probe_and_program_flags_in_a_running_daemon(programs: dict[str, int]) -> None:
    """--probes.comm-slots sizes the kernel map (bpftool), --probes.top-comms bounds the
    comm series, --bpf.include-name picks the listed programs (totals count all),
    --bpf.owner-refresh holds owners until a rescan is due."""
    with daemon(
        "--collect.interval", "500ms",
        "--probes.comm-slots", "4096",
        "--probes.top-comms", "3",
        "--bpf.include-name", "^lnx_inc_",
        "--bpf.owner-refresh", "1h",
    ) as d:  # fmt: skip
        d.wait_ready()
        maps = json.loads(
            subprocess.run(["bpftool", "map", "show", "-j"], capture_output=True, check=True,
                           text=True).stdout
        )  # fmt: skip
        held = held_ids(d.proc.pid, "map")
        (comm_map,) = [x for x in maps if x["id"] in held and x.get("name") == "comm_counts"]
        assert comm_map["max_entries"] == 4096

        for argv in (["true"], ["sh", "-c", "true"], ["env", "true"]):  # a few comms
            subprocess.run(argv, check=True)
        forks(20)
        around = [set(bpftool_progs())]
        m = d.wait_tick_after(time.time())
        around.append(set(bpftool_progs()))
        comms = [k for k in m if k.startswith("linnix_process_comm_forks_total{")]
        assert len([k for k in comms if "comm=[other]" not in k]) == 3
        assert m["linnix_process_unlisted_comms{}"] >= 1

        runs = [k for k in m if k.startswith("linnix_bpf_program_runs_total{")]
        listed = {k.split("name=")[1].split(",")[0] for k in runs if "ours=false" in k}
        assert listed == {"lnx_inc_a", "[other]"}
        assert m["linnix_bpf_unlisted_programs{}"] >= 1  # lnx_exc_b and the rest
        # Totals count every program, filtered or not: bpftool's list read before and
        # after that tick brackets it (programs come and go on a shared node).
        both, either = around[0] & around[1], around[0] | around[1]
        assert len(both) <= m["linnix_bpf_programs{}"] <= len(either), (both, either)

        assert owners_of(m, programs["lnx_inc_a"]) == {os.getpid()}
        # A new holder of the same program, and no new program: with a 1 h refresh the
        # owners stay as scanned. A program appearing anywhere forces a rescan, so a
        # window in which one did is measured again.
        for _ in range(10):
            before = id_mark()
            with fd_sharer_process() as child:
                m1 = d.wait_tick_after(time.time())
                m2 = d.wait_tick(m1["linnix_exporter_collections_total{}"])
                seen = owners_of(m2, programs["lnx_inc_a"])
            if id_mark() == before + 1:  # no program at all was loaded in between
                assert child not in seen and os.getpid() in seen
                break
        else:
            raise AssertionError("programs kept appearing: no quiet window in 10")
        assert d.stop() == 0


def test_owner_refresh_rescans_when_due(programs: dict[str, int]) -> None:
    with daemon("--no-probes.enabled", "--collect.interval", "500ms", "--bpf.owner-refresh",
                "1s") as d:  # fmt: skip
        d.wait_ready()
        with fd_sharer_process() as child:
            deadline = time.monotonic() + 10
            while child not in owners_of(d.metrics(), programs["lnx_inc_a"]):
                assert time.monotonic() < deadline, "the new holder never showed as owner"
                time.sleep(0.2)
        assert d.stop() == 0
