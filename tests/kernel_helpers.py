"""Shared helpers for tests on the real kernel: bpftool as the oracle, bpftrace as a
foreign agent, workloads, and a running daemon."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def bpftool_progs() -> dict[int, dict[str, Any]]:
    """bpftool's view of every loaded program, by id: the independent oracle."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "-j"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {p["id"]: p for p in json.loads(out)}


def forks(n: int) -> None:
    """n short-lived processes (fork + _exit, no exec), to make fork programs run."""
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


@contextlib.contextmanager
def background_forks(rate: float) -> Iterator[None]:
    """A process forking `rate` short-lived children a second until the block ends: a
    node where processes come and go, so the sched probes run in every rate() window."""
    cmd = [sys.executable, "-c", f"from tests.support.shared_noise import forker; forker({rate})"]
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def bpftrace_fork_counter() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A foreign agent: bpftrace counting forks per comm. Yields (process, program id)."""
    before = set(bpftool_progs())
    proc = subprocess.Popen(
        ["bpftrace", "-e", "tracepoint:sched:sched_process_fork { @[comm] = count(); }"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            new = [
                i
                for i, p in bpftool_progs().items()
                if i not in before and p.get("type") == "tracepoint"
            ]
            if new:
                break
            assert proc.poll() is None, "bpftrace exited"
            assert time.monotonic() < deadline, "bpftrace did not load its program"
            time.sleep(0.2)
        yield proc, new[0]
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Stop a process this test started: `sig` (bpftrace detaches on SIGINT), then
    SIGKILL if it is still there after 20 s."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def held_by(pid: int) -> set[int]:
    """Program ids whose fds (program or link) a process holds, from its /proc fdinfo
    (bpftool here is built without the pid iterator: its JSON has no "pids")."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fdinfo")
    for fd in fd_dir.iterdir() if fd_dir.exists() else []:
        with contextlib.suppress(OSError):
            for line in fd.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


@contextlib.contextmanager
def foreign_agent(
    argv: list[str], count: int = 1
) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """Start a foreign BPF agent (bpftrace, a bcc tool); yield it and the ids of the
    `count` (or more) programs it loaded; stop it on leaving."""
    before = set(bpftool_progs())
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            mine = sorted(i for i in held_by(proc.pid) if i not in before)
            if len(mine) >= count:
                break
            assert proc.poll() is None, f"{argv[0]} exited"
            assert time.monotonic() < deadline, f"{argv[0]} did not load {count} programs"
            time.sleep(0.3)
        yield proc, mine
    finally:
        stop_process(proc)


# A program that misses runs by recursion, deterministically: the tracepoint program on
# getppid() calls bpf_trace_printk, whose tracepoint runs the raw tracepoint program,
# which calls bpf_trace_printk again: that nested run finds the program already active
# on the CPU and the kernel counts a recursion miss instead (__bpf_trace_run). One miss
# per getppid() on the node while it is attached (tried here: 1,000 calls, 1,000 misses).
_RECURSION = r"""
import time
from bcc import BPF
BPF(text='''
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { bpf_trace_printk("lnx\\n"); return 0; }
RAW_TRACEPOINT_PROBE(bpf_trace_printk) { bpf_trace_printk("lnx\\n"); return 0; }
''')
time.sleep(600)
"""


@contextlib.contextmanager
def recursion_miss_agent() -> Iterator[int]:
    """A foreign agent whose raw tracepoint program misses one run per getppid() call on
    the node; yields that program's id."""
    with foreign_agent([sys.executable, "-c", _RECURSION], count=2) as (_, ids):
        progs = bpftool_progs()
        (raw,) = [i for i in ids if progs[i].get("type") == "raw_tracepoint"]
        yield raw


_LINK_ONLY = r"""
import os, time
from bcc import BPF
b = BPF(text='RAW_TRACEPOINT_PROBE(sched_process_fork) { return 0; }')
fn = b.funcs[b"raw_tracepoint__sched_process_fork"]
os.close(fn.fd)  # keep only the link (raw tracepoint) fd
print("ready", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def link_only_holder() -> Iterator[subprocess.Popen[str]]:
    """A process that attached a program and keeps only its link fd (the program fd
    closed): an owner that only link fds show."""
    p = subprocess.Popen([sys.executable, "-c", _LINK_ONLY], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        links = {os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")}
        assert "anon_inode:bpf-prog" not in links  # really link-only
        assert "anon_inode:bpf_link" in links
        yield p
    finally:
        p.kill()
        p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(body: str) -> dict[str, float]:
    """Prometheus text into {'name{k=v,...}': value} with labels sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


class KeepAlive:
    """Scrapes over one keep-alive connection, as Prometheus does: the daemon serves it
    from one connection thread that lives as long as the connection, so the daemon's
    live threads (/proc/PID/task) hold all of its CPU while it is open."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str = "/metrics", headers: dict[str, str] | None = None) -> bytes:
        try:
            self.conn.request("GET", path, headers=headers or {})
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The daemon closes a connection idle for 30 s: open a new one (a new thread
            # in the daemon, which the callers that count its threads see).
            self.conn.close()
            self.conn.request("GET", path, headers=headers or {})
            r = self.conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:200])
        return body

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get().decode())

    def close(self) -> None:
        self.conn.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def metrics(self) -> dict[str, float]:
        """Scrape into {'name{k=v,...}': value} with labels sorted."""
        status, body, _ = self.get("/metrics")
        assert status == 200
        return parse_metrics(body)

    def session(self) -> KeepAlive:
        return KeepAlive(self.port)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                f"daemon exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.2)
        raise AssertionError("daemon not ready in time")

    def wait_tick(self, after: float) -> dict[str, float]:
        """Scrape until a tick newer than `after` (collections_total) is served."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = self.metrics()
            if m.get("linnix_exporter_collections_total{}", 0) > after:
                return m
            time.sleep(0.1)
        raise AssertionError("no new tick")

    def wait_tick_after(self, wall_time: float) -> dict[str, float]:
        """Scrape until the served tick was read after `wall_time` (time.time())."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = self.metrics()
            if m.get("linnix_exporter_last_collect_timestamp_seconds{}", 0) > wall_time:
                return m
            time.sleep(0.1)
        raise AssertionError("no tick after the given time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def daemon(
    *args: str,
    env: dict[str, str] | None = None,
    port: int = 0,
    launcher: Sequence[str] = (),
    cwd: Path = REPO,
) -> Iterator[Daemon]:
    """The exporter on a loopback port; `launcher` is an argv prefix that execs it (e.g.
    a wrapper installing a seccomp filter first); `cwd` another checkout to run instead
    (benches compare against an earlier commit that way)."""
    port = port or free_port()
    cmd = [
        *launcher,
        sys.executable,
        "-m",
        "linnix_exporter",
        "run",
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--log.format",
        "json",
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    d = Daemon(proc, port)
    try:
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def proc_status(pid: int, key: str) -> int:
    """A number field of /proc/PID/status: VmRSS/VmHWM in KiB, Threads as a count."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":"))


def proc_stat_cpu_seconds(pid: int) -> float:
    """utime+stime+cutime+cstime from /proc/PID/stat, in seconds (tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadStat:
    comm: str
    run_ns: int  # /proc/PID/task/TID/schedstat, first field: sum_exec_runtime in ns
    voluntary_switches: int  # voluntary_ctxt_switches: sleeps, i.e. wake-ups


def thread_stats(pid: int) -> dict[int, ThreadStat]:
    """Every live thread of `pid`, by tid. Threads that exited are gone from here (their
    CPU is not): compare two readings over the same set of threads."""
    out: dict[int, ThreadStat] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/schedstat") as f:
                run_ns = int(f.read().split()[0])
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            switches = next(
                int(ln.split()[1])
                for ln in open(f"{base}/status")  # noqa: SIM115 - closed by the GC at once
                if ln.startswith("voluntary_ctxt_switches:")
            )
        except (OSError, StopIteration):
            continue  # exited meanwhile
        out[int(tid)] = ThreadStat(comm, run_ns, switches)
    return out


def task_cpu_ns(pid: int) -> tuple[int, frozenset[int]]:
    """CPU of a process from the scheduler's own accounting: the sum of the first field
    of /proc/PID/task/*/schedstat (ns), and the thread ids it covers. Live threads only:
    compare two readings only when they cover the same threads."""
    threads = thread_stats(pid)
    return sum(t.run_ns for t in threads.values()), frozenset(threads)


def proc_stat_processes() -> int:
    """/proc/stat `processes`: tasks created since boot (threads included)."""
    with open("/proc/stat") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("processes "))


def held_ids(pid: int, kind: str = "prog") -> set[int]:
    """Ids of the BPF objects (`prog`: program or link fds; `map`) a process holds an fd
    of, from the `prog_id:`/`map_id:` lines of /proc/PID/fdinfo."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(ln.split()[1]) for ln in f if ln.startswith(f"{kind}_id:")}
        except OSError:
            continue
    return ids
