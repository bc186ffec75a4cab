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

This module holds the command line and the run's steps (Prover, measure); the exporter
child, the /proc readers, sampling and the math are in prove_sample, the report and its
verdict in prove_report, the chart in prove_plot, the storms in workload.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from linnix_exporter.errors import EXIT_CANNOT, tool_error
from linnix_exporter.tools.prove_report import (
    Run,
    Settings,
    build_report,
    format_report,
    intervals,
    json_safe,
    pct,
)
from linnix_exporter.tools.prove_sample import (
    PROBE_NAMES,
    CannotMeasure,
    ExporterProcess,
    Interrupted,
    NodeStat,
    Sampler,
    ab_order,
    exporter_programs,
    interval_row,
    parse_proc_stat,
    parse_stats_cost,
    parse_stats_enabled,
    phase_seconds,
    storm_check,
)

if TYPE_CHECKING:
    from linnix_exporter.tools.progress import Progress
    from linnix_exporter.tools.workload import StormResult

PROG = "linnix-exporter prove"
AB_WARMUP = 0.5  # seconds of storm before an A/B window opens (start-up transients)


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


# ---- the run --------------------------------------------------------------------------


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

    def _stats_of(self, exp: ExporterProcess) -> tuple[str, float | None]:
        """The exporter's statistics method and calibrated cost per run (ns), for the
        statistics term: Σ runs of every program x cost, while it holds them on."""
        code, body = exp.get("/metrics")
        _, method = parse_stats_enabled(body) if code == 200 else (False, "absent")
        cost = parse_stats_cost(body) if code == 200 else None
        self.run.exporter.setdefault("stats_cost_ns", []).append(cost)
        return method, cost

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
        sampler = self.run.sampler = Sampler(exp.pid, probes, self._stats_of(exp))
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
                sampler = Sampler(exp.pid, probes, self._stats_of(exp))
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

    # Estimate for the progress bar: storms, A/B rounds (+ warm-up and counting), and an
    # exporter restart (start-up compiles the probes in a child) for each B after an A.
    restart = 6.0
    rounds = settings.rounds * 2 * (settings.ab_round_seconds + 2) + settings.rounds * restart
    total = settings.duration + rounds + restart
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
        return tool_error(PROG, e)
    if args.plot:
        # Fail on a bad path before minutes of measuring, not after.
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            return tool_error(PROG, f"--plot: cannot write to {parent}")
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
