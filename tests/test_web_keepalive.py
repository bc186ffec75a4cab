"""Keep-alive scrapes are answered without waiting on Nagle's algorithm.

Prometheus keeps its connection open between scrapes. The handler writes the headers and
the body separately; with Nagle on, the body waits for the client's delayed ACK (~40 ms
on Linux) on every scrape after the first. Measured here on a loopback socket: a scrape
of a small registry takes well under a millisecond of work, so a median of 20 ms or more
can only be that wait."""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Iterator

import pytest
from prometheus_client import Gauge
from prometheus_client.registry import CollectorRegistry

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
