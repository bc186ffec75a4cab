"""`linnix-exporter snapshot`: every BPF program's kernel statistics over one window,
as a JSON report (format: snapshot.schema.json, built in tools/window.py).

Turns BPF statistics on for the window only (StatsSwitch: put back as found on every
exit path), reads every program with the bpf() syscall at the start, every
--sample-interval and at the end, and writes the report to stdout or, atomically, to
--output. With --collector.hooks it also calibrates the hook costs before the window
and reports each program's hooks and whole price (tools/snapshot_hooks.py).
SIGINT/SIGTERM end the window at once: the end read is taken and the report
written with window.interrupted = true (exit 0).

Exit codes: 0 report written; 1 the host cannot (capability, kernel, output not
writable at the end); 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from linnix_exporter import log
from linnix_exporter.config import Option, deprecated_flags, parse_choice
from linnix_exporter.errors import EXIT_HOST, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from linnix_exporter.tools.window import Filters

PROG = "linnix-exporter snapshot"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "snapshot",
        help="every BPF program's kernel statistics over a window, as JSON",
        description="Turn BPF run-time statistics on for a window, read every BPF program "
        "at its start, every --sample-interval and at its end, and write a JSON report "
        "(per program: run time, runs, rates, CPU share of one core and of the node, "
        "lifecycle; totals; with --collector.hooks each program's hooks and whole price). "
        "Ctrl-C/SIGTERM end the window early and still write it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--duration", metavar="DURATION", default="60s", help="window length: 30s, 5m, 500ms, 1h"
    )
    p.add_argument("--output", metavar="FILE", default="-", help="report file ('-': stdout)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="a progress line every sample and a line per program appearing/disappearing",
    )
    p.add_argument(
        "--sample-interval",
        metavar="DURATION",
        default="1s",
        help="time between reads during the window (the resolution at which unloads are seen)",
    )
    p.add_argument("--include-name", metavar="REGEX", default="", help="only programs matching")
    p.add_argument("--exclude-name", metavar="REGEX", default="", help="no program matching")
    p.add_argument(
        "--include-type", metavar="TYPES", default="", help="only these types (tracepoint,xdp)"
    )
    p.add_argument("--exclude-type", metavar="TYPES", default="", help="none of these types")
    p.add_argument(
        STATS_METHOD.flag,
        dest="stats_method",
        default=argparse.SUPPRESS,  # absent unless given: the old spelling may stand in
        choices=STATS_METHODS,
        help="how to turn statistics on: auto tries BPF_ENABLE_STATS, then the sysctl "
        "(the daemon's flag; default: auto)",
    )
    p.add_argument(
        "--collector.hooks",
        dest="hooks",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also where each program is attached and its whole price: run time + what "
        "reaching it through its hooks costs, calibrated here before the window (~1 s of "
        "CPU), as the daemon's hooks collector",
    )
    # The earlier spelling, before the tools took the daemon's dotted flags: still
    # accepted, with a deprecation line (as the daemon does, config.deprecated_flags).
    p.add_argument(
        *STATS_METHOD.deprecated,
        dest=STATS_METHOD.old_dest(0),
        default=None,
        choices=STATS_METHODS,
        help=argparse.SUPPRESS,
    )
    p.set_defaults(handler=main)


STATS_METHODS = ("auto", "enable_stats_fd", "sysctl")


STATS_METHOD = Option(
    "--bpf.stats-method",
    parse_choice(*STATS_METHODS),
    "auto",
    "how to turn statistics on",
    deprecated=("--stats-method",),
)


class UsageError(ValueError):
    """A bad flag value; str() is the one line for the user."""


@dataclass(frozen=True)
class Options:
    duration: float
    interval: float
    output: str | None  # None: stdout
    verbose: bool
    stats_method: str
    hooks: bool = False


def parse_options(args: argparse.Namespace) -> tuple[Options, Filters]:
    """Checked options and window.Filters; raises UsageError."""
    from linnix_exporter.config import parse_duration, parse_list, parse_regex
    from linnix_exporter.kernel.bpf_syscall import PROG_TYPES
    from linnix_exporter.tools.window import Filters

    def field(flag: str, parse: Any, raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None

    duration = field("--duration", parse_duration, args.duration)
    interval = field("--sample-interval", parse_duration, args.sample_interval)
    types: dict[str, frozenset[str]] = {}
    for flag in ("--include-type", "--exclude-type"):
        given = field(flag, parse_list, getattr(args, flag[2:].replace("-", "_")))
        unknown = sorted(
            t for t in given if t not in PROG_TYPES and not t.removeprefix("type_").isdigit()
        )
        if unknown:
            raise UsageError(
                f"{flag}: unknown program type {', '.join(unknown)} "
                f"(known: {', '.join(PROG_TYPES[1:])})"
            )
        types[flag] = given
    filters = Filters(
        include_name=field("--include-name", parse_regex, args.include_name),
        exclude_name=field("--exclude-name", parse_regex, args.exclude_name),
        include_type=types["--include-type"],
        exclude_type=types["--exclude-type"],
    )
    output = None if args.output in ("-", "") else args.output
    if output is not None:
        # The directory case first: said to anyone, root or not (a user who cannot write
        # in its parent was told "cannot write in '/'" for `--output /tmp`).
        if os.path.isdir(output):
            raise UsageError(f"--output: {output!r} is a directory")
        folder = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"--output: cannot write in {folder!r}")
    given = getattr(args, "stats_method", None)  # the new spelling wins over the old
    method = given or getattr(args, STATS_METHOD.old_dest(0), None) or STATS_METHOD.default
    opts = Options(duration, interval, output, args.verbose, method, args.hooks)
    return opts, filters


def deprecation_lines(args: argparse.Namespace) -> list[str]:
    """One line per deprecated flag spelling given."""
    return [
        f"{PROG}: warning: {old} is deprecated, use {new}"
        for old, new in deprecated_flags((STATS_METHOD,), args)
    ]


def write_atomic(path: str, text: str) -> None:
    """Write to a temp file in the same folder, then rename over `path`: readers see
    the old file or the whole new one, never half a report."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class SignalStop:
    """SIGINT/SIGTERM end the window: the handler only sets a flag; the wait blocks in
    select() on a wakeup pipe the interpreter writes to when a signal arrives, so the
    window ends at once (a handler that raised could cut a read or a write in half)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signum: int | None = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        os.set_blocking(self._r, False)
        self._old_fd = signal.set_wakeup_fd(self._w)
        self._old = {s: signal.signal(s, self._on_signal) for s in signals}

    def fileno(self) -> int:
        """Readable when a signal arrived: for a select() that also waits on other fds
        (then wait(0) drains it and says whether a stop signal was among them)."""
        return self._r

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop signal arrived (before or during)."""
        import select

        if self.signum is None:
            select.select([self._r], [], [], seconds)
            try:
                while os.read(self._r, 64):
                    pass
            except BlockingIOError:
                pass
        return self.signum is not None

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._r)
        os.close(self._w)


def main(args: argparse.Namespace) -> int:
    try:
        opts, filters = parse_options(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for line in deprecation_lines(args):
        print(line, file=sys.stderr)
    # stdout is the report: the readers' log lines (the calibration's) go to stderr, and
    # only warnings (statistics held elsewhere, a failed calibration) are worth a line.
    log.configure("warn")
    from linnix_exporter.kernel import host

    # Listing every program (BPF_PROG_GET_NEXT_ID) and BPF_ENABLE_STATS need it.
    missing = host.missing_caps((host.CAP_SYS_ADMIN,))
    if missing:
        print(
            f"{PROG}: error: missing capability {', '.join(missing)}: needed to list all BPF "
            "programs and turn on their statistics; run as root or grant it",
            file=sys.stderr,
        )
        return EXIT_HOST
    # Handlers stay ours until the report is written: a second Ctrl-C must not cut the
    # write short (stats are already back as found by then).
    stop = SignalStop()
    try:
        try:
            report = _observe(opts, filters, stop)
        except OSError as e:  # BpfError included: the kernel refused a read
            print(f"{PROG}: error: reading BPF programs: {e}", file=sys.stderr)
            return EXIT_HOST
        text = json.dumps(report, indent=2) + "\n"
        if opts.output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return EXIT_OK
        try:
            write_atomic(opts.output, text)
        except OSError as e:
            print(f"{PROG}: error: cannot write {opts.output}: {e.strerror}", file=sys.stderr)
            return EXIT_HOST
        return EXIT_OK
    finally:
        stop.restore()


def _observe(opts: Options, filters: Filters, stop: SignalStop) -> dict[str, Any]:
    from linnix_exporter import __version__
    from linnix_exporter.kernel import hooks
    from linnix_exporter.kernel.bpf_syscall import online_cpus
    from linnix_exporter.kernel.progstats import OwnerScanner, ProgramPass, ProgramReads
    from linnix_exporter.kernel.stats_cost import Calibration, StatsCalibrator
    from linnix_exporter.kernel.stats_switch import StatsSwitch
    from linnix_exporter.snapshot import ALWAYS
    from linnix_exporter.stats_control import StatsController
    from linnix_exporter.tools import snapshot_hooks, window
    from linnix_exporter.tools.progress import Progress

    progress = Progress(opts.duration, "snapshot", plain_every=0.0 if opts.verbose else 10.0)
    tracker = window.Tracker(classify=window.classify_from_proc(window.our_program_names()))
    kept = filters.keep

    def on_sample(elapsed: float, appeared: list[window.Seen], went: list[window.Seen]) -> None:
        if watch is not None and appeared:  # new programs: read where they are attached
            watch.read()
        if elapsed == 0.0:
            n = sum(1 for s in appeared if kept(s.first.name, s.first.type))
            progress.line(f"snapshot: window started ({n} programs, stats {state.method})")
        elif opts.verbose:
            for s in appeared:
                if kept(s.first.name, s.first.type):
                    p = s.first
                    progress.line(f"snapshot: + program {p.id} {p.name} ({p.type}) appeared")
            for s in went:
                if kept(s.first.name, s.first.type):
                    p = s.last
                    progress.line(f"snapshot: - program {p.id} {p.name} ({p.type}) unloaded")
        live = sum(1 for s in tracker.live.values() if kept(s.first.name, s.first.type))
        progress.update(elapsed, f"{live} programs")

    stats = StatsSwitch()
    cost: Calibration | None = None
    reader = ProgramPass(ProgramReads(), OwnerScanner())
    watch = snapshot_hooks.HookWatch(hooks.all_hooks) if opts.hooks else None
    try:
        restored = stats.recover_after_crash()
        if restored is not None:
            progress.line(
                f"snapshot: restored kernel.bpf_stats_enabled={restored} left by a killed run"
            )
        if watch is not None:
            # Before statistics go on: the calibration alternates them for its body arms.
            hook_costs, hook_cpu, error = snapshot_hooks.calibrate()
            if error:
                progress.line(f"snapshot: warning: hook costs not calibrated ({error})")
        state = stats.enable(opts.stats_method)
        if not state.enabled:
            progress.line(f"snapshot: warning: BPF statistics are off ({stats.error.strip('; ')})")
        else:
            # What statistics cost every run: calibrated before the window, as the daemon does.
            control = StatsController(stats, ALWAYS, 1.0, 1.0, StatsCalibrator())
            control.start(time.monotonic())
            cost = control.calibration
        w = window.observe(reader.rows, opts.duration, opts.interval, stop.wait, tracker, on_sample)
        enabled = state.enabled and stats.state().enabled
        if watch is not None:
            watch.read()  # attachments made after their program appeared
    finally:
        # Stats back as found before anything else can fail (writing, a second signal).
        stats.close()
        reader.close()
    end = "interrupted" if w.interrupted else "done"
    progress.close(w.measured_seconds, f"{end}, {w.samples} reads")
    host_info = window.HostInfo(
        hostname=os.uname().nodename, kernel_release=os.uname().release, online_cpus=online_cpus()
    )
    hook_window = None
    if watch is not None:
        hook_window = snapshot_hooks.HookWindow(tuple(watch.seen.values()), hook_costs, hook_cpu)
    return window.build_report(
        w, host_info, state.method, enabled, filters, __version__, cost, hook_window
    )
