"""OTLP/HTTP (protobuf) transport on the standard library.

The SDK's own HTTP exporter pulls in `requests` and its dependencies, ~6 MB resident,
which alone breaks the 40 MB memory goal. This exporter keeps everything else standard:
the OpenTelemetry SDK collects, the OTLP package's encoder (`encode_metrics`) builds the
ExportMetricsServiceRequest, and only the POST is ours, on http.client (already loaded
for our HTTP server). It honours the OTEL_EXPORTER_OTLP_* TLS and compression variables.
There are no internal retries: the push loop tries again at the next interval, so a dead
collector costs one timed-out request per interval and nothing queues up.
"""

from __future__ import annotations

import gzip
import http.client
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from linnix_exporter import __version__


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        if env.get(n):
            return env[n]
    return None


def tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """CA bundle and client certificate from the standard OTLP variables."""
    ca = _first(env, "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
    ctx = ssl.create_default_context(cafile=ca)
    cert = _first(
        env,
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    )
    key = _first(env, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class HttpMetricExporter(MetricExporter):
    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        env = os.environ if env is None else env
        u = urllib.parse.urlsplit(endpoint)
        self._https = u.scheme == "https"
        self._host = u.hostname or "localhost"
        self._port = u.port or (443 if self._https else 80)
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._timeout = timeout
        compression = _first(
            env, "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
        )
        self._gzip = (compression or "").lower() == "gzip"
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"linnix-exporter/{__version__}",
            **headers,
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._tls = tls_context(env) if self._https else None
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

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        body = encode_metrics(metrics_data).SerializeToString()
        if self._gzip:
            body = gzip.compress(body)
        conn = self._connection()
        conn.timeout = min(self._timeout, timeout_millis / 1000)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            detail = resp.read(300)
        except (OSError, http.client.HTTPException) as e:
            # Refused, reset, timed out: drop the connection, try afresh next time.
            conn.close()
            self._conn = None
            self.last_error = f"{type(e).__name__}: {e}"
            return MetricExportResult.FAILURE
        if 200 <= resp.status < 300:
            self.last_error = ""
            return MetricExportResult.SUCCESS
        self.last_error = f"HTTP {resp.status} {resp.reason}: {detail.decode('utf-8', 'replace')}"
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
