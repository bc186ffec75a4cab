"""HTTP: our own dispatcher in front of the Prometheus encoder.

prometheus_client's bundled server answers /metrics on any path; an exporter needs
/healthz, /readyz and real 404s, so routing is done here and only the encoding is
borrowed (text or OpenMetrics by Accept header, gzip by Accept-Encoding).

With --web.config.file the same server speaks TLS and/or asks for basic auth (see
webconfig.py). The TLS handshake happens in the connection's own thread, never in the
accept loop, so a slow or plain-HTTP client cannot hold up the others.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Hashable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import openmetrics
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import CollectorRegistry

from linnix_exporter import log
from linnix_exporter.kernel.host import name_thread
from linnix_exporter.webconfig import REALM, WebConfig

_log = log.get("web")

LANDING = """<html><head><title>linnix-exporter</title></head><body>
<h1>linnix-exporter</h1><p>What eBPF costs this node.</p>
<ul><li><a href="{path}">{path}</a></li><li><a href="/healthz">/healthz</a></li>
<li><a href="/readyz">/readyz</a></li></ul></body></html>
"""

HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to finish the TLS handshake
_TLS_HANDSHAKE_RECORD = 0x16
# What Go's net/http answers to plain HTTP on a TLS port, so clients see why.
_PLAIN_HTTP_REPLY = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


class BodyCache:
    """One encoded /metrics body per (data version, format, gzip).

    The figures change only when a tick lands (or a push or collect error is counted),
    so every scrape in between gets the same bytes without encoding them again. The lock
    is held while encoding: concurrent scrapes of a new version wait for one encoding
    instead of each doing it (under the GIL they would only take turns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: Hashable = object()
        self._bodies: dict[tuple[str, bool], bytes] = {}

    def get(self, version: Hashable, variant: tuple[str, bool], make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if version != self._version:
                self._version, self._bodies = version, {}
            body = self._bodies.get(variant)
            if body is None:  # an exception propagates and nothing is cached
                body = self._bodies[variant] = make()
            return body


def direct_format(encoder: Callable[..., bytes]) -> bool | None:
    """Which body an `exposition` callable can write in place of `encoder`, the one
    choose_encoder picked: False for the text format, True for OpenMetrics, both with
    the default name escaping (underscores); None for anything else (asked-for escaping
    schemes), which the registry's encoder writes."""
    func, escaping = encoder, openmetrics.exposition.UNDERSCORES
    if isinstance(encoder, functools.partial):
        func, escaping = encoder.func, encoder.keywords.get("escaping", escaping)
    if escaping != openmetrics.exposition.UNDERSCORES:
        return None
    if func is generate_latest:
        return False
    if func is openmetrics.exposition.generate_latest:
        return True
    return None


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        telemetry_path: str | None,
        ready: Callable[[], tuple[bool, str]],
        web_config: WebConfig | None = None,
        version: Callable[[], Hashable] | None = None,
        refresh: Callable[[], object] | None = None,
        exposition: Callable[[bool], bytes] | None = None,
    ) -> None:
        """version: what the registry's figures depend on (e.g. the tick's sequence
        number); when given, bodies are cached per version. None: encode every scrape.
        refresh: called first on every scrape (schedule.Ticker.fresh: on demand, tick if
        the newest tick is stale), so `version` itself stays a side-effect-free getter.
        exposition: writes the registry's body itself (TickCollector.exposition, given
        True for OpenMetrics), byte for byte what the registry's encoder would, faster."""
        host, port = address
        self.tls: ssl.SSLContext | None = web_config.tls if web_config else None
        self.auth = web_config.auth if web_config else None
        # Empty host: all interfaces, IPv6 and IPv4 on one dual-stack socket if we can.
        self.address_family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        self._dual_stack = host == ""
        bind_host = "::" if host == "" else host
        self.registry = registry
        self.telemetry_path = telemetry_path
        self.ready = ready
        self.version = version
        self.refresh = refresh
        self.exposition = exposition
        self.body_cache = BodyCache()
        try:
            super().__init__((bind_host, port), Handler)
        except OSError:
            if host != "":
                raise
            self.address_family = socket.AF_INET  # no IPv6 on this host
            self._dual_stack = False
            super().__init__(("0.0.0.0", port), Handler)
        # socketserver's serve_forever wakes every poll_interval (0.5 s) to look for a
        # shutdown request: ~1 ms of CPU per wake-up on these VMs, the largest part of
        # our idle cost. Here the loop sleeps until a connection arrives or shutdown()
        # writes to this pipe.
        self._wake_r, self._wake_w = os.pipe()
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_until_shutdown(self) -> None:
        """Accept connections until shutdown(); no timeout, no periodic wake-up."""
        name_thread("linnix-http")
        self._stopped.clear()
        self._serving.set()
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self.socket, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    ready = sel.select()
                    if any(key.fd == self._wake_r for key, _ in ready):
                        return
                    self._accept_one()
        finally:
            self._serving.clear()
            self._stopped.set()

    def _accept_one(self) -> None:
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        try:
            self.process_request(request, client_address)  # starts the connection thread
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def wait_serving(self, timeout: float | None = None) -> bool:
        return self._serving.wait(timeout)

    def shutdown(self) -> None:
        """Stop the accept loop and wait for it (connection threads are daemons)."""
        if self._serving.is_set():
            os.write(self._wake_w, b"x")
            self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        # Also called by TCPServer.__init__ when binding fails, before the pipe exists.
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is None:
            return sock, addr
        try:
            # No I/O here: the handshake runs in Handler.setup, in the connection's thread.
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr
        except (OSError, ValueError):
            sock.close()
            raise OSError("cannot wrap connection in TLS") from None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-response is not our error; log it at debug only.
        _log.debug("request failed", client=str(client_address))


class Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = 30  # seconds a slow client may hold a connection thread
    protocol_version = "HTTP/1.1"
    server_version = "linnix-exporter"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client
    # (Prometheus) waits for its own delayed ACK (~40 ms) before the body arrives.
    disable_nagle_algorithm = True
    _rejected = False  # the TLS handshake failed: nothing to serve

    def setup(self) -> None:
        name_thread("linnix-conn")  # one thread per connection (keep-alive: per scraper)
        if isinstance(self.request, ssl.SSLSocket):
            self._rejected = not self._handshake(self.request)
        super().setup()

    def _handshake(self, conn: ssl.SSLSocket) -> bool:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            if self._plain_http(conn):
                _log.debug("plain HTTP on the TLS port", client=str(self.client_address[0]))
                return False
            conn.do_handshake()
            return True
        except (OSError, ValueError) as e:
            _log.debug("TLS handshake failed", client=str(self.client_address[0]), error=str(e))
            return False

    @staticmethod
    def _plain_http(conn: ssl.SSLSocket) -> bool:
        """If the first byte is not a TLS handshake record, answer 400 in plain text
        (an SSLSocket cannot peek before its handshake, so peek on a dup of the fd)."""
        with socket.fromfd(conn.fileno(), conn.family, conn.type) as raw:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            first = raw.recv(1, socket.MSG_PEEK)
            if not first or first[0] == _TLS_HANDSHAKE_RECORD:
                return False
            if not (0x41 <= first[0] <= 0x5A):  # not an HTTP method either: just drop it
                return True
            try:
                raw.sendall(_PLAIN_HTTP_REPLY)
                raw.shutdown(socket.SHUT_WR)
                # Drain what the client sent so closing does not reset the connection
                # (and eat our reply) before the client has read it.
                raw.settimeout(1.0)
                for _ in range(64):
                    if not raw.recv(65536):
                        break
            except OSError:
                pass
            return True

    def handle(self) -> None:
        if not self._rejected:
            super().handle()

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def _not_allowed(self) -> None:
        self.close_connection = True
        body = b"method not allowed\n"
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _route(self, send_body: bool) -> None:
        if self.request_version == "HTTP/0.9":  # "GET /path" alone: no headers, no status
            self.send_error(400, "HTTP/0.9 is not supported")
            return
        auth = self.server.auth
        if auth is not None and not auth.check(self.headers.get("Authorization")):
            # Every path, /healthz and /readyz too, as exporter-toolkit does.
            self._reply(
                401,
                b"unauthorized\n",
                "text/plain; charset=utf-8",
                send_body,
                {"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
            return
        path = self.path.split("?", 1)[0]
        if self.server.telemetry_path is not None and path == self.server.telemetry_path:
            self._metrics(send_body)
        elif path == "/healthz":
            self._reply(200, b"ok\n", "text/plain; charset=utf-8", send_body)
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._reply(
                200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8", send_body
            )
        elif path == "/":
            page = LANDING.format(path=self.server.telemetry_path or "/healthz").encode()
            self._reply(200, page, "text/html; charset=utf-8", send_body)
        else:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8", send_body)

    def _metrics(self, send_body: bool) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        zipped = "gzip" in self.headers.get("Accept-Encoding", "")

        def make() -> bytes:
            write = self.server.exposition
            direct = direct_format(encoder) if write is not None else None
            if write is None or direct is None:
                body: bytes = encoder(self.server.registry)
            else:
                body = write(direct)
            return gzip.compress(body, compresslevel=1) if zipped else body

        try:
            if self.server.refresh is not None:
                self.server.refresh()
            if self.server.version is None:
                body = make()
            else:
                body = self.server.body_cache.get(
                    self.server.version(), (content_type, zipped), make
                )
        except Exception as e:  # a broken collector must not kill the connection thread
            _log.error("encoding metrics failed", error=f"{type(e).__name__}: {e}")
            self._reply(500, b"internal error\n", "text/plain; charset=utf-8", send_body)
            return
        extra = {"Content-Encoding": "gzip"} if zipped else {}
        self._reply(200, body, content_type, send_body, extra)

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        send_body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Covers 400/405/414/501 from the base class: short plain-text bodies, and the
        # connection closes so a malformed client cannot pipeline more garbage.
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # http.server's default before it has parsed a version: it would answer with
            # a bare body. Every HTTP/1.x client (and Go's exporters) expects a status line.
            self.request_version = "HTTP/1.0"
        body = f"{code} {message or ''}\n".encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("http", client=self.client_address[0], request=format % args)


def serve(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_until_shutdown, name="http", daemon=True)
    thread.start()
    server.wait_serving()  # a shutdown() right after serve() must not miss the loop
    return thread
