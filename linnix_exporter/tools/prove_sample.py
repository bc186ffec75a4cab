"""What `linnix-exporter prove` measures, and the math on it.

The exporter under test (ExporterProcess: a child on a free loopback port, scraped like
Prometheus would) and the probes it holds (exporter_programs); the pure /proc parsers;
Sampler, which reads the probes' run_time_ns/run_cnt (bpf()), the exporter's CPU and RSS
and /proc/stat at once; interval_row, which turns two samples into one interval through
rates.compute_rates, the daemon's own math; and the pure helpers the run and the report
share (percentile, median, phase length, A/B order, slowdown, summarize, storm check).
The kernel readers and rates are imported only inside the functions that use them, so
importing this module (which the command line's parser does) stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linnix_exporter.kernel.bpf_syscall import ProgReader
    from linnix_exporter.rates import Rates
    from linnix_exporter.snapshot import Snapshot

# The probe programs' names (kernel/_loader.PROGRAMS; a unit test keeps them equal).
# Names are only used among the programs the exporter's pid holds, never alone.
PROBE_NAMES = ("linnix_fork", "linnix_exec", "linnix_exit", "linnix_free")
FORK_PROBE = "linnix_fork"
READY_TIMEOUT = 120.0
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


def parse_stats_cost(metrics: str) -> float | None:
    """linnix_bpf_stats_run_cost_seconds from the exporter's /metrics, in ns."""
    m = re.search(r"^linnix_bpf_stats_run_cost_seconds\{[^}]*\} (\S+)$", metrics, re.M)
    return None if m is None else float(m.group(1)) * 1e9


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
    """statistics.median, nan for no values (a report without A/B rounds)."""
    return statistics.median(values) if values else math.nan


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
    stats_node: float  # what BPF statistics cost every program run, if the exporter's
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
    st = sum(r.get("stats_seconds", 0.0) for r in rows)
    shares = [r["total_node_ratio"] for r in rows]
    denom = secs * cpus
    return Summary(
        seconds=secs,
        probes_run_time_ns=rt,
        exporter_cpu_seconds=cpu,
        probes_node=rt / 1e9 / denom if denom else math.nan,
        exporter_node=cpu / denom if denom else math.nan,
        stats_node=st / denom if denom else math.nan,
        total_node=(rt / 1e9 + cpu + st) / denom if denom else math.nan,
        total_core=(rt / 1e9 + cpu + st) / secs if secs else math.nan,
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
    # Runs of every other program on the node (summed), and the exporter's statistics
    # method and served cost per run: the statistics term, Σ runs x cost.
    other_runs: int = 0
    stats_method: str = "off"
    stats_cost_ns: float | None = None

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
    def __init__(
        self,
        pid: int,
        probes: Sequence[ProbeProgram],
        stats: tuple[str, float | None] = ("off", None),
    ) -> None:
        """`stats`: the exporter's statistics method and cost per run (ns), from its
        /metrics (parse_stats_cost)."""
        from linnix_exporter.kernel.bpf_syscall import ProgReader, online_cpus

        self.pid = pid
        self.probes = list(probes)
        self.stats_method, self.stats_cost_ns = stats
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
        other = sum(r.run_cnt for r in self._reader.all() if r.id not in rt)
        end = time.monotonic()
        s = Sample(
            len(self.samples), phase, mono, end, wall, boot, rt, cnt, load, user, system, rss, node,
            other, self.stats_method, self.stats_cost_ns,
        )  # fmt: skip
        self.samples.append(s)
        return s


def to_snapshot(s: Sample, probes: Sequence[ProbeProgram], cpus: int, clk_tck: int) -> Snapshot:
    """A Sample as the daemon's data model, so rates.compute_rates does the math."""
    from linnix_exporter.snapshot import ProgramStat, SelfUsage, Snapshot, StatsState

    programs = (
        *(ProgramStat(p.id, p.name, p.type, "", s.load_time_ns[p.id], s.run_time_ns[p.id],
                      s.run_cnt[p.id], 0, True)
          for p in probes),
        # Every other program's runs as one row: only its runs count (statistics term).
        ProgramStat(0, "[other]", "", "", 0, 0, s.other_runs, 0),
    )  # fmt: skip
    usage = SelfUsage(s.cpu_user_ticks / clk_tck, s.cpu_system_ticks / clk_tck, s.rss_bytes)
    return Snapshot(
        monotonic=s.monotonic,
        wall_time=s.wall_time,
        boottime_ns=s.boottime_ns,
        online_cpus=cpus,
        programs=programs,
        self_usage=usage,
        stats=StatsState(True, s.stats_method, run_cost_ns=s.stats_cost_ns),
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
        "probe_runs": sum(r.programs[p.id].run_cnt for p in probes if p.id in r.programs),
        "fork_runs": sum(r.programs[i].run_cnt for i in fork_ids if i in r.programs),
        "tasks_created": cur.node.processes - prev.node.processes,
        "exporter_cpu_seconds": r.exporter_cpu_seconds,
        "probes_node_ratio": r.probes_cpu_ratio,
        "exporter_node_ratio": r.exporter_cpu_ratio,
        "stats_seconds": r.component_seconds()["stats"],
        "stats_node_ratio": r.component_ratios()["stats"],
        "total_node_ratio": r.overhead_ratio,
        "total_core_ratio": r.overhead_core_ratio,
        "rss_bytes": cur.rss_bytes,
    }
