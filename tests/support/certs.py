"""A self-signed certificate for tests of TLS settings."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(d: Path) -> Path:
    """server.crt/server.key in d for 127.0.0.1/localhost (also its own CA); returns d."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "server.key"), "-out", str(d / "server.crt"),
         "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d
