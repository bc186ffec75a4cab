"""`linnix-exporter prove`: the overhead proof, measured rather than asserted.

What it does (docs/how-overhead-is-measured.md says why each choice):
1. starts the real exporter (`python -m linnix_exporter run`, a child process, default
   flags) and waits for /readyz; checks that it turned BPF statistics on;
2. finds its probes: the programs whose fds it holds (/proc/PID/fdinfo) named like the
   Linnix probes. The BPF stats iterator it also holds is left out: it runs inside the
   exporter's read(), so its time is already in the exporter's CPU;
3. runs fork/exec storms, one per --rates entry, splitting --duration between them, and
   samples every --interval: the probes' cumulative run_time_ns/run_cnt (bpf()), the
   exporter's CPU (/proc/PID/stat utime+stime+cutime+cstime) and RSS (VmRSS), and
   /proc/stat's task counter. Each interval becomes a Snapshot pair and goes through
   rates.compute_rates, the daemon's own math;
4. A/B: --rounds pairs of --ab-round-seconds storms with the exporter stopped (A) and
   running (B), in alternating order (B A, A B, B A, ...), throughput from /proc/stat;
5. prints the table, results, A/B and the verdict: PASS when the time-weighted mean of
   (probes' kernel time + exporter CPU) / (time x online CPUs) over the storm is within
   --budget.

Exit codes: 0 pass, 1 fail, 2 usage, 3 cannot measure (no CAP_SYS_ADMIN, the exporter
did not start, statistics off, no probes, the probes did not see the storm); 130/143
interrupted by SIGINT/SIGTERM (the partial results are still printed).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linnix_exporter.kernel.bpf_syscall import ProgReader
    from linnix_exporter.rates import Rates
    from linnix_exporter.snapshot import Snapshot
    from linnix_exporter.tools.progress import Progress
    from linnix_exporter.tools.workload import StormResult

PROG = "linnix-exporter prove"
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_CANNOT = 3
SCHEMA = "linnix-exporter/prove/v1"

# The probe programs' names (kernel/_loader.PROGRAMS; a unit test keeps them equal).
# Names are only used among the programs the exporter's pid holds, never alone.
PROBE_NAMES = ("linnix_fork", "linnix_exec", "linnix_exit", "linnix_free")
FORK_PROBE = "linnix_fork"
READY_TIMEOUT = 120.0
AB_WARMUP = 0.5  # seconds of storm before an A/B window opens (start-up transients)
# A storm is real when the fork probe saw at least this share of the spawns the workload
# reports, and agrees with /proc/stat's task counter within TASKS_TOLERANCE (+ slack for
# other processes on the node).
MIN_SEEN = 0.9
TASKS_TOLERANCE = 0.05
TASKS_SLACK = 200


class CannotMeasure(Exception):
    """The proof cannot be made here; str() is the one line for the user."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: stop, report what was measured."""


# ---- command line -------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "prove",
        help="measure the exporter's overhead under fork/exec storms against a budget",
        description="Start the real exporter, run fork/exec storms at each of --rates "
        "(--duration split between them) and sample every --interval: the exporter's "
        "probes' kernel run time (run_time_ns, bpf()), the exporter's CPU "
        "(/proc/PID/stat utime+stime+cutime+cstime, per interval, 10 ms ticks) and RSS. "
        "Then A/B rounds: the same max-rate storm with the exporter stopped and running, "
        "alternated, for the workload's slowdown. Verdict: PASS when the time-weighted "
        "mean of (probes + exporter CPU) / (time x online CPUs) over the storm is within "
        "--budget. Exit 0 pass, 1 fail, 2 usage, 3 cannot measure (no CAP_SYS_ADMIN, "
        "exporter failed, BPF statistics off, probes missing or blind to the storm), "
        "130/143 interrupted (partial results printed). Run it on a node with nothing "
        "else busy: other load shows up as noise in the A/B figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", metavar="DURATION", default="60s", help="storm time, all rates")
    p.add_argument("--interval", metavar="DURATION", default="2s", help="time between samples")
    p.add_argument(
        "--rates",
        metavar="LIST",
        default="100,1000,max",
        help="storms in order: spawns/s of /bin/true (posix_spawn, paced), or max "
        "(stress-ng --fork N beside a shell exec loop, N = online CPUs)",
    )
    p.add_argument("--budget", metavar="RATIO", default="1%", help="share of the node: 0.01 or 1%%")
    p.add_argument(
        "--rounds", metavar="N", type=int, default=3, help="A/B pairs (0: no A/B rounds)"
    )
    p.add_argument(
        "--ab-round-seconds", metavar="DURATION", default="5s", help="measured length of a round"
    )
    p.add_argument(
        "--ab-rate", metavar="RATE", default="max", help="storm of the A/B rounds (as --rates)"
    )
    p.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        default="15s",
        help="GET /metrics this often while the exporter runs, as Prometheus would, so "
        "the serving cost is in the exporter's CPU (0: never)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document, no table")
    p.add_argument("--plot", metavar="FILE.png", help="chart of overhead over time vs budget")
    p.add_argument(
        "--exporter-arg",
        metavar="ARG",
        action="append",
        default=[],
        help="extra flag for the exporter, repeatable (--exporter-arg=--collect.interval=5s)",
    )
    p.set_defaults(handler=main)


@dataclass(frozen=True)
class Settings:
    duration: float
    interval: float
    rates: tuple[float | None, ...]
    budget: float
    rounds: int
    ab_round_seconds: float
    ab_rate: float | None
    exporter_args: tuple[str, ...] = ()
    scrape_interval: float = 15.0


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Raises ValueError with a one-line reason (exit 2)."""
    from linnix_exporter.config import parse_duration, parse_ratio
    from linnix_exporter.tools.workload import parse_rate

    def opt(name: str, parse: Callable[[str], Any], text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise ValueError(f"--{name}: {e}") from None

    rates = tuple(opt("rates", parse_rate, r) for r in args.rates.split(",") if r.strip())
    if not rates:
        raise ValueError("--rates: give at least one rate")
    if not 0 <= args.rounds <= 100:
        raise ValueError(f"--rounds: must be between 0 and 100, got {args.rounds}")
    s = Settings(
        duration=opt("duration", parse_duration, args.duration),
        interval=opt("interval", parse_duration, args.interval),
        rates=rates,
        budget=opt("budget", parse_ratio, args.budget),
        rounds=args.rounds,
        ab_round_seconds=opt("ab-round-seconds", parse_duration, args.ab_round_seconds),
        ab_rate=opt("ab-rate", parse_rate, args.ab_rate),
        exporter_args=tuple(args.exporter_arg),
        scrape_interval=opt("scrape-interval", _duration_or_zero, args.scrape_interval),
    )
    if s.interval < 0.5:
        raise ValueError("--interval: at least 500ms (CPU is read in 10 ms ticks)")
    return s


def _duration_or_zero(text: str) -> float:
    from linnix_exporter.config import parse_duration

    return 0.0 if text.strip() == "0" else parse_duration(text)


# ---- pure helpers: /proc parsing ----------------------------------------------------


def parse_pid_stat(text: str) -> tuple[int, int]:
    """/proc/PID/stat -> (user, system) clock ticks, reaped children included
    (utime+cutime, stime+cstime): the compile child and exited threads count."""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return utime + cutime, stime + cstime


def parse_vmrss(text: str) -> int:
    """/proc/PID/status -> VmRSS in bytes."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no VmRSS line")


@dataclass(frozen=True, slots=True)
class NodeStat:
    """/proc/stat: tasks created since boot, and CPU ticks busy and in total."""

    processes: int
    busy_ticks: int
    total_ticks: int


def parse_proc_stat(text: str) -> NodeStat:
    processes = busy = total = -1
    for line in text.splitlines():
        if line.startswith("cpu "):
            # user nice system idle iowait irq softirq steal (guest is inside user)
            v = [int(x) for x in line.split()[1:9]]
            total = sum(v)
            busy = total - v[3] - v[4]
        elif line.startswith("processes "):
            processes = int(line.split()[1])
    if processes < 0 or total < 0:
        raise ValueError("/proc/stat without cpu or processes line")
    return NodeStat(processes, busy, total)


def parse_stats_enabled(metrics: str) -> tuple[bool, str]:
    """linnix_bpf_stats_enabled{method="..."} from the exporter's /metrics text."""
    m = re.search(r'^linnix_bpf_stats_enabled\{method="([^"]*)"\} (\S+)$', metrics, re.M)
    if m is None:
        return False, "absent"
    return float(m.group(2)) == 1.0, m.group(1)


# ---- pure helpers: math ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    o = sorted(values)
    mid = len(o) // 2
    return o[mid] if len(o) % 2 else (o[mid - 1] + o[mid]) / 2


def phase_seconds(duration: float, phases: int, interval: float) -> float:
    """Each storm's length: an equal share of --duration, a whole number of intervals
    (at least one), so every sample interval lies inside one storm. Rounded down: the
    storms together never outlast --duration unless it is shorter than one interval each."""
    per = duration / phases
    return max(1, math.floor(per / interval + 1e-9)) * interval


def ab_order(pairs: int) -> list[bool]:
    """True = exporter running (B). Pairs alternate B A, A B, ... so drift (thermal,
    other load, page cache) falls on both sides; it starts with B because the exporter
    of the storm phase is still running then."""
    out: list[bool] = []
    for i in range(pairs):
        out += [True, False] if i % 2 == 0 else [False, True]
    return out


def slowdown(a: Sequence[float], b: Sequence[float]) -> float:
    """1 - median(B)/median(A): the share of throughput lost with the exporter running."""
    ma = median(a)
    return math.nan if not ma or math.isnan(ma) else 1 - median(b) / ma


@dataclass(frozen=True, slots=True)
class Summary:
    seconds: float
    probes_run_time_ns: int
    exporter_cpu_seconds: float
    probes_node: float  # time-weighted means over the intervals
    exporter_node: float
    total_node: float
    total_core: float
    p95_node: float
    peak_node: float
    rss_max: int


def summarize(rows: Sequence[Mapping[str, Any]], cpus: int) -> Summary:
    """Over interval rows: means weighted by time (sum of seconds / sum of time), which
    is what the node paid over the storm; p95 and peak of the per-interval shares."""
    secs = sum(r["seconds"] for r in rows)
    rt = sum(int(r["probes_run_time_ns"]) for r in rows)
    cpu = sum(r["exporter_cpu_seconds"] for r in rows)
    shares = [r["total_node_ratio"] for r in rows]
    denom = secs * cpus
    return Summary(
        seconds=secs,
        probes_run_time_ns=rt,
        exporter_cpu_seconds=cpu,
        probes_node=rt / 1e9 / denom if denom else math.nan,
        exporter_node=cpu / denom if denom else math.nan,
        total_node=(rt / 1e9 + cpu) / denom if denom else math.nan,
        total_core=(rt / 1e9 + cpu) / secs if secs else math.nan,
        p95_node=percentile(shares, 95),
        peak_node=max(shares, default=math.nan),
        rss_max=max((int(r["rss_bytes"]) for r in rows), default=0),
    )


def storm_check(fork_runs: int, spawns: int | None, tasks: int) -> tuple[bool, str]:
    """Did the probes see the storm? Our fork probe fires once per task created, as
    /proc/stat counts; the workload's own count is a floor (other processes fork too)."""
    if spawns is not None and fork_runs < MIN_SEEN * spawns:
        return False, f"fork probe ran {fork_runs} times for {spawns} spawns"
    if abs(fork_runs - tasks) > TASKS_TOLERANCE * tasks + TASKS_SLACK:
        return False, f"fork probe ran {fork_runs} times, /proc/stat counted {tasks} tasks"
    return True, "ok"


def pct(ratio: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio * 100:.{digits}f}%"


# ---- the exporter under test -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExporterProcess:
    """`python -m linnix_exporter run` as a child, on a free loopback port."""

    def __init__(self, extra_args: Sequence[str]) -> None:
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "linnix_exporter",
            "run",
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--log.format",
            "json",
            *extra_args,
        ]
        # A file, not a pipe nobody drains; closed in stop(), it lives as long as the child.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log
        )
        self.pid = self.proc.pid
        self.exit_code: int | None = None
        self.scrapes = 0
        self.scrape_errors: list[str] = []
        self._scraper_stop = threading.Event()
        self._scraper: threading.Thread | None = None

    def start_scraper(self, interval: float) -> None:
        """GET /metrics every interval (the first one now) from a thread of ours: the
        exporter's serving cost lands in its CPU, the client's (Prometheus') does not."""
        if interval <= 0:
            return

        def loop() -> None:
            while not self._scraper_stop.is_set():
                try:
                    code, _ = self.get("/metrics")
                    self.scrapes += 1
                    if code != 200:
                        self.scrape_errors.append(f"/metrics answered {code}")
                except OSError as e:
                    if self.proc.poll() is None:  # a stopping exporter is not an error
                        self.scrape_errors.append(f"/metrics: {e}")
                self._scraper_stop.wait(interval)

        self._scraper = threading.Thread(target=loop, name="prove-scraper", daemon=True)
        self._scraper.start()

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()

    def last_error(self) -> str:
        """The exporter's last log line, for a one-line reason."""
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().splitlines() if ln.strip()]
        if not lines:
            return "no output"
        try:
            rec = json.loads(lines[-1])
            return str(rec.get("error") or rec.get("event") or lines[-1])
        except (ValueError, AttributeError):
            return lines[-1]

    def wait_ready(self, stop: threading.Event, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        reason = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CannotMeasure(
                    f"the exporter exited ({self.proc.returncode}): {self.last_error()}"
                )
            with contextlib.suppress(OSError):
                code, reason = self.get("/readyz")
                if code == 200:
                    return
                if "statistics are off" in reason:
                    raise CannotMeasure(f"BPF statistics are off: {reason.strip()}")
            if stop.wait(0.2):
                raise Interrupted
        raise CannotMeasure(f"the exporter was not ready in {timeout:.0f} s: {reason.strip()}")

    def stats_enabled(self) -> tuple[bool, str]:
        code, body = self.get("/metrics")
        if code != 200:
            return False, f"/metrics answered {code}"
        return parse_stats_enabled(body)

    def stop(self, timeout: float = 30.0) -> int:
        self._scraper_stop.set()
        if self._scraper is not None:
            self._scraper.join(timeout=15)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code


@dataclass(frozen=True, slots=True)
class ProbeProgram:
    id: int
    name: str
    type: str


def exporter_programs(pid: int) -> tuple[list[ProbeProgram], list[int]]:
    """(probes, other programs) held by the exporter's pid; ids from /proc fdinfo."""
    from linnix_exporter.kernel.bpf_syscall import ProgReader, decode_name, prog_type_name
    from linnix_exporter.kernel.progstats import scan_owners

    reader = ProgReader()
    probes: list[ProbeProgram] = []
    others: list[int] = []
    for prog_id, owners in sorted(scan_owners().items()):
        if not any(o.pid == pid for o in owners):
            continue
        raw = reader.info_by_id(prog_id)
        if raw is None:
            continue
        name = decode_name(raw.name)
        if name in PROBE_NAMES:
            probes.append(ProbeProgram(prog_id, name, prog_type_name(raw.type)))
        else:
            others.append(prog_id)
    return probes, others


# ---- sampling -------------------------------------------------------------------------


@dataclass
class Sample:
    """One read. `monotonic` is taken just before the program reads and
    `monotonic_end` just after: a bpftool read outside [monotonic, monotonic_end] of two
    samples is bracketed by them."""

    index: int
    phase: str | None  # the storm of the interval ending here; None for the first
    monotonic: float
    monotonic_end: float
    wall_time: float
    boottime_ns: int
    run_time_ns: dict[int, int]
    run_cnt: dict[int, int]
    load_time_ns: dict[int, int]
    cpu_user_ticks: int
    cpu_system_ticks: int
    rss_bytes: int
    node: NodeStat

    def to_json(self, clk_tck: int) -> dict[str, Any]:
        return {
            "index": self.index,
            "phase": self.phase,
            "monotonic": self.monotonic,
            "monotonic_end": self.monotonic_end,
            "wall_time": self.wall_time,
            "run_time_ns": {str(k): v for k, v in self.run_time_ns.items()},
            "run_cnt": {str(k): v for k, v in self.run_cnt.items()},
            "exporter_cpu_ticks": self.cpu_user_ticks + self.cpu_system_ticks,
            "exporter_cpu_seconds": (self.cpu_user_ticks + self.cpu_system_ticks) / clk_tck,
            "rss_bytes": self.rss_bytes,
            "tasks_created": self.node.processes,
        }


class Sampler:
    def __init__(self, pid: int, probes: Sequence[ProbeProgram]) -> None:
        from linnix_exporter.kernel.bpf_syscall import ProgReader, online_cpus

        self.pid = pid
        self.probes = list(probes)
        self.cpus = online_cpus()
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self._reader: ProgReader = ProgReader()
        self.samples: list[Sample] = []

    def sample(self, phase: str | None) -> Sample:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                user, system = parse_pid_stat(f.read())
            with open(f"/proc/{self.pid}/status") as f:
                rss = parse_vmrss(f.read())
        except (OSError, ValueError):
            raise CannotMeasure(f"the exporter (pid {self.pid}) is gone") from None
        with open("/proc/stat") as f:
            node = parse_proc_stat(f.read())
        mono = time.monotonic()
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall = time.time()
        rt: dict[int, int] = {}
        cnt: dict[int, int] = {}
        load: dict[int, int] = {}
        for p in self.probes:
            raw = self._reader.info_by_id(p.id)
            if raw is None:
                raise CannotMeasure(f"probe program {p.id} ({p.name}) was unloaded mid-run")
            rt[p.id], cnt[p.id], load[p.id] = raw.run_time_ns, raw.run_cnt, raw.load_time_ns
        end = time.monotonic()
        s = Sample(
            len(self.samples), phase, mono, end, wall, boot, rt, cnt, load, user, system, rss, node
        )
        self.samples.append(s)
        return s

    def snapshot(self, s: Sample) -> Snapshot:
        return to_snapshot(s, self.probes, self.cpus, self.clk_tck)


def to_snapshot(s: Sample, probes: Sequence[ProbeProgram], cpus: int, clk_tck: int) -> Snapshot:
    """A Sample as the daemon's data model, so rates.compute_rates does the math."""
    from linnix_exporter.snapshot import ProgramStat, SelfUsage, Snapshot, StatsState

    programs = tuple(
        ProgramStat(p.id, p.name, p.type, "", s.load_time_ns[p.id], s.run_time_ns[p.id],
                    s.run_cnt[p.id], 0, True)
        for p in probes
    )  # fmt: skip
    usage = SelfUsage(s.cpu_user_ticks / clk_tck, s.cpu_system_ticks / clk_tck, s.rss_bytes)
    return Snapshot(
        monotonic=s.monotonic,
        wall_time=s.wall_time,
        boottime_ns=s.boottime_ns,
        online_cpus=cpus,
        programs=programs,
        self_usage=usage,
        stats=StatsState(True, "exporter"),
        probes=None,
        probe_program_ids=frozenset(p.id for p in probes),
    )


def interval_row(
    prev: Sample, cur: Sample, probes: Sequence[ProbeProgram], cpus: int, clk_tck: int
) -> dict[str, Any]:
    from linnix_exporter.rates import compute_rates

    r: Rates | None = compute_rates(
        to_snapshot(prev, probes, cpus, clk_tck), to_snapshot(cur, probes, cpus, clk_tck)
    )
    if r is None:
        raise CannotMeasure("the monotonic clock did not advance between two samples")
    fork_ids = [p.id for p in probes if p.name == FORK_PROBE]
    return {
        "end_sample": cur.index,
        "phase": cur.phase,
        "t": cur.monotonic,
        "seconds": r.interval_seconds,
        "probes_run_time_ns": r.probes_run_time_ns,
        "probe_runs": sum(d.run_cnt for d in r.programs.values()),
        "fork_runs": sum(r.programs[i].run_cnt for i in fork_ids if i in r.programs),
        "tasks_created": cur.node.processes - prev.node.processes,
        "exporter_cpu_seconds": r.exporter_cpu_seconds,
        "probes_node_ratio": r.probes_cpu_ratio,
        "exporter_node_ratio": r.exporter_cpu_ratio,
        "total_node_ratio": r.overhead_ratio,
        "total_core_ratio": r.overhead_core_ratio,
        "rss_bytes": cur.rss_bytes,
    }


# ---- the run --------------------------------------------------------------------------


@dataclass
class Run:
    """Everything measured so far; the report is built from it even when interrupted."""

    settings: Settings
    cpus: int = 0
    clk_tck: int = 100
    exporter: dict[str, Any] = field(default_factory=dict)
    sampler: Sampler | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    ab_rounds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cannot: str | None = None
    interrupted: str | None = None


class Prover:
    def __init__(self, settings: Settings, stop: threading.Event, progress: Progress) -> None:
        self.s = settings
        self.stop = stop
        self.progress = progress
        self.run = Run(settings)
        self.exporter: ExporterProcess | None = None
        self.storm: Any = None  # the running Storm, killed on interruption
        self.t0 = time.monotonic()

    # -- helpers
    def _sleep_until(self, t: float) -> None:
        while (left := t - time.monotonic()) > 0:
            if self.stop.wait(left):
                raise Interrupted
        if self.stop.is_set():
            raise Interrupted

    def _tick(self, text: str) -> None:
        self.progress.update(time.monotonic() - self.t0, text)

    def _start_exporter(self) -> ExporterProcess:
        self.exporter = ExporterProcess(self.s.exporter_args)
        self.exporter.wait_ready(self.stop)
        on, method = self.exporter.stats_enabled()
        if not on:
            raise CannotMeasure(f"BPF statistics are off (exporter reports method {method})")
        self.run.exporter.setdefault("stats_methods", []).append(method)
        self.exporter.start_scraper(self.s.scrape_interval)
        return self.exporter

    def _stop_exporter(self) -> None:
        if self.exporter is not None:
            code = self.exporter.stop()
            self.run.exporter.setdefault("exit_codes", []).append(code)
            self.run.exporter["scrapes"] = self.run.exporter.get("scrapes", 0) + (
                self.exporter.scrapes
            )
            self.run.exporter.setdefault("scrape_errors", []).extend(self.exporter.scrape_errors)
            self.exporter = None

    def _start_storm(self, rate: float | None, seconds: float) -> None:
        from linnix_exporter.tools.workload import Storm

        self.storm = Storm.start(rate, seconds, self.run.cpus)

    def _stop_storm(self) -> StormResult:
        storm, self.storm = self.storm, None
        result: StormResult = storm.stop()
        return result

    def cleanup(self) -> None:
        if self.storm is not None:
            self.storm.kill()
            self.storm = None
        self._stop_exporter()

    # -- steps
    def prove(self) -> None:
        from linnix_exporter.kernel import host
        from linnix_exporter.kernel.bpf_syscall import online_cpus

        missing = host.missing_caps((host.CAP_SYS_ADMIN,))
        if missing:
            raise CannotMeasure(f"missing capability {', '.join(missing)}: run as root")
        self.run.cpus = online_cpus()
        self.run.clk_tck = os.sysconf("SC_CLK_TCK")
        self.progress.line(f"{PROG}: starting the exporter")
        exp = self._start_exporter()
        probes, others = exporter_programs(exp.pid)
        self.run.exporter.update(
            pid=exp.pid,
            argv=exp.argv[1:],
            probe_programs=[{"id": p.id, "name": p.name, "type": p.type} for p in probes],
            excluded_program_ids=others,
        )
        if sorted(p.name for p in probes) != sorted(PROBE_NAMES):
            raise CannotMeasure(
                f"the exporter holds probes {sorted(p.name for p in probes)}, "
                f"expected {list(PROBE_NAMES)}"
            )
        sampler = self.run.sampler = Sampler(exp.pid, probes)
        self._phases(sampler)
        self._check_phases()
        self._ab(sampler)

    def _phases(self, sampler: Sampler) -> None:
        from linnix_exporter.tools.workload import rate_label

        length = phase_seconds(self.s.duration, len(self.s.rates), self.s.interval)
        steps = round(length / self.s.interval)
        sampler.sample(None)
        for rate in self.s.rates:
            label = rate_label(rate)
            start = time.monotonic()
            self._start_storm(rate, length)
            phase: dict[str, Any] = {"rate": label, "target_per_second": rate}
            self.run.phases.append(phase)
            for k in range(1, steps + 1):
                self._sleep_until(start + k * self.s.interval)
                if k == steps:
                    res = self._stop_storm()
                    phase.update(
                        seconds=res.seconds,
                        spawns=res.spawns,
                        achieved_per_second=res.per_second,
                        parts=list(res.parts),
                    )
                sampler.sample(label)
                row = self._last_row(sampler)
                self._tick(f"rate {label}: {pct(row['total_node_ratio'])} of the node")

    def _last_row(self, sampler: Sampler) -> dict[str, Any]:
        a, b = sampler.samples[-2], sampler.samples[-1]
        return interval_row(a, b, sampler.probes, sampler.cpus, sampler.clk_tck)

    def _check_phases(self) -> None:
        rows = intervals(self.run)
        for phase in self.run.phases:
            mine = [r for r in rows if r["phase"] == phase["rate"]]
            fork_runs = sum(r["fork_runs"] for r in mine)
            tasks = sum(r["tasks_created"] for r in mine)
            ok, why = storm_check(fork_runs, phase.get("spawns"), tasks)
            phase.update(fork_runs=fork_runs, tasks_created=tasks, storm_seen=ok)
            if not ok:
                raise CannotMeasure(f"the probes did not see the {phase['rate']} storm: {why}")

    def _ab(self, sampler: Sampler) -> None:
        order = ab_order(self.s.rounds)
        for i, on in enumerate(order):
            if on and self.exporter is None:
                exp = self._start_exporter()
                probes, _ = exporter_programs(exp.pid)
                sampler = Sampler(exp.pid, probes)
            elif not on:
                self._stop_exporter()
            rnd = self._ab_round(sampler if on else None)
            rnd.update(index=i, exporter=on)
            self.run.ab_rounds.append(rnd)
            self._tick(f"A/B round {i + 1}/{len(order)} ({'B' if on else 'A'})")
        self._stop_exporter()

    def _ab_round(self, sampler: Sampler | None) -> dict[str, Any]:
        secs = self.s.ab_round_seconds
        self._start_storm(self.s.ab_rate, AB_WARMUP + secs + 0.5)
        start = time.monotonic()
        self._sleep_until(start + AB_WARMUP)
        first = sampler.sample("ab") if sampler else None
        n0, t0 = _node_now()
        self._sleep_until(start + AB_WARMUP + secs)
        n1, t1 = _node_now()
        last = sampler.sample("ab") if sampler else None
        self._stop_storm()
        out: dict[str, Any] = {
            "seconds": t1 - t0,
            "tasks_created": n1.processes - n0.processes,
            "throughput_per_second": (n1.processes - n0.processes) / (t1 - t0),
            "node_busy_ratio": (n1.busy_ticks - n0.busy_ticks)
            / max(1, n1.total_ticks - n0.total_ticks),
        }
        if sampler and first and last:
            row = interval_row(first, last, sampler.probes, sampler.cpus, sampler.clk_tck)
            out["accounted_node_ratio"] = row["total_node_ratio"]
            out["probes_node_ratio"] = row["probes_node_ratio"]
            out["exporter_node_ratio"] = row["exporter_node_ratio"]
        return out


def _node_now() -> tuple[NodeStat, float]:
    with open("/proc/stat") as f:
        text = f.read()
    return parse_proc_stat(text), time.monotonic()


def intervals(run: Run) -> list[dict[str, Any]]:
    s = run.sampler
    if s is None:
        return []
    phase_samples = [x for x in s.samples if x.phase != "ab"]
    return [
        interval_row(a, b, s.probes, s.cpus, s.clk_tck)
        for a, b in itertools.pairwise(phase_samples)
    ]


# ---- the report -----------------------------------------------------------------------


def build_report(run: Run) -> dict[str, Any]:
    from linnix_exporter import __version__

    rows = intervals(run)
    cpus = run.cpus or 1
    summary = summarize(rows, cpus) if rows else None
    phases = []
    for ph in run.phases:
        mine = [r for r in rows if r["phase"] == ph["rate"]]
        sm = summarize(mine, cpus) if mine else None
        phases.append({**ph, "summary": _summary_json(sm)})
    a = [r["throughput_per_second"] for r in run.ab_rounds if not r["exporter"]]
    b = [r["throughput_per_second"] for r in run.ab_rounds if r["exporter"]]
    acc = [r["accounted_node_ratio"] for r in run.ab_rounds if "accounted_node_ratio" in r]
    busy_a = [r["node_busy_ratio"] for r in run.ab_rounds if not r["exporter"]]
    busy_b = [r["node_busy_ratio"] for r in run.ab_rounds if r["exporter"]]
    ab = {
        "rate": "max" if run.settings.ab_rate is None else run.settings.ab_rate,
        "round_seconds": run.settings.ab_round_seconds,
        "rounds": run.ab_rounds,
        "median_a": median(a),
        "median_b": median(b),
        "range_a": [min(a), max(a)] if a else None,
        "range_b": [min(b), max(b)] if b else None,
        "slowdown": slowdown(a, b) if a and b else math.nan,
        "accounted_node_ratio_b": median(acc),
        "node_busy_median_a": median(busy_a),
        "node_busy_median_b": median(busy_b),
    }
    ab["reading"] = ab_reading(ab)
    # Interrupted first: a Ctrl-C on a terminal also stops the exporter (same process
    # group), which the sampler then reports as gone.
    if run.interrupted is not None:
        status = "interrupted"
        code = 128 + (signal.SIGTERM if run.interrupted == "SIGTERM" else signal.SIGINT)
    elif run.cannot is not None or summary is None:
        status, code = "cannot_measure", EXIT_CANNOT
    elif summary.total_node <= run.settings.budget:
        status, code = "pass", EXIT_PASS
    else:
        status, code = "fail", EXIT_FAIL
    s = run.settings
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "version": __version__,
        "host": {"online_cpus": run.cpus, "clk_tck": run.clk_tck, "kernel": os.uname().release},
        "settings": {
            "duration_seconds": s.duration,
            "interval_seconds": s.interval,
            "rates": [r if r is not None else "max" for r in s.rates],
            "budget_ratio": s.budget,
            "rounds": s.rounds,
            "ab_round_seconds": s.ab_round_seconds,
            "ab_rate": s.ab_rate if s.ab_rate is not None else "max",
            "exporter_args": list(s.exporter_args),
            "scrape_interval_seconds": s.scrape_interval,
        },
        "exporter": run.exporter,
        "samples": [x.to_json(run.clk_tck) for x in run.sampler.samples if x.phase != "ab"]
        if run.sampler
        else [],
        "intervals": rows,
        "phases": phases,
        "summary": _summary_json(summary),
        "ab": ab,
        "notes": run.notes,
        "verdict": {
            "status": status,
            "rule": "time-weighted mean of (probes' kernel run time + exporter CPU) / "
            "(time x online CPUs) over the storm <= budget",
            "budget_ratio": s.budget,
            "mean_node_ratio": summary.total_node if summary else None,
            "peak_node_ratio": summary.peak_node if summary else None,
            "reason": run.interrupted or run.cannot,
        },
        "exit_code": code,
    }
    return report


def _summary_json(sm: Summary | None) -> dict[str, Any] | None:
    if sm is None:
        return None
    return {
        "seconds": sm.seconds,
        "probes_run_time_ns": sm.probes_run_time_ns,
        "exporter_cpu_seconds": sm.exporter_cpu_seconds,
        "probes_node_ratio": sm.probes_node,
        "exporter_node_ratio": sm.exporter_node,
        "total_node_ratio": sm.total_node,
        "total_core_ratio": sm.total_core,
        "p95_node_ratio": sm.p95_node,
        "peak_node_ratio": sm.peak_node,
        "rss_max_bytes": sm.rss_max,
    }


def json_safe(obj: Any) -> Any:
    """NaN/inf (no figure, e.g. no A rounds) become null: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_report(rep: dict[str, Any]) -> str:
    """The human report: table, results per rate, A/B, verdict."""
    out: list[str] = []
    w = out.append
    exp = rep["exporter"]
    cpus = rep["host"]["online_cpus"]
    budget = rep["settings"]["budget_ratio"]
    ids = ",".join(str(p["id"]) for p in exp.get("probe_programs", []))
    w(
        f"exporter pid {exp.get('pid', '?')}, probes {ids or '-'} "
        f"(stats iterator {exp.get('excluded_program_ids', [])} left out: its time is in "
        f"the exporter's CPU); {cpus} online CPUs; budget {pct(budget, 2)} of the node"
    )
    w("")
    w("Time(s) |  rate | probes kernel % node | exporter CPU % node | total % node | "
      "total % core |       RSS")  # fmt: skip
    w("--------|-------|----------------------|---------------------|--------------|"
      "--------------|----------")  # fmt: skip
    samples = rep["samples"]
    t0 = samples[0]["monotonic"] if samples else 0.0
    for r in rep["intervals"]:
        w(
            f"{r['t'] - t0:7.1f} | {r['phase']:>5} | {pct(r['probes_node_ratio']):>20} | "
            f"{pct(r['exporter_node_ratio']):>19} | {pct(r['total_node_ratio']):>12} | "
            f"{pct(r['total_core_ratio']):>12} | {_mib(r['rss_bytes']):>9}"
        )
    tick = 1 / rep["host"]["clk_tck"]
    w(
        f"(exporter CPU is read in {tick * 1000:.0f} ms ticks: one tick in a "
        f"{rep['settings']['interval_seconds']:g} s interval is "
        f"{pct(tick / rep['settings']['interval_seconds'] / max(cpus, 1), 2)} of the node; "
        "and it collects every --collect.interval: read the means, not single rows)"
    )
    every = rep["settings"].get("scrape_interval_seconds", 0)
    if every:
        errors = exp.get("scrape_errors", [])
        w(
            f"(/metrics scraped every {every:g} s like Prometheus would: "
            f"{exp.get('scrapes', 0)} scrapes, {len(errors)} failed"
            + (f", first: {errors[0]}" if errors else "")
            + ")"
        )
    w("")
    w("RESULTS (mean = time-weighted over the storm)")
    w("   rate | achieved/s | fork probe runs | probes % node | exporter % node | "
      "total mean | total p95 | total peak")  # fmt: skip
    for ph in rep["phases"]:
        sm = ph.get("summary") or {}
        ach = ph.get("achieved_per_second")
        w(
            f"  {ph['rate']:>5} | {ach if ach is None else f'{ach:10.0f}':>10} | "
            f"{ph.get('fork_runs', 0):>15} | {pct(sm.get('probes_node_ratio', math.nan)):>13} | "
            f"{pct(sm.get('exporter_node_ratio', math.nan)):>15} | "
            f"{pct(sm.get('total_node_ratio', math.nan)):>10} | "
            f"{pct(sm.get('p95_node_ratio', math.nan)):>9} | "
            f"{pct(sm.get('peak_node_ratio', math.nan)):>10}"
        )
    sm = rep["summary"]
    if sm:
        w(
            f"  all: probes {sm['probes_run_time_ns'] / 1e6:.1f} ms kernel + exporter "
            f"{sm['exporter_cpu_seconds']:.2f} s CPU over {sm['seconds']:.1f} s = "
            f"{pct(sm['total_node_ratio'])} of the node ({pct(sm['total_core_ratio'])} of "
            f"one core); p95 {pct(sm['p95_node_ratio'])}, peak {pct(sm['peak_node_ratio'])}; "
            f"RSS max {_mib(sm['rss_max_bytes'])}"
        )
    ab = rep["ab"]
    if ab["rounds"]:
        w("")
        order = "".join("B" if r["exporter"] else "A" for r in ab["rounds"])
        w(
            f"A/B ({ab['rate']} storm, {len(ab['rounds'])} rounds of "
            f"{ab['round_seconds']:g} s, order {order}; throughput = tasks created/s, "
            "/proc/stat)"
        )
        for name, key, rng in (("A exporter stopped", "median_a", "range_a"),
                               ("B exporter running", "median_b", "range_b")):  # fmt: skip
            lo, hi = ab[rng] or (math.nan, math.nan)
            w(f"  {name}: median {ab[key]:.0f}/s (min {lo:.0f}, max {hi:.0f})")
        spread = _spread(ab)
        w(
            f"  slowdown 1 - B/A: {pct(ab['slowdown'], 2)} (spread of A: {pct(spread, 2)}); "
            f"accounted overhead during B: {pct(ab['accounted_node_ratio_b'], 2)} of the node; "
            f"node busy A {pct(ab['node_busy_median_a'], 1)}, "
            f"B {pct(ab['node_busy_median_b'], 1)}"
        )
        w(f"  reading: {ab['reading']}")
    for note in rep["notes"]:
        w(f"note: {note}")
    w("")
    v = rep["verdict"]
    mean, peak = v["mean_node_ratio"], v["peak_node_ratio"]
    if v["status"] in ("pass", "fail"):
        word = "PASS" if v["status"] == "pass" else "FAIL"
        rel = "<=" if v["status"] == "pass" else ">"
        w(
            f"VERDICT: {word}: mean overhead {pct(mean)} of the node {rel} budget "
            f"{pct(budget, 3)} (peak {pct(peak)} over one interval). Rule: {v['rule']}."
        )
    elif v["status"] == "interrupted":
        w(f"INTERRUPTED ({v['reason']}): no verdict; figures above cover what was measured")
    else:
        w(f"CANNOT MEASURE: {v['reason']}")
    return "\n".join(out)


def ab_reading(ab: Mapping[str, Any]) -> str:
    """What the A/B can and cannot say, from its own rounds: on a shared node the noise
    between rounds is often larger than the effect being looked for."""
    if not ab["range_a"] or not ab["range_b"]:
        return "no A/B rounds"
    a = [r for r in ab["rounds"] if not r["exporter"]]
    b = [r for r in ab["rounds"] if r["exporter"]]
    if len(a) < 2 or len(b) < 2:
        return "one round each: no estimate of the noise, the slowdown is indicative only"
    (a_lo, a_hi), (b_lo, b_hi) = ab["range_a"], ab["range_b"]
    if b_hi >= a_lo and a_hi >= b_lo:
        return (
            "the A and B ranges overlap: the slowdown is within this node's round-to-round "
            "noise; more --rounds or a quieter node narrow it"
        )
    if b_hi < a_lo:
        return (
            "every B round was slower than every A round. run_time_ns leaves out tracepoint "
            "dispatch and cache effects, so some loss beyond the accounted overhead is "
            "expected; a loss far beyond it usually means other load moved between rounds: "
            "repeat with more --rounds before attributing it to the probes"
        )
    return "every B round was faster than every A round: other load on the node moved"


def _spread(ab: Mapping[str, Any]) -> float:
    """(max - min) / median of the A rounds: the noise the slowdown sits in."""
    if not ab["range_a"] or not ab["median_a"]:
        return math.nan
    lo, hi = ab["range_a"]
    return float((hi - lo) / ab["median_a"])


# ---- main -----------------------------------------------------------------------------


@contextlib.contextmanager
def _signals(stop: threading.Event, run: Run) -> Iterator[None]:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if run.interrupted is None:
            run.interrupted = signal.Signals(signum).name
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def measure(settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the proof; returns the report (see build_report). Used by bench/ too."""
    from linnix_exporter.tools.progress import Progress

    total = settings.duration + settings.rounds * 2 * (settings.ab_round_seconds + 2) + 6
    prog = progress or Progress(total, "prove")
    stop = threading.Event()
    prover = Prover(settings, stop, prog)
    with _signals(stop, prover.run):
        try:
            prover.prove()
        except Interrupted:
            pass
        except CannotMeasure as e:
            prover.run.cannot = str(e)
        finally:
            # Interrupted or not: storms and exporter stop, nothing is left running.
            prover.cleanup()
            prog.close(time.monotonic() - prover.t0)
    return build_report(prover.run)


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot:
        # Fail on a bad path before minutes of measuring, not after.
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            print(f"{PROG}: error: --plot: cannot write to {parent}", file=sys.stderr)
            return EXIT_USAGE
    report = measure(settings)
    if args.plot and report["intervals"]:
        from linnix_exporter.tools.prove_plot import draw

        draw(report, args.plot)
    if args.json:
        json.dump(json_safe(report), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    code: int = report["exit_code"]
    if code == EXIT_CANNOT:
        print(f"{PROG}: cannot measure: {report['verdict']['reason']}", file=sys.stderr)
    return code
