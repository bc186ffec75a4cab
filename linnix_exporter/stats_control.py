"""The statistics controller: switches BPF statistics and calibrates their cost, as
stats_policy.decide says after each tick. It keeps no clock and sleeps nowhere: the
caller (schedule.py, which owns when things happen) passes `now` (monotonic seconds).

Only statistics we turned on are switched (method enable_stats_fd or sysctl): with
`already_on` they belong to someone else and stay on.

The cost per run is calibrated before statistics go on (kernel/stats_cost.py), then
every RECALIBRATE_SECONDS: in sampled mode measured for real in the off part of an
interval (statistics are off anyway: free of lost runs), in always mode estimated from the
clock, since switching off would lose every program's runs.

Each tick the loop calls after_tick(); schedule.Sampled asks `current`, `is_on` and
`duty` when to open the window and calls open_window() then.
"""

from __future__ import annotations

from linnix_exporter import log
from linnix_exporter.kernel.bpf_syscall import BpfError
from linnix_exporter.kernel.stats_cost import Calibration, StatsCalibrator
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.rates import Rates
from linnix_exporter.snapshot import ALWAYS, AUTO, SAMPLED, StatsState
from linnix_exporter.stats_policy import MODES, decide, full_stats_term, initial_duty

_log = log.get("stats")

RECALIBRATE_SECONDS = 300.0


class StatsController:
    def __init__(
        self,
        switch: StatsSwitch,
        mode: str,
        budget: float,
        share: float,
        calibrator: StatsCalibrator | None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown stats mode {mode!r}")
        self.switch = switch
        self.setting = mode
        self.limit = budget * share  # node share the statistics term may take
        self.calibrator = calibrator
        self.current = ALWAYS  # the schedule in force
        self.duty = initial_duty(mode)
        self.calibration: Calibration | None = None  # served
        self._measured: Calibration | None = None  # last off/on measurement: estimates scale it
        self._noted_fixed = False
        self._off_since: float | None = None  # sampled: when ours went off
        self._counting_at_off = False  # ... and whether the kernel still counted then
        self.held_elsewhere = False  # both ends of the last off part were still counted
        self._attempted: float | None = None  # last calibration (attempt); start() sets it

    @property
    def is_on(self) -> bool:
        return self.switch.is_on

    # ---- calibration ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """At start-up, after the switch is enabled: calibrate with statistics off for a
        moment (nothing is counting yet, so no run is lost), then on again."""
        self._attempted = now
        if self.calibrator is None:
            return
        if self.switch.can_toggle:
            self.switch.off()
            try:
                self._measure()
            finally:
                self._switch_on(now)
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

    def _due(self, now: float) -> bool:
        """A calibration (or an attempt, which may find statistics held elsewhere) is at
        most every RECALIBRATE_SECONDS: each costs ~15 ms of our CPU and kernel text
        patching on every switch."""
        if self._attempted is None:
            self._attempted = now
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
            held_elsewhere=self.held_elsewhere and self.current == SAMPLED,
        )

    def _switch_on(self, now: float) -> None:
        if self._off_since is not None:
            # Counted at both ends of our off part: another holder kept statistics on,
            # so runs were counted all along (ratios must not be scaled as if sampled)
            # and our switching costs the node nothing. Checked, not assumed: a fresh
            # program's test run either counts or not.
            held = self._counting_at_off and self._counting()
            if held:
                self.switch.credit(now - self._off_since)
            if held != self.held_elsewhere:
                _log.info("bpf stats held on by another process while ours are off", held=held)
            self.held_elsewhere = held
            self._off_since = None
        try:
            self.switch.on()
        except (BpfError, OSError) as e:
            _log.warning("bpf stats could not be switched on", error=str(e))

    def _switch_off(self, now: float) -> None:
        self.switch.off()
        self._off_since = now
        self._counting_at_off = self._counting()

    def _counting(self) -> bool:
        if self.calibrator is None:
            return False
        try:
            return self.calibrator.counting()
        except (BpfError, OSError):
            return False

    def open_window(self, now: float) -> None:
        """Sampled: the window before the tick starts now."""
        self._switch_on(now)

    def after_tick(self, rates: Rates | None, now: float) -> None:
        """Choose the next interval's schedule from the tick just read, and switch."""
        nxt, duty = self._decide(rates)
        if nxt != self.current:
            _log.info(
                "bpf stats mode",
                mode=nxt,
                was=self.current,
                duty=round(duty, 3) if nxt == SAMPLED else 1.0,
                stats_term=round(full_stats_term(rates), 6) if rates else None,
                limit=self.limit,
            )
            self.current = nxt
        self.duty = duty
        if self.current == SAMPLED:
            if self._due(now) and not self.held_elsewhere:
                self.switch.off()
                self._measure()  # statistics are off now: free to alternate
            self._switch_off(now)
        else:
            if not self.switch.is_on:
                self._switch_on(now)
            if self._due(now):
                self._estimate()

    def _decide(self, rates: Rates | None) -> tuple[str, float]:
        if self.setting != ALWAYS and not self.switch.can_toggle:
            if not self._noted_fixed:
                _log.info("bpf stats not sampled: not ours to switch", method=self.switch.method)
                self._noted_fixed = True
            return ALWAYS, self.duty
        judged = rates is not None and (self.setting != AUTO or self.calibration is not None)
        term = full_stats_term(rates) if judged and rates is not None else None
        return decide(self.setting, self.current, self.duty, term, self.limit)
