"""When ticks run: each schedule (on demand, timer, sampled) drives the daemon's own loop
(schedule.Ticker.run, built by wiring.make_ticker as cli.run builds it) with a fake
clock, so the figures below are exact deadlines, not sleeps measured on a loaded
machine. The sampled schedule switches a real StatsSwitch (its sysctl method pointed at
a file: the same code that writes kernel.bpf_stats_enabled)."""

from __future__ import annotations

import select
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from linnix_exporter.cli import build_parser
from linnix_exporter.collectors.statistics import StatsSource
from linnix_exporter.config import TIMER, RunConfig, run_config
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.schedule import OnDemand, Sampled, Ticker, Timer
from linnix_exporter.snapshot import SAMPLED
from linnix_exporter.state import Sources
from linnix_exporter.stats_control import StatsController
from linnix_exporter.tick import Tick
from linnix_exporter.wiring import make_ticker
from tests.support.fake_sources import Owners, Probes, Programs, Self, Stats

START = 1000.0  # the fake clock's monotonic seconds at start-up


class FakeClock:
    """schedule.Clock with time that moves only when the loop sleeps (by exactly its
    timeout) or a test moves it. After `limit` sleeps it sets `stop`, as SIGTERM does."""

    def __init__(self, stop: threading.Event, limit: int) -> None:
        self.t = START
        self.stop = stop
        self.limit = limit
        self.sleeps: list[float | None] = []
        self.on_sleep: list[str] = []  # what `watch` returned at each sleep
        self.watch = lambda: ""

    def now(self) -> float:
        return self.t

    def sleep(self, fd: int, timeout: float | None) -> bool:
        self.sleeps.append(timeout)
        self.on_sleep.append(self.watch())
        if select.select([fd], [], [], 0)[0]:  # kicked: the real pipe, not simulated
            return True
        if timeout is None or len(self.sleeps) >= self.limit:
            self.stop.set()  # None: the real loop would sleep until a signal
            return False
        self.t += timeout
        return False


def cfg_for(interval: str, *extra: str) -> RunConfig:
    return run_config(
        build_parser().parse_args(["run", "--collect.interval", interval, *extra]), {}
    )


def ticker(
    cfg: RunConfig, clock: FakeClock, stats: StatsSource | None = None
) -> tuple[Ticker, Programs]:
    progs = Programs()
    src = Sources(progs, Owners(), Self(), stats or Stats(), lambda: 2, Probes())
    ctl = stats if isinstance(stats, StatsController) else None
    return make_ticker(cfg, src, ctl, clock), progs  # type: ignore[arg-type]


def test_on_demand_never_wakes_and_consumers_tick_when_stale() -> None:
    stop = threading.Event()
    clock = FakeClock(stop, limit=10)
    t, progs = ticker(cfg_for("10s"), clock)
    assert isinstance(t.schedule, OnDemand) and t.on_demand
    t.tick()  # start-up
    t.run(stop)
    assert clock.sleeps == [None]  # one sleep with no timeout: nothing of our own
    assert progs.reads == 1
    # The first ratios: a consumer 0.5 s after start-up gets the start-up tick; at 1 s
    # (FIRST_RATIO_SECONDS, under the 10 s interval) a new one; then every 10 s.
    for advance, reads in ((0.5, 1), (0.5, 2), (9.9, 2), (0.1, 3), (3.0, 3)):
        clock.t += advance
        got = t.fresh()
        assert progs.reads == reads, (clock.t - START, progs.reads)
        assert got is t.latest
    first = t.latest
    assert first is not None and first.rates is not None
    assert first.rates.interval_seconds == pytest.approx(10.0)


def test_on_demand_consumers_share_one_tick() -> None:
    stop = threading.Event()
    clock = FakeClock(stop, limit=1)
    t, progs = ticker(cfg_for("10s"), clock)
    t.tick()
    clock.t += 1.0
    progs.delay = 0.2  # a slow read: every consumer arrives while it runs
    got: list[Tick | None] = []
    threads = [threading.Thread(target=lambda: got.append(t.fresh())) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert progs.reads == 2  # one tick for eight consumers
    assert {x.seq for x in got if x is not None} == {2} and len(got) == 8


def test_timer_first_ratio_then_every_interval_and_no_burst_when_behind() -> None:
    stop = threading.Event()
    clock = FakeClock(stop, limit=6)
    t, progs = ticker(cfg_for("10s", "--collect.mode", "timer"), clock)
    assert isinstance(t.schedule, Timer) and not t.on_demand
    t.tick()
    late = {3: 25.0}  # the third tick's read takes 25 s (suspend, overload)
    read_at: list[float] = []

    def on_read() -> None:
        read_at.append(clock.t - START)
        clock.t += late.pop(progs.reads, 0.0)

    progs.on_read = on_read
    t.run(stop)
    # 1 s to the first ratios, then every 10 s; the slow third read ends at +36 s, past
    # the +21 s deadline: the next tick is one interval after it (+46 s), not a burst
    # of catch-up ticks at +36 and +41.
    assert read_at == [1.0, 11.0, 46.0, 56.0, 66.0]
    assert clock.sleeps == [1.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert progs.reads == 1 + 5  # the sixth sleep sets stop: no tick after it
    assert t.fresh() is t.latest  # consumers never tick on a timer
    assert progs.reads == 6


def test_kick_wakes_the_loop_to_stop() -> None:
    stop = threading.Event()
    clock = FakeClock(stop, limit=100)
    t, progs = ticker(cfg_for("10s", "--collect.mode", "timer"), clock)
    t.tick()
    stop.set()
    t.kick()  # as the signal handler does
    t.run(stop)
    assert clock.sleeps == [] and progs.reads == 1


def sampled_controller(tmp_path: Path, mode: str) -> tuple[StatsController, Path]:
    f = tmp_path / "bpf_stats_enabled"
    f.write_text("0")
    sw = StatsSwitch(sysctl=f, markers=tmp_path / "marker")
    sw.enable("sysctl")
    # Budget 1%, share 0.5; no calibrator: nothing to measure here.
    return StatsController(sw, mode, 0.01, 0.5, calibrator=None), f


@pytest.mark.parametrize("mode", ["on-demand", TIMER])
def test_sampled_opens_the_window_then_ticks_at_its_end(tmp_path: Path, mode: str) -> None:
    ctl, f = sampled_controller(tmp_path, SAMPLED)
    stop = threading.Event()
    clock = FakeClock(stop, limit=6)
    clock.watch = f.read_text  # statistics on ("1") or off ("0") as the loop sleeps
    cfg = replace(cfg_for("10s"), collect_mode=mode)
    t, progs = ticker(cfg, clock, ctl)
    assert isinstance(t.schedule, Sampled)
    t.tick()  # start-up: the controller samples from here (duty 0.5), statistics off
    assert (ctl.current, ctl.duty, f.read_text()) == (SAMPLED, 0.5, "0")
    assert not t.on_demand  # consumers never read in the middle of a window
    t.run(stop)
    # The start-up tick switched the schedule (on demand -> sampled) and kicked the
    # loop: its first sleep returns at once. Then off for the first half of each 10 s
    # interval, on for the second; the tick at its end switches them off again.
    assert clock.sleeps == [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    kicked = ["0"] if mode == "on-demand" else []
    assert clock.on_sleep == [*kicked, "0", "1", "0", "1", "0", "1"][:6]
    assert progs.reads == 1 + 2
    latest = t.latest
    assert latest is not None and latest.snapshot.monotonic == START + 20.0


def test_auto_is_its_base_until_the_controller_samples(tmp_path: Path) -> None:
    ctl, f = sampled_controller(tmp_path, "auto")
    stop = threading.Event()
    clock = FakeClock(stop, limit=3)
    t, progs = ticker(cfg_for("10s"), clock, ctl)
    t.tick()
    assert ctl.current == "always" and t.on_demand and f.read_text() == "1"
    t.run(stop)
    assert clock.sleeps == [None] and progs.reads == 1  # on demand: no wake-ups
