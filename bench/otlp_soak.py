"""OTLP collector flapping, for minutes: the real daemon pushes every 500 ms (1 s push
timeout) to a local OTLP/HTTP receiver (tests/support/otlp_receiver.py) that cycles
through up -> down (port closed) -> up -> hung (accepts, never answers), a few seconds
each, while /metrics is scraped every 100 ms. Prints, per phase: the daemon's RSS and
threads, pushes the receiver got, how long the first push took to arrive after the
collector came back (recovery), the daemon's own ok/failed push counts, and the worst
/metrics latency; then a summary (RSS start/end, /metrics p50/p99/max, errors, worst
recovery). tests/test_otlp_flapping.py runs the same engine for ~40 s in CI.

Usage: python -m bench.otlp_soak [--minutes 10] [--phase-seconds 4]
(run as root, under flock /tmp/linnix-kernel.lock, like every bench)
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench.common import header
from tests.kernel_helpers import Daemon, daemon, free_port, proc_status
from tests.support.otlp_receiver import HttpReceiver

PUSH_INTERVAL_MS = 500
PUSH_TIMEOUT_MS = 1000
CYCLE = ("up", "down", "up", "hung")


@dataclass
class Phase:
    kind: str  # up | down | hung
    seconds: float
    received: int = 0  # requests the receiver accepted (up phases)
    # seconds from the receiver's start to the first push it got (up phases; None: none)
    recovery: float | None = None
    rss_kib: int = 0  # daemon RSS at the end of the phase
    threads: int = 0
    ok: float = 0.0  # the daemon's own push counters at the end of the phase
    failed: float = 0.0
    worst_scrape: float = 0.0  # seconds


@dataclass
class Soak:
    phases: list[Phase] = field(default_factory=list)
    scrapes: int = 0
    latencies: list[float] = field(default_factory=list)  # every successful scrape, s
    scrape_failures: list[str] = field(default_factory=list)
    exit_code: int | None = None


class _Scraper:
    """/metrics every 100 ms; keeps the worst latency since the last take()."""

    def __init__(self, d: Daemon, soak: Soak) -> None:
        self.d, self.soak = d, soak
        self.worst = 0.0
        self.last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                m = self.d.metrics()  # asserts 200 and parses
                with self._lock:
                    self.last = m
                    self.soak.scrapes += 1
                    self.soak.latencies.append(time.monotonic() - t)
            except Exception as e:
                self.soak.scrape_failures.append(f"{type(e).__name__}: {e}")
            with self._lock:
                self.worst = max(self.worst, time.monotonic() - t)
            self._stop.wait(0.1)

    def take(self) -> tuple[float, dict[str, float]]:
        with self._lock:
            worst, self.worst = self.worst, 0.0
            return worst, self.last

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def phases(total_seconds: float, phase_seconds: float) -> Iterator[str]:
    """The cycle, ending on an "up" phase so the last recovery is checked too."""
    n = max(int(total_seconds // phase_seconds), 1)
    kinds = list(itertools.islice(itertools.cycle(CYCLE), n))
    if kinds[-1] != "up":
        kinds.append("up")
    yield from kinds


def soak(
    total_seconds: float,
    phase_seconds: float = 4.0,
    report: Callable[[Phase], None] | None = None,
) -> Soak:
    port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_METRIC_EXPORT_INTERVAL": str(PUSH_INTERVAL_MS),
        "OTEL_EXPORTER_OTLP_TIMEOUT": str(PUSH_TIMEOUT_MS),
    }
    out = Soak()
    flags = ("--collect.interval", "500ms", "--no-probes.enabled", "--bpf.read-method", "syscall")
    with daemon(*flags, env=env) as d:
        d.wait_ready()
        scraper = _Scraper(d, out)
        try:
            for kind in phases(total_seconds, phase_seconds):
                rx = None
                recovery = None
                t0 = time.monotonic()
                if kind != "down":
                    rx = HttpReceiver(port, hang=kind == "hung").start()
                if kind == "up":
                    assert rx is not None
                    if rx.wait_for(1, timeout=phase_seconds):
                        recovery = time.monotonic() - t0
                time.sleep(max(0.0, t0 + phase_seconds - time.monotonic()))
                if rx is not None:
                    rx.stop()
                worst, last = scraper.take()
                phase = Phase(
                    kind,
                    time.monotonic() - t0,
                    received=len(rx.requests) if rx is not None else 0,
                    recovery=recovery,
                    rss_kib=proc_status(d.proc.pid, "VmRSS"),
                    threads=proc_status(d.proc.pid, "Threads"),
                    ok=last.get("linnix_exporter_otlp_exports_total{result=ok}", 0.0),
                    failed=last.get("linnix_exporter_otlp_exports_total{result=failed}", 0.0),
                    worst_scrape=worst,
                )
                out.phases.append(phase)
                if report is not None:
                    report(phase)
        finally:
            scraper.stop()
        out.exit_code = d.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--phase-seconds", type=float, default=4)
    args = ap.parse_args()
    print(header(f"python -m bench.otlp_soak --minutes {args.minutes:g}"))
    print(
        f"push every {PUSH_INTERVAL_MS} ms, timeout {PUSH_TIMEOUT_MS} ms; "
        f"phases of {args.phase_seconds:g} s cycling {' -> '.join(CYCLE)}"
    )
    print(f"{'t(s)':>6} {'phase':>5} {'rss MiB':>8} {'threads':>7} {'rx':>4} {'recov s':>7} "
          f"{'ok':>6} {'failed':>6} {'worst scrape ms':>15}")  # fmt: skip
    start = time.monotonic()

    def line(p: Phase) -> None:
        recov = "-" if p.recovery is None else f"{p.recovery:.2f}"
        print(
            f"{time.monotonic() - start:6.0f} {p.kind:>5} {p.rss_kib / 1024:8.1f} "
            f"{p.threads:7d} {p.received:4d} {recov:>7} {p.ok:6.0f} {p.failed:6.0f} "
            f"{p.worst_scrape * 1000:15.1f}",
            flush=True,
        )

    s = soak(args.minutes * 60, args.phase_seconds, line)
    print(summary(s))


def summary(s: Soak) -> str:
    rss = [p.rss_kib for p in s.phases]
    ups = [p for p in s.phases if p.kind == "up"]
    # The first up phase is the first push ever, not a recovery.
    recoveries = [p.recovery for p in ups[1:] if p.recovery is not None]
    lat = sorted(s.latencies) or [0.0]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    return (
        f"RSS start {rss[0] / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, "
        f"end {rss[-1] / 1024:.1f} MiB\n"
        f"/metrics: {s.scrapes} scrapes, {len(s.scrape_failures)} failed; latency p50 "
        f"{pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms\n"
        f"pushes: ok {s.phases[-1].ok:.0f}, failed {s.phases[-1].failed:.0f} (daemon's counters); "
        f"received {sum(p.received for p in s.phases)}\n"
        f"recovery after an outage: {len(recoveries)} of {len(ups) - 1}, median "
        f"{sorted(recoveries)[len(recoveries) // 2] if recoveries else float('nan'):.2f} s, "
        f"worst {max(recoveries, default=float('nan')):.2f} s; exit {s.exit_code}"
    )


if __name__ == "__main__":
    main()
