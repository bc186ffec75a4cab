"""The iterator loader: the stats iterator (kernel/prog_iter.py) and the owners iterator
(kernel/owner_iter.py) compiled and linked in one short-lived child process (one bcc
import), their fds handed to the daemon (kernel/handoff.py). Here, not in either
iterator module, so that neither imports the other.

``python -m linnix_exporter.kernel.iter_loader --sock-fd N [--owners]`` is the child.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from linnix_exporter.kernel import handoff, owner_iter, prog_iter
from linnix_exporter.kernel.owner_iter import OwnerIterReader
from linnix_exporter.kernel.prog_iter import _MAX_FDS, IterError, IterProgReader

# What the child sent: stats link and prog fds, the owners' pair or None, why not.
_Picked = tuple[int, int, tuple[int, int] | None, str | None]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Load the BPF program stats iterator.")
    p.add_argument("--sock-fd", type=int, required=True)
    p.add_argument("--owners", action="store_true", help="also the owners iterator")
    args = p.parse_args(argv)

    def run() -> tuple[dict[str, Any], list[int]]:
        started = time.monotonic()
        link_fd, prog_fd, defines = prog_iter.compile_and_link()
        header: dict[str, Any] = {
            "link": 0,
            "prog": 1,
            "defines": defines,
            "compile_seconds": round(time.monotonic() - started, 3),
        }
        fds = [link_fd, prog_fd]
        if args.owners:
            # Loaded in the same child (one bcc import), but it fails alone: the
            # daemon then scans /proc for owners and still reads stats this way.
            try:
                olink, oprog = owner_iter.compile_and_link()
                header["owners"] = {"link": 2, "prog": 3}
                fds += [olink, oprog]
            except IterError as e:
                header["owners_error"] = " ".join(str(e).split())
        return header, fds

    handoff.child_main(args.sock_fd, run, IterError)


def load_iterators(
    timeout: float = 60.0, owners: bool = True
) -> tuple[IterProgReader, OwnerIterReader | None, str | None]:
    """The stats iterator and, with `owners`, the owners iterator (bpf/prog_owners_iter.c),
    compiled and linked in one child process. Returns (stats reader, owners reader or
    None, why the owners iterator is missing or None). Raises IterError when the stats
    iterator cannot be loaded."""

    def pick(header: dict[str, Any], fds: list[int], _pid: int) -> _Picked:
        link_fd, prog_fd = fds[header["link"]], fds[header["prog"]]
        o = header.get("owners")
        owner_fds = (fds[o["link"]], fds[o["prog"]]) if o else None
        why = header.get("owners_error") if owners else None
        kept = {link_fd, prog_fd, *(owner_fds or ())}
        handoff.close_fds(fd for fd in fds if fd not in kept)
        return link_fd, prog_fd, owner_fds, why

    link_fd, prog_fd, owner_fds, why = handoff.load_in_child(
        "linnix_exporter.kernel.iter_loader",
        ["--owners"] if owners else [],
        "iterator loader",
        timeout,
        _MAX_FDS,
        IterError,
        pick,
    )
    try:
        reader = IterProgReader(link_fd, prog_fd)
    except IterError:
        # Its own check failed and closed link and prog (closing them again could
        # close an fd another thread has opened since); the owners' are still ours.
        handoff.close_fds(owner_fds or ())
        raise
    except BaseException:
        handoff.close_fds({link_fd, prog_fd, *(owner_fds or ())})
        raise
    owner_reader = None
    if owner_fds is not None:
        try:
            owner_reader = OwnerIterReader(*owner_fds)
        except IterError as e:
            why = str(e)
    return reader, owner_reader, why


if __name__ == "__main__":
    main()
