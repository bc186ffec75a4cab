"""--web.config.file: parsing (good and bad files), the Server over TLS with basic auth,
and a real Prometheus scraping it with scheme https + basic_auth. No root needed."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client import Gauge
from prometheus_client.registry import CollectorRegistry

from linnix_exporter import cli
from linnix_exporter.config import ConfigError, run_config
from linnix_exporter.web import Server, serve
from linnix_exporter.webconfig import WebConfig, load
from tests.kernel_helpers import free_port
from tests.support.certs import self_signed

USER, PASSWORD = "alice", "s3cret:with colon"


def _hash(password: str, prefix: bytes = b"$2y$") -> str:
    # Cost 4 keeps the tests fast; $2y$ is what htpasswd writes.
    return (prefix + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))[4:]).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1/localhost (also its own CA)."""
    return self_signed(tmp_path_factory.mktemp("certs"))


def _write(d: Path, text: str, name: str = "web.yml") -> Path:
    p = d / name
    p.write_text(text)
    return p


def _good(certs: Path) -> Path:
    # Relative paths: resolved against the config file's directory.
    return _write(
        certs,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  {USER}: '{_hash(PASSWORD)}'\n",
        "good.yml",
    )


# ---- parsing ---------------------------------------------------------------------------


def test_good_config(certs: Path) -> None:
    cfg = load(str(_good(certs)))
    assert cfg.tls is not None and cfg.auth is not None
    assert cfg.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    assert cfg.tls.verify_mode == ssl.CERT_NONE


def test_empty_file_means_plain_http(tmp_path: Path) -> None:
    cfg = load(str(_write(tmp_path, "")))
    assert cfg.tls is None and cfg.auth is None


def test_options_and_client_auth(certs: Path) -> None:
    p = _write(
        certs,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  min_version: TLS13\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: server.crt\n",
        "mtls.yml",
    )
    cfg = load(str(p))
    assert cfg.tls is not None
    assert cfg.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert cfg.tls.verify_mode == ssl.CERT_REQUIRED


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tls_server_config: [\n", "invalid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("basic_auth: {}\n", "unknown key basic_auth"),
        (TLS + "  certfile: x\n", "unknown key tls_server_config.certfile"),
        (TLS + "  cipher_suites: [x]\n", "cipher_suites is not supported"),
        ("http_server_config: {http2: false}\n", "http_server_config is not supported"),
        ("tls_server_config:\n  cert_file: server.crt\n", "must both be set"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", "nope.crt"),
        ("tls_server_config:\n  cert_file: garbage.crt\n  key_file: server.key\n",
         "cannot load certificate"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
         "cannot load certificate"),
        (TLS + "  min_version: TLS14\n", "min_version 'TLS14' is not one of"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
         "needs tls_server_config.client_ca_file"),
        (TLS + "  client_auth_type: RequestClientCert\n", "is not supported"),
        ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users:\n  alice: 5f4dcc3b5aa765d61d8327deb882cf99\n", "not a bcrypt hash"),
        ("basic_auth_users: [alice]\n", "basic_auth_users must be a mapping"),
    ],
)  # fmt: skip
def test_bad_config(certs: Path, text: str, problem: str) -> None:
    (certs / "garbage.crt").write_text("not a certificate\n")
    p = _write(certs, text, "bad.yml")
    with pytest.raises(ConfigError) as e:
        load(str(p))
    msg = str(e.value)
    assert str(p) in msg and problem in msg, msg
    assert "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yml.*cannot read: No such file"):
        load(str(tmp_path / "missing.yml"))


def test_cli_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = _write(tmp_path, "basic_auth_users:\n  bob: nothash\n")
    assert cli.main(["run", "--web.config.file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--web.config.file" in err and "not a bcrypt hash" in err
    # The environment variable goes through the same parser.
    args = cli.build_parser().parse_args(["run"])
    with pytest.raises(ConfigError, match="LINNIX_EXPORTER_WEB_CONFIG_FILE"):
        run_config(args, {"LINNIX_EXPORTER_WEB_CONFIG_FILE": str(tmp_path / "none.yml")})
    assert run_config(args, {}).web_config_file is None


# ---- the server ------------------------------------------------------------------------


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    Gauge("linnix_webconfig_test", "test gauge", registry=registry).set(42)
    return registry


@pytest.fixture
def make_server() -> Iterator[Any]:
    servers: list[Server] = []

    def make(cfg: WebConfig | None) -> Server:
        s = Server(("127.0.0.1", 0), _registry(), "/metrics", lambda: (True, "ready"), cfg)
        serve(s)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def _auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _https(
    server: Server, certs: Path, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(certs / "server.crt"))
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_https_with_basic_auth(
    certs: Path, make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcrypt

    checks: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    cfg = load(str(_good(certs)))
    server = make_server(cfg)
    status, _, body = _https(server, certs, headers=_auth(USER, PASSWORD))
    assert status == 200 and b"linnix_webconfig_test 42.0" in body
    assert len(checks) == 1
    # Cached: later scrapes do not pay for bcrypt again.
    t0 = time.perf_counter()
    for _ in range(20):
        assert _https(server, certs, headers=_auth(USER, PASSWORD))[0] == 200
    assert time.perf_counter() - t0 < 5
    assert len(checks) == 1

    for headers in (
        None,
        _auth(USER, "wrong"),
        _auth("mallory", PASSWORD),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer x"},
    ):
        for path in ("/metrics", "/healthz", "/readyz", "/"):
            status, hdrs, _ = _https(server, certs, path, headers)
            assert status == 401, (headers, path)
            assert hdrs["WWW-Authenticate"] == 'Basic realm="linnix-exporter"'
    # A wrong password is never cached: each try is checked again (4 paths).
    assert checks.count(b"wrong") == 4


def test_https_rejects_untrusted_client(certs: Path, make_server: Any) -> None:
    server = make_server(load(str(_good(certs))))
    with pytest.raises(ssl.SSLCertVerificationError):
        http.client.HTTPSConnection(
            "127.0.0.1", server.port, context=ssl.create_default_context(), timeout=10
        ).request("GET", "/metrics")


def test_plain_http_to_tls_port_fails_cleanly(certs: Path, make_server: Any) -> None:
    server = make_server(load(str(_good(certs))))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    assert r.status == 400 and b"HTTP request to an HTTPS server" in r.read()
    conn.close()
    # Garbage that is neither TLS nor HTTP: the connection just closes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"\x00\x01\x02garbage")
        assert s.recv(100) == b""
    # A client that connects and says nothing does not block the others.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        assert _https(server, certs, headers=_auth(USER, PASSWORD))[0] == 200


def test_basic_auth_without_tls(tmp_path: Path, make_server: Any) -> None:
    server = make_server(
        load(str(_write(tmp_path, f"basic_auth_users:\n  {USER}: '{_hash(PASSWORD, b'$2b$')}'\n")))
    )
    url = f"http://127.0.0.1:{server.port}/healthz"
    req = urllib.request.Request(url, headers=_auth(USER, PASSWORD))
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=10)
    assert e.value.code == 401


# ---- a real Prometheus -----------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
def test_prometheus_scrapes_over_tls_with_basic_auth(
    certs: Path, make_server: Any, tmp_path: Path
) -> None:
    server = make_server(load(str(_good(certs))))
    target = [f"127.0.0.1:{server.port}"]

    def job(name: str, password: str) -> dict[str, Any]:
        return {
            "job_name": name,
            "scheme": "https",
            "tls_config": {"ca_file": str(certs / "server.crt")},
            "basic_auth": {"username": USER, "password": password},
            "static_configs": [{"targets": target}],
        }

    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [job("secure", PASSWORD), job("wrongpw", "nope")],
    }))  # fmt: skip
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        up: dict[str, str] = {}
        while time.monotonic() < deadline and set(up) != {"secure", "wrongpw"}:
            assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
            try:
                body = _get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": "up"}))
                up = {r["metric"]["job"]: r["value"][1] for r in body["data"]["result"]}
            except OSError:
                pass
            time.sleep(0.5)
        assert up == {"secure": "1", "wrongpw": "0"}, up
        q = urllib.parse.urlencode({"query": 'linnix_webconfig_test{job="secure"}'})
        result = _get_json(f"{base}/api/v1/query?{q}")["data"]["result"]
        assert [r["value"][1] for r in result] == ["42"]
        targets = _get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        errors = {t["labels"]["job"]: t["lastError"] for t in targets}
        assert errors["secure"] == "" and "401" in errors["wrongpw"], errors
    finally:
        proc.terminate()
        proc.wait(timeout=30)
