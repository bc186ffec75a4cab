"""The HTTP server under abuse, on the real daemon: >= 10,000 malformed or oversized
requests over raw sockets, then slow clients (slowloris), while a scraper keeps reading
/metrics. Every scrape must answer 200 within a second and parse with prometheus_client's
text parser; the daemon must live, its RSS and thread count (/proc/PID/status) must come
back to what they were, and afterwards it must still serve fresh ticks in every format.
Probes are off: they play no part in HTTP. Runtime ~20 s."""

from __future__ import annotations

import contextlib
import gzip
import random
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.kernel_helpers import Daemon, bpftool_progs, daemon, proc_status

pytestmark = pytest.mark.kernel

MALFORMED_REQUESTS = 10_000  # the floor; well-formed odd ones come on top
SLOW_CLIENTS = 200
SCRAPE_LATENCY_MAX = 1.0  # seconds
RSS_GROWTH_MAX = 16 * 1024 * 1024  # the fuzz holds nothing; 16 MiB is allocator slack
# Every answer to garbage is a client error; 100/200/404/405 for well-formed odd requests.
ALLOWED = {100, 200, 400, 404, 405, 408, 413, 414, 431, 501, 505}
# A TLS 1.2 ClientHello's first bytes: a handshake record on a plain HTTP port.
CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01"


# ---- payloads ------------------------------------------------------------------------------


def _junk(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def _token(rng: random.Random) -> str:
    return "".join(rng.choice("abcXYZ09-_.~%/?&=;:") for _ in range(rng.randint(1, 30)))


METHODS = ["FOO", "get", "G E T", "GET\x00", "PRI", "BREW", "M" * 5000]
VERSIONS = [
    "HTTP/9.9",
    "HTTP/1.x",
    "HTTP/0.9",
    "HTTP/",
    "HTCPCP/1.0",
    "HTTP/1.1.1",
    "HTTP/1" + "1" * 30 + ".1",
]
LENGTHS = ["99999999999999999999", "-1", "abc", "1e9", "4294967296"]
ENCODINGS = ["gzip", "gzip;q=0", "br, deflate", "x" * 3000]
ACCEPTS = [
    "application/openmetrics-text; version=999.0",
    "application/openmetrics-text; version=1.0.0; charset=ebcdic",
    "text/plain; version=0.0.4; q=abc",
    "*/*;q=",
    ";;;,,,",
    "application/openmetrics-text" + ";q=0.5" * 500,
    "\u00e9\u00e8".encode().decode("latin-1"),
    "",
]


def payloads(rng: random.Random) -> list[tuple[bool, Callable[[], bytes]]]:
    """Generators of one request each: (malformed or oversized, generator). The
    well-formed ones (odd headers, HEAD, HTTP/1.0, absolute URI, pipelining) keep the
    fuzz honest: they must get real answers, not just errors."""
    end = "\r\n\r\n"
    r = rng.randint

    def odd_metrics() -> bytes:  # /metrics with a junk query and odd Accept headers
        return (
            f"GET /metrics?{_token(rng)}&{_token(rng)}=%zz%00 HTTP/1.1\r\n"
            f"Accept: {rng.choice(ACCEPTS)}\r\nAccept-Encoding: {rng.choice(ENCODINGS)}{end}"
        ).encode("latin-1")

    def many_headers() -> bytes:
        headers = "".join(f"X-{i}: v\r\n" for i in range(r(90, 400)))
        return f"GET /metrics HTTP/1.1\r\n{headers}\r\n".encode()

    return [
        (True, lambda: _junk(rng, r(1, 200)) + end.encode()),  # garbage request line
        (True, lambda: f"{_token(rng)} {_token(rng)} {_token(rng)}{end}".encode()),
        (True, lambda: f"GET /metrics HTTP/1.1\r\nX-Big: {'a' * r(65_000, 200_000)}{end}".encode()),
        (True, lambda: f"GET /metrics?{'q' * r(65_000, 300_000)} HTTP/1.1{end}".encode()),
        (True, lambda: f"{rng.choice(METHODS)} /metrics HTTP/1.1{end}".encode("latin-1")),
        (True, lambda: f"GET /metrics {rng.choice(VERSIONS)}{end}".encode()),
        (True, lambda: b"GET /metrics HTTP/1.1\r\nHost: x\r\nAcc"[: r(1, 33)]),  # truncated
        (True, lambda: _junk(rng, r(1, 4096))),  # binary junk
        (True, many_headers),
        (
            True,
            lambda: f"GET /metrics HTTP/1.1\r\nContent-Length: {rng.choice(LENGTHS)}{end}".encode(),
        ),
        (
            True,
            lambda: f"POST /metrics HTTP/1.1\r\nContent-Length: {10 ** r(6, 30)}{end}xx".encode(),
        ),
        (True, lambda: CLIENT_HELLO + _junk(rng, r(0, 300))),  # TLS-looking bytes
        (True, lambda: b"GET /metrics HTTP/1.1\r\nNoColonHere\r\n folded: continuation\r\n\r\n"),
        (True, lambda: b"GET /\xff\xfe\x00metrics HTTP/1.1\r\nHost: \xc3\x28\r\n\r\n"),
        (True, lambda: b"\r\n" * r(1, 5000)),
        (True, lambda: b"GET " + b"/" * r(1, 60_000) + b" HTTP/1.1\r\n\r\n"),
        (False, lambda: b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * r(2, 60) + _junk(rng, 20)),
        (False, odd_metrics),
        (False, lambda: b"HEAD /metrics HTTP/1.0\r\n\r\n"),
        (
            False,
            lambda: b"GET http://evil.example/metrics HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ),
    ]


def send_one(port: int, payload: bytes) -> tuple[int | None, bool]:
    """Send, half-close, read the answer: (status code or None for no answer, whether
    the answer had an HTTP/1.x status line)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything: fine
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in head and b"\n" not in head and len(head) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
    if not head:
        return None, True
    first = head.split(b"\n", 1)[0].split()
    if first[0] in (b"HTTP/1.0", b"HTTP/1.1"):
        return int(first[1]), True
    # No status line: an HTTP/0.9 answer, body only (our error bodies start with the code).
    return (int(first[0]) if first[0].isdigit() else None), False


# ---- scraping alongside --------------------------------------------------------------------


class Scraper:
    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                code, body, _ = self.d.get("/metrics")
                families = {f.name for f in text_string_to_metric_families(body)}
                if code != 200 or "linnix_bpf_programs" not in families:
                    self.failures.append(f"status {code}, families {len(families)}")
            except Exception as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.latencies.append(time.monotonic() - t)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()

    def check(self) -> None:
        assert not self.failures, self.failures[:5]
        assert len(self.latencies) >= 5
        worst = max(self.latencies)
        assert worst < SCRAPE_LATENCY_MAX, f"a scrape took {worst:.2f} s"


@pytest.fixture(scope="module")
def running() -> Iterator[Daemon]:
    with daemon(
        "--no-probes.enabled", "--bpf.read-method", "syscall", "--collect.interval", "1s"
    ) as d:
        d.wait_ready()
        d.metrics()  # warm: first scrape imports and allocates what every later one uses
        yield d
        assert d.proc.poll() is None, "daemon died"
        assert d.stop(signal.SIGTERM) == 0


def settle_threads(pid: int, target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (n := proc_status(pid, "Threads")) > target and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def assert_serves_correctly(d: Daemon) -> None:
    """/metrics still right: a fresh tick (the collection loop lives), in text,
    OpenMetrics and gzip, and its program count is bpftool's (retried: a program may
    come or go between the two reads)."""
    before = d.metrics()["linnix_exporter_collections_total{}"]
    for attempt in range(3):
        expected = len(bpftool_progs())
        m = d.wait_tick(before)
        before = m["linnix_exporter_collections_total{}"]
        if m["linnix_bpf_programs{}"] == expected and len(bpftool_progs()) == expected:
            break
        assert attempt < 2, (m["linnix_bpf_programs{}"], expected)
    req = urllib.request.Request(
        d.url + "/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        body = gzip.decompress(r.read()).decode()
    assert body.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(body)}  # type: ignore[no-untyped-call]
    assert {"linnix_bpf_programs", "linnix_exporter_collections"} <= names, sorted(names)


def test_fuzz_requests(running: Daemon) -> None:
    pid = running.proc.pid
    threads0, rss0 = proc_status(pid, "Threads"), proc_status(pid, "VmRSS") * 1024
    rng = random.Random(7)
    gens = payloads(rng)
    # Built up front (one rng, one thread) so a failure reproduces from the seed.
    work: list[bytes] = []
    malformed = 0
    while malformed < MALFORMED_REQUESTS:
        bad, gen = gens[len(work) % len(gens)]
        work.append(gen())
        malformed += bad
    rng.shuffle(work)
    scraper = Scraper(running)
    codes: Counter[int | None] = Counter()
    unframed = 0  # answers without a status line: no HTTP/1.x client can read them
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            for code, framed in pool.map(lambda p: send_one(running.port, p), work):
                codes[code] += 1
                unframed += not framed
    finally:
        scraper.stop()
    elapsed = time.monotonic() - t0
    print(f"{len(work)} requests ({malformed} malformed) in {elapsed:.1f} s: {dict(codes)}")
    assert running.proc.poll() is None, "daemon died"
    assert sum(codes.values()) == len(work)
    assert unframed == 0, f"{unframed} answers without a status line"
    assert set(codes) - {None} <= ALLOWED, codes
    # The fuzz reached the parser (errors) and past it (real answers to the odd ones).
    assert codes[400] > 1000 and codes[200] > 1000, codes
    scraper.check()
    # Connection threads end with their connections: back to the idle count.
    assert settle_threads(pid, threads0, 10) <= threads0
    assert proc_status(pid, "VmRSS") * 1024 - rss0 < RSS_GROWTH_MAX
    assert_serves_correctly(running)


# Malformed request lines that http.server answers "HTTP/0.9 style" (body, no status
# line) unless the handler says otherwise; Go's net/http (every other exporter) answers
# them with "HTTP/1.1 400 Bad Request".
NO_VERSION_REQUESTS = [
    pytest.param(CLIENT_HELLO, id="tls-client-hello"),
    pytest.param(b"GET /metrics HTTP/9.9\r\n\r\n", id="version-9.9"),
    pytest.param(b"GET /metrics HTTP/1.x\r\n\r\n", id="version-1.x"),
    pytest.param(b"GARBAGE\r\n\r\n", id="one-word"),
    pytest.param(b"a b c d\r\n\r\n", id="four-words"),
    pytest.param(b"GET /metrics\r\n\r\n", id="http-0.9"),  # refused, not served bare
]


@pytest.mark.parametrize("payload", NO_VERSION_REQUESTS)
def test_error_answers_have_a_status_line(running: Daemon, payload: bytes) -> None:
    """An error answer an HTTP/1.x client can read: status line first, 4xx/5xx."""
    code, framed = send_one(running.port, payload)
    assert framed, f"answer without a status line (code {code}) to {payload[:40]!r}"
    assert code is not None and 400 <= code < 600, code


def _slow_client(port: int, stop: threading.Event, opened: list[socket.socket]) -> None:
    """Headers a byte at a time, never finished."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    opened.append(s)
    data = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    for b in data:
        if stop.wait(0.5):
            return
        try:
            s.send(bytes([b]))
        except OSError:
            return


def test_slowloris_does_not_block_scrapes_or_grow_threads(running: Daemon) -> None:
    pid = running.proc.pid
    threads0 = proc_status(pid, "Threads")
    stop = threading.Event()
    opened: list[socket.socket] = []
    # Half of them send a byte every 0.5 s; the other half connect and say nothing.
    clients = [
        threading.Thread(target=_slow_client, args=(running.port, stop, opened), daemon=True)
        for _ in range(SLOW_CLIENTS // 2)
    ]
    for c in clients:
        c.start()
    silent = [
        socket.create_connection(("127.0.0.1", running.port)) for _ in range(SLOW_CLIENTS // 2)
    ]
    time.sleep(1)
    scraper = Scraper(running)
    try:
        peak = threads0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            peak = max(peak, proc_status(pid, "Threads"))
            time.sleep(0.2)
    finally:
        scraper.stop()
        stop.set()
        for c in clients:
            c.join()
        for s in opened + silent:
            s.close()
    print(f"threads: idle {threads0}, peak under {SLOW_CLIENTS} slow clients {peak}")
    scraper.check()
    assert running.proc.poll() is None
    assert settle_threads(pid, threads0, 10) <= threads0
    # One thread per connection is the server's design (as one goroutine per connection
    # is Go's): never more than that, and all of them gone with their connections.
    assert SLOW_CLIENTS // 2 <= peak - threads0 <= SLOW_CLIENTS + 2, (peak, threads0)
    assert_serves_correctly(running)
