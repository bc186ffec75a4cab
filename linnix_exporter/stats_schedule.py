"""When BPF statistics are on, and what they cost: --bpf.stats-mode.

- always: on from start to exit (every run counted; every run pays the stats cost).
- sampled: on only for a window at the end of each interval, so the tick reads at the
  window's end and switches them off again; the window is as long as the budget allows
  (see `duty_for`), at least MIN_DUTY and at most MAX_DUTY of the interval.
- auto (default): always, until the statistics term alone (every run on the node x the
  calibrated cost) would pass --bpf.stats-budget-share of the overhead budget; then
  sampled, and back to always when the term measured in the windows, scaled to the whole
  interval, falls below BACK_FACTOR of that share.

Only statistics we turned on are switched (method enable_stats_fd or sysctl): with
`already_on` they belong to someone else and stay on.

The cost per run is calibrated before statistics go on (kernel/stats_cost.py), then
every RECALIBRATE_SECONDS: in sampled mode measured for real in the off part of an
interval (statistics are off anyway: free of lost runs), in always mode estimated from the
clock, since switching off would lose every program's runs.

Each tick calls after_tick(); the loop (state.Sampled) asks window_start() when to switch
statistics on and calls open_window() then. All the schedule's state is here.
"""

from __future__ import annotations

import threading
import time

from linnix_exporter import log
from linnix_exporter.kernel.bpf_syscall import BpfError
from linnix_exporter.kernel.stats_cost import Calibration, StatsCalibrator
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.rates import NS, Rates
from linnix_exporter.snapshot import StatsState

_log = log.get("stats")

MODES = ("always", "sampled", "auto")
MIN_DUTY = 0.05  # a window shorter than this reads too few runs to estimate from
MAX_DUTY = 0.5  # sampled means off at least half the time
BACK_FACTOR = 0.8  # hysteresis: back to always only well under the share, not at it
RECALIBRATE_SECONDS = 300.0


def full_stats_term(r: Rates) -> float:
    """The statistics term as a node share if statistics were on the whole interval:
    runs per counted second x cost per run. 0 while the cost is unknown."""
    if r.online_cpus <= 0:
        return 0.0
    return r.run_rate(r.bpf_runs) * r.stats_run_cost_ns / NS / r.online_cpus


def duty_for(term: float, limit: float) -> float:
    """Share of each interval statistics may be on to keep the term within `limit`."""
    if term <= 0:
        return MAX_DUTY
    return min(MAX_DUTY, max(MIN_DUTY, limit / term))


class StatsSchedule:
    def __init__(
        self,
        switch: StatsSwitch,
        mode: str,
        interval: float,
        budget: float,
        share: float,
        calibrator: StatsCalibrator | None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown stats mode {mode!r}")
        self.switch = switch
        self.setting = mode
        self.interval = interval
        self.limit = budget * share  # node share the statistics term may take
        self.calibrator = calibrator
        self.current = "always"  # the schedule in force
        self.duty = MAX_DUTY if mode == "sampled" else 1.0
        self.calibration: Calibration | None = None  # served
        self._measured: Calibration | None = None  # last off/on measurement: estimates scale it
        self._noted_fixed = False
        self._off_since: float | None = None  # sampled: when ours went off
        self._counting_at_off = False  # ... and whether the kernel still counted then
        self.held_elsewhere = False  # both ends of the last off part were still counted
        self._attempted = time.monotonic()  # start() calibrates

    # ---- calibration ------------------------------------------------------------------

    def start(self) -> None:
        """At start-up, after the switch is enabled: calibrate with statistics off for a
        moment (nothing is counting yet, so no run is lost), then on again."""
        if self.calibrator is None:
            return
        if self.switch.can_toggle:
            self.switch.off()
            try:
                self._measure()
            finally:
                self._switch_on()
        if self.calibration is None and self.switch.is_on:
            # Held on by someone else since before us: no "off" to compare with.
            self._estimate()
            if self.calibration is not None:
                _log.warning(
                    "bpf stats cost estimated, not measured: statistics are held on by "
                    "another process",
                    cost_ns=round(self.calibration.cost_ns, 1),
                    method=self.switch.method,
                )

    def _measure(self) -> None:
        assert self.calibrator is not None
        try:
            cal = self.calibrator.measure(self.switch.on, self.switch.off)
        except (BpfError, OSError) as e:
            _log.warning("bpf stats calibration failed", error=str(e))
            return
        if cal is None:
            _log.info("bpf stats calibration skipped: statistics held on by another process")
            return
        self.calibration = self._measured = cal
        _log.info(
            "bpf stats cost calibrated",
            cost_ns=round(cal.cost_ns, 1),
            off_ns=round(cal.off_ns or 0.0, 1),
            on_ns=round(cal.on_ns, 1),
            rounds=cal.rounds,
            cpu_ms=round(cal.cpu_seconds * 1e3, 2),
        )

    def _estimate(self) -> None:
        if self.calibrator is None:
            return
        try:
            cal = self.calibrator.estimate(self._measured)
        except (BpfError, OSError) as e:
            _log.warning("bpf stats cost estimate failed", error=str(e))
            return
        if cal is not None:
            self.calibration = cal
            _log.debug("bpf stats cost estimated", cost_ns=round(cal.cost_ns, 1))

    def _due(self) -> bool:
        """A calibration (or an attempt, which may find statistics held elsewhere) is at
        most every RECALIBRATE_SECONDS: each costs ~15 ms of our CPU and kernel text
        patching on every switch."""
        now = time.monotonic()
        if now - self._attempted < RECALIBRATE_SECONDS:
            return False
        self._attempted = now
        return True

    # ---- the schedule -------------------------------------------------------------------

    def state(self, now: float | None = None) -> StatsState:
        base = self.switch.state(now)
        c = self.calibration
        return StatsState(
            enabled=base.enabled,
            method=base.method,
            on_seconds=base.on_seconds,
            mode=self.current,
            run_cost_ns=c.cost_ns if c else None,
            cost_source=c.source if c else "",
            held_elsewhere=self.held_elsewhere and self.current == "sampled",
        )

    def _switch_on(self) -> None:
        if self._off_since is not None:
            # Counted at both ends of our off part: another holder kept statistics on,
            # so runs were counted all along (ratios must not be scaled as if sampled)
            # and our switching costs the node nothing. Checked, not assumed: a fresh
            # program's test run either counts or not.
            held = self._counting_at_off and self._counting()
            if held:
                self.switch.credit(time.monotonic() - self._off_since)
            if held != self.held_elsewhere:
                _log.info("bpf stats held on by another process while ours are off", held=held)
            self.held_elsewhere = held
            self._off_since = None
        try:
            self.switch.on()
        except (BpfError, OSError) as e:
            _log.warning("bpf stats could not be switched on", error=str(e))

    def _switch_off(self) -> None:
        self.switch.off()
        self._off_since = time.monotonic()
        self._counting_at_off = self._counting()

    def _counting(self) -> bool:
        if self.calibrator is None:
            return False
        try:
            return self.calibrator.counting()
        except (BpfError, OSError):
            return False

    def window_start(self, deadline: float) -> float | None:
        """In sampled mode with statistics off: when to switch them on (open_window) so
        they count for the last `duty` of the interval that ends at `deadline`."""
        if self.current == "sampled" and not self.switch.is_on:
            return deadline - self.duty * self.interval
        return None

    def open_window(self) -> None:
        self._switch_on()

    def wait(self, stop: threading.Event, deadline: float) -> bool:
        """Sleep until `deadline` (monotonic), opening the window on the way (the timed
        loop of tests; the daemon's loop is state.Sampled). True if `stop` was set."""
        on_at = self.window_start(deadline)
        if on_at is not None:
            if stop.wait(max(0.0, on_at - time.monotonic())):
                return True
            self.open_window()
        return stop.wait(max(0.0, deadline - time.monotonic()))

    def after_tick(self, rates: Rates | None) -> None:
        """Choose the next interval's schedule from the tick just read."""
        nxt = self._decide(rates)
        if nxt != self.current:
            _log.info(
                "bpf stats mode",
                mode=nxt,
                was=self.current,
                duty=round(self.duty, 3) if nxt == "sampled" else 1.0,
                stats_term=round(full_stats_term(rates), 6) if rates else None,
                limit=self.limit,
            )
            self.current = nxt
        if self.current == "sampled":
            if self._due() and not self.held_elsewhere:
                self.switch.off()
                self._measure()  # statistics are off now: free to alternate
            self._switch_off()
        else:
            if not self.switch.is_on:
                self._switch_on()
            if self._due():
                self._estimate()

    def _decide(self, rates: Rates | None) -> str:
        if self.setting == "always":
            return "always"
        if not self.switch.can_toggle:
            if not self._noted_fixed:
                _log.info("bpf stats not sampled: not ours to switch", method=self.switch.method)
                self._noted_fixed = True
            return "always"
        if rates is None:
            return self.current if self.setting == "auto" else "sampled"
        term = full_stats_term(rates)
        if self.setting == "sampled":
            self.duty = duty_for(term, self.limit)
            return "sampled"
        if self.calibration is None:
            return self.current
        if self.current == "always" and term > self.limit:
            self.duty = duty_for(term, self.limit)
            return "sampled"
        if self.current == "sampled":
            if term < self.limit * BACK_FACTOR:
                self.duty = 1.0
                return "always"
            self.duty = duty_for(term, self.limit)
        return self.current
