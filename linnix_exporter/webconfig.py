"""--web.config.file: TLS and basic auth for the HTTP endpoint, in the exporter-toolkit
web-config format that other Prometheus exporters use.

    tls_server_config:
      cert_file: server.crt          # relative paths: against the config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, needs client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # optional (default TLS12), max_version too
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hash (htpasswd -nBC 10 alice)

Everything is checked when the exporter starts (files read, certificate and key loaded,
hashes parsed): a bad file is one ConfigError naming it, not a failure at the first
scrape. Basic auth, when set, covers every path, /healthz and /readyz included, as
exporter-toolkit does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linnix_exporter.errors import ConfigError

REALM = "linnix-exporter"

_TOP_KEYS = {"tls_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}
# exporter-toolkit keys we recognise but do not implement: a clear "not supported" beats
# silently ignoring a security setting.
_UNSUPPORTED = {
    "http_server_config",
    "rate_limit",
    "cert",
    "key",
    "client_ca",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.ClientAuthType names -> what Python's ssl can do (it cannot ask for a client
# certificate without verifying it, so RequestClientCert/RequireAnyClientCert are out).
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: ssl.SSLContext | None
    auth: BasicAuth | None


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes. bcrypt costs tens of
    milliseconds by design, so a success is remembered (user, sha256(password)) in a
    small LRU and repeated scrapes with the same credentials cost a dict lookup."""

    def __init__(self, users: Mapping[str, bytes], cache_size: int = 256) -> None:
        self._users = dict(users)
        self._cache: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # Unknown users are checked against this too, so timing does not tell them apart.
        self._dummy = next(iter(self._users.values()))

    def check(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_b, sep, password = raw.partition(b":")
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        key = (user, hashlib.sha256(password).digest())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        import bcrypt

        known = user in self._users
        try:
            ok = bcrypt.checkpw(password, self._users[user] if known else self._dummy)
        except ValueError:
            return False
        if not (ok and known):
            return False
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


def load(filename: str) -> WebConfig:
    """Read and check a web-config file; any problem is a ConfigError naming the file."""
    path = Path(filename).expanduser()

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"web config {str(path)!r}: {problem}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    import yaml

    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise fail(f"invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if doc is None:
        doc = {}  # an empty file: plain HTTP, no auth (as exporter-toolkit)
    if not isinstance(doc, dict):
        raise fail("must be a YAML mapping (tls_server_config, basic_auth_users)")
    _check_keys(doc, _TOP_KEYS, "", fail)

    tls = _tls(doc.get("tls_server_config"), path.parent, fail)
    auth = _auth(doc.get("basic_auth_users"), fail)
    return WebConfig(path=path, tls=tls, auth=auth)


def _check_keys(section: dict[Any, Any], known: set[str], where: str, fail: Any) -> None:
    for key in section:
        if key in known:
            continue
        if key in _UNSUPPORTED:
            raise fail(f"{where}{key} is not supported by linnix-exporter")
        raise fail(f"unknown key {where}{key!s}")


def _string(section: dict[Any, Any], key: str, where: str, fail: Any) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise fail(f"{where}{key} must be a string")
    return value


def _tls(section: Any, base: Path, fail: Any) -> ssl.SSLContext | None:
    if section is None or section == {}:
        return None
    w = "tls_server_config."
    if not isinstance(section, dict):
        raise fail("tls_server_config must be a mapping")
    _check_keys(section, _TLS_KEYS, w, fail)
    cert = _string(section, "cert_file", w, fail)
    key = _string(section, "key_file", w, fail)
    if cert is None and key is None:
        return None  # exporter-toolkit: no certificate means no TLS
    if cert is None or key is None:
        raise fail(f"{w}cert_file and {w}key_file must both be set")
    cert_path, key_path = base / Path(cert).expanduser(), base / Path(key).expanduser()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = []
    for name, default in (("min_version", "TLS12"), ("max_version", None)):
        v = _string(section, name, w, fail) or default
        if v is not None and v not in _VERSIONS:
            raise fail(f"{w}{name} {v!r} is not one of {', '.join(_VERSIONS)}")
        versions.append(_VERSIONS[v] if v else None)
    try:
        if versions[0] is not None:
            ctx.minimum_version = versions[0]
        if versions[1] is not None:
            ctx.maximum_version = versions[1]
    except (ValueError, ssl.SSLError) as e:
        raise fail(f"{w}min_version/max_version: {e}") from None
    if versions[0] and versions[1] and versions[0] > versions[1]:
        raise fail(f"{w}min_version is above max_version")

    for p in (cert_path, key_path):
        try:
            with p.open("rb"):
                pass
        except OSError as e:
            raise fail(f"cannot read {p}: {e.strerror or e}") from None
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as e:
        raise fail(f"cannot load certificate {cert_path} with key {key_path}: {e}") from None

    auth_type = _string(section, "client_auth_type", w, fail) or "NoClientCert"
    if auth_type not in _CLIENT_AUTH:
        supported = ", ".join(_CLIENT_AUTH)
        raise fail(f"{w}client_auth_type {auth_type!r} is not supported (use {supported})")
    ca = _string(section, "client_ca_file", w, fail)
    if _CLIENT_AUTH[auth_type] != ssl.CERT_NONE and ca is None:
        raise fail(f"{w}client_auth_type {auth_type} needs {w}client_ca_file")
    if ca is not None:
        ca_path = base / Path(ca).expanduser()
        try:
            ctx.load_verify_locations(cafile=ca_path)
        except (ssl.SSLError, OSError) as e:
            raise fail(f"cannot load client_ca_file {ca_path}: {e}") from None
    ctx.verify_mode = _CLIENT_AUTH[auth_type]
    return ctx


def _auth(section: Any, fail: Any) -> BasicAuth | None:
    if section is None or section == {}:
        return None
    if not isinstance(section, dict):
        raise fail("basic_auth_users must be a mapping of user name to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise fail(f"basic_auth_users: invalid user name {user!r}")
        m = _BCRYPT.match(hashed) if isinstance(hashed, str) else None
        if m is None:
            raise fail(
                f"basic_auth_users.{user}: not a bcrypt hash (want $2y$/$2b$..., "
                "e.g. from htpasswd -nBC 10 USER)"
            )
        if not 4 <= int(m.group(1)) <= 31:
            raise fail(f"basic_auth_users.{user}: bcrypt cost must be 4-31")
        users[user] = m.group(0).encode()
    return BasicAuth(users)
