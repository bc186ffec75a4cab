"""--bpf.stats-mode as a pure function: from the setting, the mode in force, the
statistics term and its limit, the next mode and its duty. No switch, no clock, no
kernel: hand-worked fixtures test it (tests/test_stats_schedule.py).

- always: on from start to exit (every run counted; every run pays the stats cost).
- sampled: on only for a window at the end of each interval, so the tick reads at the
  window's end and switches them off again; the window is as long as the budget allows
  (see `duty_for`), at least MIN_DUTY and at most MAX_DUTY of the interval.
- auto (default): always, until the statistics term alone (every run on the node x the
  calibrated cost) would pass --bpf.stats-budget-share of the overhead budget; then
  sampled, and back to always when the term measured in the windows, scaled to the whole
  interval, falls below BACK_FACTOR of that share.
"""

from __future__ import annotations

from typing import NamedTuple

from linnix_exporter.rates import Rates
from linnix_exporter.snapshot import ALWAYS, AUTO, NS, SAMPLED

MODES = (ALWAYS, SAMPLED, AUTO)
MIN_DUTY = 0.05  # a window shorter than this reads too few runs to estimate from
MAX_DUTY = 0.5  # sampled means off at least half the time
BACK_FACTOR = 0.8  # hysteresis: back to always only well under the share, not at it


class Decision(NamedTuple):
    mode: str  # ALWAYS or SAMPLED: the schedule in force for the next interval
    duty: float  # share of each interval statistics are on (1.0: always)


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


def initial_duty(setting: str) -> float:
    return MAX_DUTY if setting == SAMPLED else 1.0


def decide(setting: str, current: str, duty: float, term: float | None, limit: float) -> Decision:
    """The next interval's mode and duty. `term`: the statistics term of the tick just
    read (full_stats_term), None when there is nothing to judge by (no rates yet, or in
    auto no calibrated cost): then the mode stays as it is."""
    if setting == ALWAYS:
        return Decision(ALWAYS, duty)
    if term is None:
        return Decision(SAMPLED if setting == SAMPLED else current, duty)
    if setting == SAMPLED:
        return Decision(SAMPLED, duty_for(term, limit))
    if current == ALWAYS and term > limit:
        return Decision(SAMPLED, duty_for(term, limit))
    if current == SAMPLED:
        if term < limit * BACK_FACTOR:
            return Decision(ALWAYS, 1.0)
        return Decision(SAMPLED, duty_for(term, limit))
    return Decision(current, duty)
