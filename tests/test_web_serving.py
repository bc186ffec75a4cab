"""Serving /metrics: keep-alive scrapes without Nagle's wait, one encoding per version.

Prometheus keeps its connection open between scrapes. The handler writes the headers and
the body separately; with Nagle on, the body waits for the client's delayed ACK (~40 ms
on Linux) on every scrape after the first. Measured here on a loopback socket: a scrape
of a small registry takes well under a millisecond of work, so a median of 20 ms or more
can only be that wait."""

from __future__ import annotations

import gzip
import http.client
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from linnix_exporter.web import Server, serve


@pytest.fixture
def server() -> Iterator[Server]:
    registry = CollectorRegistry(auto_describe=False)
    Gauge("linnix_keepalive_test", "test gauge", registry=registry).set(1)
    s = Server(("127.0.0.1", 0), registry, "/metrics", lambda: (True, "ready"), None)
    serve(s)
    yield s
    s.shutdown()
    s.server_close()


def test_keepalive_scrapes_do_not_wait_for_delayed_ack(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    times = []
    try:
        for _ in range(30):
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            body = r.read()
            times.append(time.perf_counter() - t0)
            assert r.status == 200 and b"linnix_keepalive_test 1.0" in body
            assert not r.will_close  # one connection throughout
    finally:
        conn.close()
    median = statistics.median(times[1:])
    print(f"keep-alive scrape median {median * 1000:.2f} ms")
    assert median < 0.020


class CountingCollector(Collector):
    """Counts how often the registry is asked for its figures (one per encoding)."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        g = GaugeMetricFamily("linnix_cache_test", "encodings so far")
        g.add_metric([], self.calls)
        yield g


def scrape(port: int, gzip_ok: bool = False) -> bytes:
    headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers)
        r = conn.getresponse()
        assert r.status == 200
        assert (r.getheader("Content-Encoding") == "gzip") == gzip_ok
        body = r.read()
    finally:
        conn.close()
    return gzip.decompress(body) if gzip_ok else body


def test_one_encoding_per_version() -> None:
    counter = CountingCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(counter)
    version = [1]
    s = Server(("127.0.0.1", 0), registry, "/metrics", lambda: (True, "ready"), None,
               version=lambda: version[0])  # fmt: skip
    serve(s)
    try:
        first = scrape(s.port)
        assert b"linnix_cache_test 1.0" in first
        # Concurrent and sequential scrapes of one version: the bytes of that encoding.
        with ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: scrape(s.port), range(20)))
        assert set(bodies) == {first} and counter.calls == 1
        # gzip is another variant of the same version: encoded once, same figures inside.
        assert b"linnix_cache_test 2.0" in scrape(s.port, gzip_ok=True)
        assert b"linnix_cache_test 2.0" in scrape(s.port, gzip_ok=True)
        assert counter.calls == 2
        version[0] = 2  # a new tick
        assert b"linnix_cache_test 3.0" in scrape(s.port)
        assert counter.calls == 3
    finally:
        s.shutdown()
        s.server_close()


def test_no_version_encodes_every_scrape() -> None:
    counter = CountingCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(counter)
    s = Server(("127.0.0.1", 0), registry, "/metrics", lambda: (True, "ready"), None)
    serve(s)
    try:
        assert b"linnix_cache_test 1.0" in scrape(s.port)
        assert b"linnix_cache_test 2.0" in scrape(s.port)
    finally:
        s.shutdown()
        s.server_close()


def _voluntary_switches(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt_switches:"))


def test_accept_loop_sleeps_until_a_connection_or_shutdown() -> None:
    """socketserver's serve_forever woke every 0.5 s to poll for shutdown (~1 ms of CPU
    per wake-up here). Ours sleeps in select() without a timeout: an idle second costs
    no wake-up at all, a connection costs one, and shutdown() still returns at once."""
    registry = CollectorRegistry(auto_describe=False)
    s = Server(("127.0.0.1", 0), registry, "/metrics", lambda: (True, "ready"), None)
    thread = serve(s)
    try:
        tid = thread.native_id
        assert tid is not None
        time.sleep(0.2)
        idle0 = _voluntary_switches(tid)
        time.sleep(1.6)  # three poll intervals of the old loop
        assert _voluntary_switches(tid) == idle0
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
        time.sleep(0.1)
        # Woke for the connection: select, then starting its thread waits for the new
        # thread to signal it started (and may wait for the GIL): a handful, not a loop.
        assert 1 <= _voluntary_switches(tid) - idle0 <= 8
    finally:
        started = time.monotonic()
        s.shutdown()
        s.server_close()
    assert time.monotonic() - started < 0.5
    thread.join(1)
    assert not thread.is_alive()
