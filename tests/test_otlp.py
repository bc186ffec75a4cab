"""OTLP push against real receivers, with the daemon's real probes loaded."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linnix_exporter import __version__
from linnix_exporter.collectors import hooks
from linnix_exporter.figures import FAMILIES
from tests.kernel_helpers import Daemon, bpftool_progs, daemon, forks, free_port
from tests.support import trivial_prog
from tests.support.certs import self_signed
from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver, points, resource

pytestmark = pytest.mark.kernel

CUMULATIVE = 2  # AGGREGATION_TEMPORALITY_CUMULATIVE in the OTLP proto
RSS_GOAL = 40 * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


def maps_has(pid: int, needle: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return needle in f.read()


class Scraper:
    """Scrapes /metrics continuously, keeping one scrape per tick (by collections_total)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.by_tick: dict[float, dict[str, float]] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                m = self.d.metrics()
                self.by_tick.setdefault(m["linnix_exporter_collections_total{}"], m)
            except Exception:
                self.failures += 1
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


@pytest.fixture(scope="module")
def early_program() -> Iterator[int]:
    """A program loaded well before the daemon starts; yields its id."""
    fd = trivial_prog.load("lnx_otlp_early")
    try:
        (prog_id,) = [i for i, p in bpftool_progs().items() if p.get("name") == "lnx_otlp_early"]
        time.sleep(1.5)  # python's start-up alone would not tell the two starts apart
        yield prog_id
    finally:
        os.close(fd)


# Values URL-encoded as the spec says: the receiver must see them decoded.
HEADERS = "x-tenant=team%20a,authorization=Bearer%20abc%3D"
HEADERS_SEEN = {"x-tenant": "team a", "authorization": "Bearer abc="}


@pytest.fixture(scope="module")
def http_run(early_program: int) -> Iterator[tuple[Daemon, HttpReceiver, Scraper]]:
    rx = HttpReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_EXPORTER_OTLP_HEADERS": HEADERS,
    }
    # Every program listed: the early program never runs, and on a node with many busy
    # programs it would fall outside the default top 50 and send no points.
    with daemon(
        "--collect.interval", "1s", "--node.name", "node-a", "--bpf.top-programs", "100000",
        env=env,
    ) as d:  # fmt: skip
        d.wait_ready()
        scraper = Scraper(d)
        forks(100)
        rx.wait_for(5, timeout=30)
        scraper.stop()
        yield d, rx, scraper
        assert d.stop() == 0
    rx.stop()


def test_resource_attributes(http_run: tuple[Daemon, HttpReceiver, Scraper]) -> None:
    d, rx, _ = http_run
    res = resource(rx.requests[-1])
    assert res["service.name"] == "linnix-exporter"
    assert res["service.version"] == __version__
    assert res["host.name"] == socket.gethostname()
    assert res["process.pid"] == d.proc.pid
    assert res["k8s.node.name"] == "node-a"


def test_names_units_and_temporality(http_run: tuple[Daemon, HttpReceiver, Scraper]) -> None:
    _, rx, _ = http_run
    seen: dict[str, object] = {}
    for req in rx.requests:
        for name, pts in points(req).items():
            seen[name] = pts[0][2]
    # The daemon runs the default collectors (the memory test above measures that daemon):
    # the hooks collector is off by default, so its families are not pushed here.
    off = {f.otel for f in hooks.FAMILIES}
    off.add(FAMILIES["linnix_bpf_owner_hook_seconds_total"].otel)  # owners' hook seconds
    expected = {f.otel for f in FAMILIES.values() if f.otel} - off
    assert expected <= set(seen), expected - set(seen)
    assert not off & set(seen)
    for f in FAMILIES.values():
        if f.otel is None or f.otel in off:
            continue
        m = seen[f.otel]
        assert m.unit == f.unit, f.otel  # type: ignore[attr-defined]
        assert "_total" not in f.otel
        if f.kind == "histogram":
            assert m.histogram.aggregation_temporality == CUMULATIVE  # type: ignore[attr-defined]
        if f.kind == "counter":
            assert m.sum.is_monotonic, f.otel  # type: ignore[attr-defined]
            assert m.sum.aggregation_temporality == CUMULATIVE  # type: ignore[attr-defined]
    modes = {a["cpu.mode"] for a, _, _ in points(rx.requests[-1])["process.cpu.time"]}
    assert modes == {"user", "system"}
    progs = points(rx.requests[-1])["linnix.bpf.program.run_time"]
    ours = [a["bpf.program.name"] for a, _, _ in progs if a["linnix.ours"] == "true"]
    # The probes, and the stats and owners iterators.
    assert sorted(ours) == [
        "linnix_exec",
        "linnix_exit",
        "linnix_fork",
        "linnix_free",
        "linnix_owners",
        "linnix_progstat",
    ]


def test_counters_monotonic_across_pushes(http_run: tuple[Daemon, HttpReceiver, Scraper]) -> None:
    _, rx, _ = http_run
    for name in (
        "linnix.process.forks",
        "linnix.probes.run_time",
        "linnix.bpf.run_time",
        "linnix.exporter.collections",
    ):
        values = [points(r)[name][0][1] for r in rx.requests if name in points(r)]
        assert len(values) >= 4, name
        assert values == sorted(values), (name, values)
    seq = [points(r)["linnix.exporter.collections"][0][1] for r in rx.requests]
    assert seq[-1] > seq[0]


def test_push_equals_scrape_for_the_same_tick(
    http_run: tuple[Daemon, HttpReceiver, Scraper],
) -> None:
    _, rx, scraper = http_run
    pairs = {
        "linnix.overhead.ratio": "linnix_overhead_ratio{}",
        "linnix.overhead.budget": "linnix_overhead_budget_ratio{}",
        "linnix.probes.run_time": "linnix_probes_run_time_seconds_total{}",
        "linnix.process.forks": "linnix_process_forks_total{}",
        "linnix.bpf.run_time": "linnix_bpf_run_time_seconds_total{}",
        "process.memory.usage": "linnix_exporter_resident_memory_bytes{}",
    }
    matched = 0
    for req in rx.requests:
        p = points(req)
        tick = p["linnix.exporter.collections"][0][1]
        scrape = scraper.by_tick.get(tick)
        if scrape is None or "linnix.overhead.ratio" not in p:
            continue
        matched += 1
        for otel, prom in pairs.items():
            assert p[otel][0][1] == scrape[prom], (otel, tick)
        user = next(v for a, v, _ in p["process.cpu.time"] if a["cpu.mode"] == "user")
        assert user == scrape["linnix_exporter_cpu_seconds_total{mode=user}"]
        for attrs, v, _ in p["linnix.bpf.program.run_time"]:
            key = ",".join(
                f"{k}={attrs['bpf.program.' + k] if k != 'ours' else attrs['linnix.ours']}"
                for k in ("id", "name", "ours", "tag", "type")
            )
            assert scrape[f"linnix_bpf_program_run_time_seconds_total{{{key}}}"] == v
        hist = p["linnix.process.lifetime"][0][2].histogram.data_points[0]
        assert hist.count == scrape["linnix_process_lifetime_seconds_count{}"]
        assert hist.sum == scrape["linnix_process_lifetime_seconds_sum{}"]
        assert sum(hist.bucket_counts) == hist.count
        cums = itertools.accumulate(hist.bucket_counts)  # one more: the +Inf bucket
        for bound, cum in zip(hist.explicit_bounds, cums, strict=False):
            assert scrape[f"linnix_process_lifetime_seconds_bucket{{le={bound!r}}}"] == cum
        # Points carry the tick's own time, not the push's.
        stamp = p["linnix.overhead.ratio"][0][2].gauge.data_points[0].time_unix_nano
        assert stamp == int(scrape["linnix_exporter_last_collect_timestamp_seconds{}"] * 1e9)
    assert matched >= 2, f"only {matched} pushes matched a scraped tick"
    assert scraper.failures == 0


def test_headers_reach_the_http_receiver(http_run: tuple[Daemon, HttpReceiver, Scraper]) -> None:
    _, rx, _ = http_run
    assert rx.headers_seen
    for seen in rx.headers_seen:
        lower = {k.lower(): v for k, v in seen.items()}
        assert {k: lower.get(k) for k in HEADERS_SEEN} == HEADERS_SEEN


def test_program_counters_start_at_their_load_time(
    http_run: tuple[Daemon, HttpReceiver, Scraper], early_program: int
) -> None:
    """A program loaded before the exporter has counted since its load: its cumulative
    points start then, not at the exporter's start (a receiver would otherwise read the
    run time it had before as spent after our start). Oracle: bpftool's loaded_at, whole
    seconds of wall time (bpftool truncates: the load lies in [loaded_at, loaded_at + 1))."""
    _, rx, _ = http_run
    loaded_at = bpftool_progs()[early_program]["loaded_at"]
    starts: set[int] = set()
    exporter_starts: set[int] = set()
    for req in rx.requests:
        p = points(req)
        for name in ("linnix.bpf.program.run_time", "linnix.bpf.program.runs"):
            metric = p[name][0][2]
            for dp in metric.sum.data_points:
                ids = [a.value.string_value for a in dp.attributes if a.key == "bpf.program.id"]
                if ids == [str(early_program)]:
                    starts.add(dp.start_time_unix_nano)
        coll = p["linnix.exporter.collections"][0][2].sum.data_points[0]
        exporter_starts.add(coll.start_time_unix_nano)
    (start,) = starts  # one start for the series, the same in every push
    (exporter_start,) = exporter_starts
    # 10 ms either side: bpftool and we each convert boottime to wall time at our own
    # moment (two clock reads apart); the 1 s truncation is the real width here.
    assert loaded_at - 0.01 <= start / 1e9 < loaded_at + 1.01, (start / 1e9, loaded_at)
    assert exporter_start - start > 1e9  # loaded 1.5 s before the exporter began


def test_http_push_does_not_load_grpc_and_fits_memory(
    http_run: tuple[Daemon, HttpReceiver, Scraper],
) -> None:
    d, _, _ = http_run
    assert not maps_has(d.proc.pid, "cygrpc")
    assert rss(d.proc.pid) <= RSS_GOAL, f"{rss(d.proc.pid) / 2**20:.1f} MiB"


def test_grpc_push() -> None:
    rx = GrpcReceiver().start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_SERVICE_NAME": "my-node-agent",
    }
    try:
        with daemon("--collect.interval", "500ms", "--no-probes.enabled", env=env) as d:
            d.wait_ready()
            reqs = rx.wait_for(3, timeout=30)
            assert len(reqs) >= 3
            assert resource(reqs[-1])["service.name"] == "my-node-agent"
            assert "linnix.bpf.stats.enabled" in points(reqs[-1])
            assert maps_has(d.proc.pid, "cygrpc")
            print(f"RSS with gRPC push: {rss(d.proc.pid) / 2**20:.1f} MiB")
            assert d.stop() == 0
    finally:
        rx.stop()


def grpc_env(rx: GrpcReceiver, ca: Path) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{rx.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca),
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_HEADERS": HEADERS,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


def test_grpc_push_with_tls_gzip_and_headers(tmp_path: Path) -> None:
    """gRPC over TLS verified against the self-signed CA given in the environment, gzip
    compressed and with the headers as metadata. A receiver that refuses gzip shows the
    compression is real: the same pushes fail there and none is accepted."""
    certs = self_signed(tmp_path)
    tls = ((certs / "server.crt").read_bytes(), (certs / "server.key").read_bytes())
    rx = GrpcReceiver(tls=tls).start()
    try:
        with daemon("--collect.interval", "500ms", "--no-probes.enabled",
                    env=grpc_env(rx, certs / "server.crt")) as d:  # fmt: skip
            d.wait_ready()
            reqs = rx.wait_for(2, timeout=30)
            assert len(reqs) >= 2 and "linnix.bpf.stats.enabled" in points(reqs[-1])
            for md in rx.metadata_seen:
                assert {k: md.get(k) for k in HEADERS_SEEN} == HEADERS_SEEN
            assert d.metrics()["linnix_exporter_otlp_exports_total{result=failed}"] == 0
            assert d.stop() == 0
    finally:
        rx.stop()
    plain = GrpcReceiver(tls=tls, gzip=False).start()
    try:
        with daemon("--collect.interval", "500ms", "--no-probes.enabled",
                    env=grpc_env(plain, certs / "server.crt")) as d:  # fmt: skip
            d.wait_ready()
            deadline = time.monotonic() + 30
            # .get: the push series appear once the sink is up, just after /readyz.
            while d.metrics().get("linnix_exporter_otlp_exports_total{result=failed}", 0) < 2:
                assert time.monotonic() < deadline, "pushes to a no-gzip receiver did not fail"
                time.sleep(0.2)
            assert plain.requests == []
            assert d.metrics()["linnix_exporter_otlp_exports_total{result=ok}"] == 0
            assert d.stop() == 0
    finally:
        plain.stop()


def _log_events(d: Daemon) -> list[str]:
    import json

    assert d.proc.stderr is not None
    return [json.loads(line)["event"] for line in d.proc.stderr.read().splitlines()]


def test_collector_down_killed_restarted() -> None:
    port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
    }
    with daemon("--collect.interval", "500ms", "--no-probes.enabled", env=env) as d:
        d.wait_ready()
        for _ in range(10):  # collector down from the start: /metrics answers
            d.metrics()
            time.sleep(0.1)
        rx = HttpReceiver(port).start()
        assert len(rx.wait_for(2, timeout=30)) >= 2
        before = rss(d.proc.pid)
        rx.stop()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:  # killed mid-run: /metrics still answers
            d.metrics()
            time.sleep(0.1)
        grown = rss(d.proc.pid) - before
        rx2 = HttpReceiver(port).start()
        try:
            assert len(rx2.wait_for(2, timeout=30)) >= 2  # resumed by itself
            assert grown < 4 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB while down"
            # The push self-metrics against the receivers' own count of requests: a push
            # the receiver has logged may not be counted yet (its reply is in flight).
            received_before = len(rx.requests) + len(rx2.requests)
            m = d.metrics()
            received_after = len(rx.requests) + len(rx2.requests)
            ok = m["linnix_exporter_otlp_exports_total{result=ok}"]
            assert received_before - 1 <= ok <= received_after
            assert m["linnix_exporter_otlp_exports_total{result=failed}"] >= 5  # ~2 s down x2
            last_ok = m["linnix_exporter_otlp_last_success_timestamp_seconds{}"]
            assert time.time() - 5 < last_ok <= time.time()
            assert d.stop() == 0  # before the receiver goes: no third outage
        finally:
            rx2.stop()
        events = _log_events(d)
    # Logged once per state change, not once per failed push (there were ~15).
    assert events.count("otlp export failing") == 2
    assert events.count("otlp export ok") == 2


def test_hanging_collector_never_stalls_metrics() -> None:
    rx = HttpReceiver(hang=True).start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
    }
    try:
        with daemon("--collect.interval", "500ms", "--no-probes.enabled", env=env) as d:
            d.wait_ready()
            worst = 0.0
            for _ in range(20):
                t = time.monotonic()
                d.metrics()
                worst = max(worst, time.monotonic() - t)
                time.sleep(0.1)
            assert worst < 1.0, f"a scrape took {worst:.2f} s while the collector hung"
            t = time.monotonic()
            assert d.stop() == 0
            assert time.monotonic() - t < 10  # shutdown waits at most one push timeout
    finally:
        rx.stop()


def test_https_push_with_ca_and_gzip(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_CERTIFICATE and _COMPRESSION, resolved at start-up by the
    config, reach the HTTP transport: the push is verified against that CA only (the
    certificate is self-signed, unknown to the system bundle) and gzip-encoded."""
    certs = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    rx = HttpReceiver(tls=server_ctx).start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://127.0.0.1:{rx.port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs / "server.crt"),
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    try:
        with daemon("--collect.interval", "500ms", "--no-probes.enabled", env=env) as d:
            d.wait_ready()
            reqs = rx.wait_for(2, timeout=30)
            assert "linnix.bpf.stats.enabled" in points(reqs[-1])
            assert all(h.get("Content-Encoding") == "gzip" for h in rx.headers_seen)
            assert d.metrics()["linnix_exporter_otlp_exports_total{result=failed}"] == 0
            assert d.stop() == 0
    finally:
        rx.stop()
