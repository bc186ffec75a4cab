"""OTLP/HTTP (protobuf) transport on the standard library.

The SDK's own HTTP exporter pulls in `requests` and its dependencies, ~6 MB resident,
which alone breaks the 40 MB memory goal; the SDK's data model and the OTLP package's
protobuf encoder another ~4 MB. The body comes written by otlp_wire.WireEncoder (the
same ExportMetricsServiceRequest) and this POSTs it on http.client (already loaded for
our HTTP server). TLS and compression come resolved from the OTEL_EXPORTER_OTLP_*
variables (config.otlp_settings, which loads the certificates at start-up).
There are no internal retries: the push loop tries again at the next interval, so a dead
collector costs one timed-out request per interval and nothing queues up.
"""

from __future__ import annotations

import gzip
import http.client
import ssl
import urllib.parse
from collections.abc import Mapping

from linnix_exporter import __version__


class HttpMetricExporter:
    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        compress: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        u = urllib.parse.urlsplit(endpoint)
        self._https = u.scheme == "https"
        self._host = u.hostname or "localhost"
        self._port = u.port or (443 if self._https else 80)
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._timeout = timeout
        self._gzip = compress
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"linnix-exporter/{__version__}",
            **headers,
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        # config.otlp_settings gives a context for every https endpoint; the system's
        # CA bundle when built without one.
        self._tls = (tls or ssl.create_default_context()) if self._https else None
        self._conn: http.client.HTTPConnection | None = None
        self.last_error = ""

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def post(self, body: bytes, timeout_seconds: float) -> bool:
        """POST one encoded ExportMetricsServiceRequest; True if the collector took it."""
        if self._gzip:
            body = gzip.compress(body)
        conn = self._connection()
        conn.timeout = min(self._timeout, timeout_seconds)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            detail = resp.read(300)
        except (OSError, http.client.HTTPException) as e:
            # Refused, reset, timed out: drop the connection, try afresh next time.
            conn.close()
            self._conn = None
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        if 200 <= resp.status < 300:
            self.last_error = ""
            return True
        self.last_error = f"HTTP {resp.status} {resp.reason}: {detail.decode('utf-8', 'replace')}"
        return False

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
