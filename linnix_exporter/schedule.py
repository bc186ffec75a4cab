"""When ticks happen, and nothing else: the one home for time.

- OnDemand (default): no wake-ups of our own. A scrape or a push that finds the newest
  tick older than the collection interval ticks first (`Ticker.fresh`; concurrent
  consumers share that one tick); nothing wakes up in between.
- Timer (`--collect.mode timer`): a tick every interval on monotonic deadlines.
- Sampled: while the statistics controller samples (stats_control.py), timed: wake at
  the window's start to switch statistics on, tick at its end (the controller switches
  them off again after the tick). Consumers then serve the newest tick and never read in
  the middle of a window. Otherwise it is its base (on demand or timer).

`Ticker` owns the loop (`run`), its wake pipe (`kick`, and the signal wake-up fd), the
tick lock and the one call consumers use for a tick (`fresh`). Every clock read and
every sleep goes through a `Clock`, so tests drive this very loop with a fake one.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from typing import Protocol

from linnix_exporter import log
from linnix_exporter.config import TIMER, RunConfig
from linnix_exporter.snapshot import SAMPLED
from linnix_exporter.stats_control import StatsController
from linnix_exporter.tick import Tick

_log = log.get("state")

FIRST_RATIO_SECONDS = 1.0  # shortest interval the first ratios are taken over


def first_ratio_age(interval: float, first: bool) -> float:
    """How long after a tick the next one may come. After the first: soon, but not after
    a few milliseconds, where one scheduler tick of our CPU reads as a third of the node
    (seen: 0.36 over 7 ms right after start)."""
    return min(interval, FIRST_RATIO_SECONDS) if first else interval


def next_deadline(deadline: float, interval: float, now: float) -> float:
    """One interval on; behind (suspend, overload): no burst, one interval from now."""
    deadline += interval
    return deadline if deadline >= now else now + interval


class Clock:
    """Monotonic time and the loop's sleep. Tests pass a fake with the same two calls."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, fd: int, timeout: float | None) -> bool:
        """Until `fd` is readable (True) or `timeout` seconds pass (None: no timeout)."""
        return bool(select.select([fd], [], [], timeout)[0])


class Schedule(Protocol):
    """When the loop wakes up on its own."""

    @property
    def on_demand(self) -> bool:
        """Consumers tick when they find the newest tick stale."""
        ...

    def next_wake(self, last: float | None, now: float) -> float | None:
        """Monotonic time of the next wake-up (`last`: the newest tick's); None: sleep
        until kicked."""
        ...

    def wake(self, now: float) -> bool:
        """Woken at or after next_wake: True to tick now."""
        ...

    def ticked(self, now: float) -> None:
        """The tick wake() asked for is done (`now`: after it)."""
        ...


class OnDemand:
    """No wake-ups of our own: scrapes and pushes tick when they need a newer tick."""

    on_demand = True

    def next_wake(self, last: float | None, now: float) -> float | None:
        return None

    def wake(self, now: float) -> bool:  # never called: next_wake is None
        return False

    def ticked(self, now: float) -> None:
        pass


class Timer:
    """A tick every `interval` on monotonic deadlines; behind (suspend, overload): no
    burst, the next tick is one interval later."""

    on_demand = False

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._deadline: float | None = None

    def next_wake(self, last: float | None, now: float) -> float | None:
        if self._deadline is None:
            # Start-up has just ticked: the first ratios come soon (first_ratio_age).
            self._deadline = (now if last is None else last) + first_ratio_age(self.interval, True)
        return self._deadline

    def wake(self, now: float) -> bool:
        return True

    def ticked(self, now: float) -> None:
        assert self._deadline is not None
        self._deadline = next_deadline(self._deadline, self.interval, now)


class Sampled:
    """`base` while statistics are always on; while the controller samples: wake at the
    window's start (open it), tick at the interval's end."""

    def __init__(self, base: OnDemand | Timer, stats: StatsController, interval: float) -> None:
        self.base = base
        self.stats = stats
        self.interval = interval
        self._deadline: float | None = None  # the next tick while sampled

    @property
    def on_demand(self) -> bool:
        return self.base.on_demand and self.stats.current != SAMPLED

    def window_start(self, deadline: float) -> float | None:
        """Statistics off while sampled: when to switch them on so they count for the
        last `duty` of the interval that ends at `deadline`."""
        if self.stats.current == SAMPLED and not self.stats.is_on:
            return deadline - self.stats.duty * self.interval
        return None

    def next_wake(self, last: float | None, now: float) -> float | None:
        if self.stats.current != SAMPLED:
            self._deadline = None
            return self.base.next_wake(last, now)
        if self._deadline is None:
            self._deadline = (now if last is None else last) + self.interval
        on_at = self.window_start(self._deadline)
        return self._deadline if on_at is None else on_at

    def wake(self, now: float) -> bool:
        if self.stats.current != SAMPLED:
            return self.base.wake(now)
        assert self._deadline is not None
        if now < self._deadline:
            self.stats.open_window(now)
            return False
        return True

    def ticked(self, now: float) -> None:
        if self._deadline is None:  # ticked as its base
            self.base.ticked(now)
            return
        self._deadline = next_deadline(self._deadline, self.interval, now)


def schedule_for(cfg: RunConfig, stats: StatsController | None = None) -> Schedule:
    base = Timer(cfg.collect_interval) if cfg.collect_mode == TIMER else OnDemand()
    return base if stats is None else Sampled(base, stats, cfg.collect_interval)


class TickMaker(Protocol):
    """state.Exporter: one tick of every collector, published as `latest`."""

    @property
    def latest(self) -> Tick | None: ...

    def tick(self) -> Tick: ...

    def close(self) -> None: ...


class Ticker:
    """Runs `exporter`'s ticks when `schedule` says, or when a consumer needs a fresh one;
    after each tick the statistics controller (if any) chooses the next interval's mode."""

    def __init__(
        self,
        exporter: TickMaker,
        schedule: Schedule,
        interval: float,
        stats: StatsController | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.exporter = exporter
        self.schedule = schedule
        self.interval = interval
        self.stats = stats
        self.clock = clock or Clock()
        # kick() writes a byte here to wake run(): a pipe, not an Event, because the
        # signal handler kicks from the main thread, which may be inside an Event's
        # (non-reentrant) lock at that moment.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._errors = 0
        self._last_error: str | None = None

    @property
    def latest(self) -> Tick | None:
        """The newest tick; never ticks."""
        return self.exporter.latest

    @property
    def errors_total(self) -> int:
        """Ticks that failed outside every collector (tick_logged)."""
        return self._errors

    @property
    def on_demand(self) -> bool:
        """Consumers tick when they find the newest tick stale (the schedule in force)."""
        return self.schedule.on_demand

    def tick(self) -> Tick:
        """One tick now, then the statistics controller's turn (start-up, and the loop)."""
        tick = self.exporter.tick()
        if self.stats is not None:
            was = self.on_demand
            self.stats.after_tick(tick.rates, self.clock.now())
            if self.on_demand != was:
                self.kick()  # the loop's wake-ups changed (auto switched modes)
        return tick

    def tick_logged(self) -> None:
        """Tick; an error no collector caught is logged once per distinct error and
        counted, and the last good tick stays up."""
        try:
            self.tick()
            if self._last_error is not None:
                self._last_error = None
                _log.info("collection recovered")
        except Exception as e:
            self._errors += 1
            msg = f"{type(e).__name__}: {e}"
            if self._last_error != msg:
                _log.error("collection failed", error=msg)
                self._last_error = msg

    def fresh(self) -> Tick | None:
        """The tick a consumer should export now. On demand: tick first if the newest
        one is older than the interval; concurrent callers wait for that one tick."""
        if not self.on_demand:
            return self.latest
        with self._lock:
            t = self.latest
            if t is None or self.clock.now() - t.snapshot.monotonic >= first_ratio_age(
                self.interval, t.seq == 1
            ):
                self.tick_logged()
            return self.latest

    @property
    def wakeup_fd(self) -> int:
        """The write end of run()'s wake-up pipe, for signal.set_wakeup_fd: a signal the
        kernel delivers to another thread (any thread may take it) then wakes the main
        thread's sleep, whose Python handler would otherwise wait for a wake-up that
        never comes while ticking on demand."""
        return self._wake_w

    def kick(self) -> None:
        """Make run() ask its schedule again: the signal handler after setting `stop`,
        and a tick whose statistics controller changed what the loop must wake up for.
        Safe in a signal handler: one write(2), no lock."""
        with contextlib.suppress(BlockingIOError):  # full pipe: a wake-up is pending
            os.write(self._wake_w, b"k")

    def run(self, stop: threading.Event) -> None:
        """Wake up when the schedule says until `stop` is set (then kick() wakes it)."""
        clock, schedule = self.clock, self.schedule
        while not stop.is_set():
            now = clock.now()
            t = self.latest
            wake = schedule.next_wake(t.snapshot.monotonic if t else None, now)
            timeout = None if wake is None else max(0.0, wake - now)
            if clock.sleep(self._wake_r, timeout):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            if stop.is_set():
                return
            if wake is not None and clock.now() >= wake:
                with self._lock:
                    if schedule.wake(clock.now()):
                        self.tick_logged()
                        schedule.ticked(clock.now())

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
