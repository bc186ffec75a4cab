"""Real OTLP receivers for tests: gRPC (grpcio + the opentelemetry-proto MetricsService)
and HTTP/protobuf (a plain HTTP server decoding ExportMetricsServiceRequest). Both keep
every request they accept, decoded, and can be stopped and started again on the same
port to play a collector that goes away and comes back."""

from __future__ import annotations

import gzip
import ssl
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as pb_grpc

Request = pb.ExportMetricsServiceRequest


class _Store:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def add(self, req: Request) -> None:
        with self.arrived:
            self.requests.append(req)
            self.arrived.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[Request]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)


class GrpcReceiver(_Store):
    """`tls`: (certificate PEM, key PEM) to serve TLS; `gzip=False` leaves only identity
    among the accepted encodings, so a compressed request is refused (UNIMPLEMENTED):
    the way to tell that a client really compressed."""

    def __init__(
        self, port: int = 0, tls: tuple[bytes, bytes] | None = None, gzip: bool = True
    ) -> None:
        super().__init__()
        self.port = port
        self.tls = tls
        self.gzip = gzip
        self.metadata_seen: list[dict[str, str]] = []
        self._server: Any = None

    def start(self) -> GrpcReceiver:
        store = self

        class Servicer(pb_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Request, context: Any) -> Any:
                store.metadata_seen.append(dict(context.invocation_metadata()))
                store.add(request)
                return pb.ExportMetricsServiceResponse()

        # Bit 0 is identity: without the gzip bit the server refuses gzip'd messages.
        options = [] if self.gzip else [("grpc.compression_enabled_algorithms_bitset", 1)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        pb_grpc.add_MetricsServiceServicer_to_server(Servicer(), self._server)
        address = f"127.0.0.1:{self.port}"
        if self.tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            cert, key = self.tls
            creds = grpc.ssl_server_credentials([(key, cert)])
            self.port = self._server.add_secure_port(address, creds)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None


class HttpReceiver(_Store):
    """POST /v1/metrics with application/x-protobuf, like a collector's OTLP/HTTP port.
    `hang=True` plays a collector that accepts connections but never answers; `tls`
    serves HTTPS with that server context."""

    def __init__(
        self, port: int = 0, hang: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        super().__init__()
        self.port = port
        self.hang = hang
        self.tls = tls
        self.headers_seen: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._release = threading.Event()

    def exporter_env(self) -> dict[str, str]:
        """The environment that points an exporter's OTLP over HTTP at this receiver."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def start(self) -> HttpReceiver:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if store.hang:
                    store._release.wait(120)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/metrics":
                    self.send_error(404)
                    return
                req = Request()
                req.ParseFromString(body)
                store.headers_seen.append(dict(self.headers))
                store.add(req)
                out = pb.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def points(req: Request) -> dict[str, list[tuple[dict[str, str], float, Any]]]:
    """metric name -> [(attributes, value, metric)] from one request."""
    out: dict[str, list[tuple[dict[str, str], float, Any]]] = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = getattr(m, m.WhichOneof("data"))
                for dp in data.data_points:
                    attrs = {a.key: _value(a.value) for a in dp.attributes}
                    if m.WhichOneof("data") == "histogram":
                        v = dp.count
                    else:
                        v = dp.as_double if dp.HasField("as_double") else dp.as_int
                    out.setdefault(m.name, []).append((attrs, v, m))
    return out


def resource(req: Request) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in req.resource_metrics[0].resource.attributes}


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))
