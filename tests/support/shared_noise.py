"""The noise of a shared node, for running the suite under it (issue 21):

- another process holding BPF statistics on for `--hold` seconds of every `--period`
  (an enable-stats fd of its own, as another exporter or bpftop does), and
- another process forking `--forks-per-second` short-lived children (fork + _exit).

    .venv/bin/python -m tests.support.shared_noise --hold 30 --period 90 \
        --forks-per-second 100 &
    make test
    kill %1

It logs each switch of the statistics (monotonic and wall time) on stderr, so a failure
in the suite can be set against it. Runs until SIGTERM/SIGINT; statistics go off by
themselves when it dies (the fd closes).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time

from linnix_exporter.kernel.bpf_syscall import enable_stats


def forker(rate: float) -> None:
    """A child that forks `rate` children a second, each exiting at once (never returns)."""
    period = 1.0 / rate
    nxt = time.monotonic()
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


def holder(hold: float, period: float) -> None:
    """Hold an enable-stats fd for `hold` s at the start of every `period` s."""
    start = time.monotonic()
    while True:
        fd = enable_stats()
        log("statistics held on", hold)
        time.sleep(max(0.0, start + hold - time.monotonic()))
        os.close(fd)
        log("statistics released", period - hold)
        start += period
        time.sleep(max(0.0, start - time.monotonic()))


def set_comm(name: str) -> None:
    """Name this process as holders and forkers are listed (`pid comm` in a failure)."""
    libc = ctypes.CDLL(None)
    libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME


def log(what: str, seconds: float) -> None:
    print(
        f"{time.strftime('%H:%M:%S')} mono={time.monotonic():.1f} {what} for {seconds:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hold", type=float, default=30.0, help="seconds held on per period")
    ap.add_argument("--period", type=float, default=90.0, help="seconds")
    ap.add_argument("--forks-per-second", type=float, default=100.0)
    a = ap.parse_args(argv)
    if not 0 < a.hold < a.period or a.forks_per_second <= 0:
        ap.error("need 0 < --hold < --period and --forks-per-second > 0")
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        set_comm("noise-forker")
        forker(a.forks_per_second)
    set_comm("noise-holder")

    def stop(*_: object) -> None:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    holder(a.hold, a.period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
