"""Loading BPF in a short-lived child process and taking over its fds.

bcc (and the LLVM it loads, ~130 MB resident) is only ever imported in a child, run as
`python -m <module> --sock-fd N ...`. The child compiles and loads, then sends ONE
SOCK_SEQPACKET message over the inherited socket: a JSON header plus the program, map
and attachment fds as SCM_RIGHTS, and leaves with os._exit (skipping bcc's atexit
cleanup, which would detach what the daemon now holds). On failure the header is
{"ok": false, "error": "one line"} and no fds. The daemon reaps the child right away,
so the compile's CPU shows in its own RUSAGE_CHILDREN figures.

Used by kernel/_loader.py (the probes) and kernel/iter_loader.py (the iterators); the
daemon side of both goes through load_in_child.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import linnix_exporter

_HEADER_MAX = 64 * 1024

T = TypeVar("T")


class HandoffError(RuntimeError):
    """The child could not be run or failed; str() is one line."""


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# ---- child side -----------------------------------------------------------------------


def bpf_source(name: str) -> Path:
    """A BPF C file: packaged next to the module in a wheel (pyproject force-includes
    bpf/ as linnix_exporter/_bpf), else in the repository's bpf/."""
    pkg = Path(linnix_exporter.__file__).resolve().parent
    installed = pkg / "_bpf" / name
    return installed if installed.is_file() else pkg.parent / "bpf" / name


def _send(sock: socket.socket, header: dict[str, Any], fds: Sequence[int]) -> None:
    socket.send_fds(sock, [json.dumps(header).encode()], list(fds))


def child_main(
    sock_fd: int,
    load: Callable[[], tuple[dict[str, Any], list[int]]],
    expected: type[BaseException] = Exception,
) -> NoReturn:
    """Run `load` (returns header and fds) and send the result; never returns.
    Errors of type `expected` are sent as their message; others with their type name."""
    sock = socket.socket(fileno=sock_fd)
    try:
        header, fds = load()
        _send(sock, {"ok": True, **header}, fds)
    except BaseException as e:
        msg = str(e) if isinstance(e, expected) else f"{type(e).__name__}: {e}"
        # OSError: the parent went away; nothing we attached survives us anyway.
        with contextlib.suppress(OSError):
            _send(sock, {"ok": False, "error": " ".join(msg.split())}, [])
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


# ---- daemon side ----------------------------------------------------------------------


def run_child(
    module: str, args: Sequence[str], what: str, timeout: float, max_fds: int
) -> tuple[dict[str, Any], list[int], int]:
    """Run the child, return (header, fds, child pid). The caller owns the fds (close
    them if it cannot use them). Raises HandoffError naming `what` on any failure."""
    started = time.monotonic()
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = _spawn(module, child, args)
    except OSError as e:
        parent.close()
        child.close()
        raise HandoffError(f"cannot start the {what}: {e}") from e
    child.close()  # so that the child dying reads as EOF, not a hang
    fds: list[int] = []
    try:
        parent.settimeout(timeout)
        try:
            msg, fds, flags, _ = socket.recv_fds(
                parent, _HEADER_MAX, max_fds, socket.MSG_CMSG_CLOEXEC
            )
        except TimeoutError:
            raise HandoffError(f"{what} did not answer within {timeout:g} s") from None
        # Reap it now: its CPU (the compile) then shows in our RUSAGE_CHILDREN.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(1.0, timeout - (time.monotonic() - started)))
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise HandoffError(f"{what}'s message was truncated")
        if not msg:
            raise HandoffError(f"{what} exited ({proc.returncode}) without a message")
        try:
            header = json.loads(msg)
        except ValueError as e:
            raise HandoffError(f"{what} sent an unreadable message: {e}") from e
        if not isinstance(header, dict) or not header.get("ok"):
            err = header.get("error") if isinstance(header, dict) else None
            raise HandoffError(f"{what} failed: {err or repr(msg[:200])}")
        received, fds = fds, []
        return header, received, proc.pid
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        close_fds(fds)  # only on failure: on success the list was handed over


def load_in_child(
    module: str,
    args: Sequence[str],
    what: str,
    timeout: float,
    max_fds: int,
    error: type[Exception],
    adopt: Callable[[dict[str, Any], list[int], int], T],
) -> T:
    """run_child, then `adopt(header, fds, child pid)` builds what the caller keeps.
    Every failure raises `error` (one line naming `what`) or what `adopt` raised; a
    header `adopt` cannot index is a malformed one. If `adopt` fails, every fd it was
    given is closed: it must take none over before it can no longer fail."""
    try:
        header, fds, pid = run_child(module, args, what, timeout, max_fds)
    except HandoffError as e:
        raise error(str(e)) from None
    try:
        return adopt(header, fds, pid)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        close_fds(fds)
        raise error(f"{what} sent a malformed header: {e!r}") from e
    except BaseException:
        close_fds(fds)
        raise


def _spawn(module: str, sock: socket.socket, args: Sequence[str]) -> subprocess.Popen[bytes]:
    # The child must import this same linnix_exporter, installed or not.
    root = str(Path(linnix_exporter.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    fd = sock.fileno()
    cmd = [sys.executable, "-m", module, "--sock-fd", str(fd), *args]
    return subprocess.Popen(
        cmd, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env
    )
