"""The systemd unit's exposure score, as `systemd-analyze security` rates it, read
offline from deploy/systemd/ (no systemd needed to run the unit).

Usage: python -m bench.systemd_security
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.common import header

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / "linnix-exporter.service"


def main() -> None:
    if not shutil.which("systemd-analyze"):
        raise SystemExit("systemd-analyze is missing (Debian package systemd)")
    cmd = ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)]
    print(header("python -m bench.systemd_security"))
    version = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True)
    print(version.stdout.splitlines()[0])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(out.stdout.rstrip())


if __name__ == "__main__":
    main()
