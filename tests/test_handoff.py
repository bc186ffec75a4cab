"""handoff.load_in_child, the daemon side both bcc loaders share, against a real child
(tests/support/handoff_child.py) sending real fds over SCM_RIGHTS."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from linnix_exporter.kernel import handoff

CHILD = "tests.support.handoff_child"


class LoaderError(RuntimeError):
    pass


def load(adopt: Any, *args: str) -> Any:
    return handoff.load_in_child(CHILD, list(args), "test loader", 30.0, 8, LoaderError, adopt)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_adopt_gets_the_header_fds_and_the_reaped_child() -> None:
    got = load(lambda h, fds, pid: (h, fds, pid), "--header", json.dumps({"a": 1}), "--fds", "3")
    header, fds, pid = got
    try:
        assert header == {"ok": True, "a": 1}
        assert len(fds) == 3 and all(is_open(fd) for fd in fds)
        assert os.path.samestat(os.fstat(fds[0]), os.stat(os.devnull))
        with pytest.raises(ChildProcessError):  # reaped already: no zombie of ours
            os.waitpid(pid, os.WNOHANG)
    finally:
        handoff.close_fds(fds)


def test_a_header_adopt_cannot_index_is_malformed_and_closes_every_fd() -> None:
    seen: list[int] = []

    def adopt(header: dict[str, Any], fds: list[int], _pid: int) -> int:
        seen.extend(fds)
        return fds[header["link"]]  # no "link" in it

    with pytest.raises(LoaderError, match=r"^test loader sent a malformed header: KeyError"):
        load(adopt, "--fds", "2")
    assert len(seen) == 2 and not any(is_open(fd) for fd in seen)


def test_adopt_failing_otherwise_closes_every_fd_and_passes_the_error_on() -> None:
    seen: list[int] = []

    def adopt(_header: dict[str, Any], fds: list[int], _pid: int) -> None:
        seen.extend(fds)
        raise OSError(9, "refused")

    with pytest.raises(OSError, match="refused"):
        load(adopt, "--fds", "2")
    assert len(seen) == 2 and not any(is_open(fd) for fd in seen)


def test_the_childs_failure_is_the_callers_error_type_in_one_line() -> None:
    def adopt(*_: Any) -> None:
        raise AssertionError("adopt must not run when the child failed")

    with pytest.raises(LoaderError, match=r"^test loader failed: no compiler here$"):
        load(adopt, "--fail", "no compiler\n  here")
