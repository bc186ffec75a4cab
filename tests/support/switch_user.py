"""A StatsSwitch in a process of its own, driven line by line over stdin (another
instance of the exporter, as far as the sysctl and its markers can tell).

Commands: `enable [method]`, `off`, `on`, `close`, `recover`, `state`. Each answers one
line: the switch's state as "method enabled" (recover: the value it wrote, or None)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.kernel_helpers import REPO

SCRIPT = """
import sys
from pathlib import Path
from linnix_exporter.kernel.stats_switch import StatsSwitch

sw = StatsSwitch(sysctl=Path(sys.argv[1]), markers=Path(sys.argv[2]))
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "recover":
        print(sw.recover_after_crash(), flush=True)
        continue
    if cmd == "enable":
        sw.enable(*arg)
    else:
        getattr(sw, cmd)()
    st = sw.state()
    print(st.method, st.enabled, flush=True)
"""


class User:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"{command!r}: no answer (exit {self.proc.poll()})"
        return answer

    def kill(self) -> None:
        """SIGKILL: nothing of ours runs, as when the kernel's OOM killer ends a daemon."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def user(markers: Path, sysctl: Path) -> Iterator[User]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(sysctl), str(markers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        yield User(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
