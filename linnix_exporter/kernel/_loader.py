"""Child process that compiles, loads and attaches the probes, then hands them over.

Run as ``python -m linnix_exporter.kernel._loader --sock-fd N --comm-slots K`` by
kernel/probes.py, never by hand. bcc (and the LLVM it drags in, ~130 MB resident) is
imported only here, in a process that lives for the ~0.5 s of a compile: it sends the
program, map and attachment fds to the daemon over the inherited unix socket and exits.
The attachment fds (a perf event per tracepoint, a BPF_RAW_TRACEPOINT_OPEN fd for the
raw tracepoint) are what keeps each program attached, so the probes stay attached for
exactly as long as the daemon holds them.

Protocol: ONE SOCK_SEQPACKET message. Its data is a JSON object; its SCM_RIGHTS
ancillary data are the fds. Success::

    {"ok": true, "programs": {name: fd_index}, "maps": {name: fd_index},
     "tracepoints": {"sched:sched_process_fork": fd_index, ...,
                     "raw:sched_process_free": fd_index},
     "program_tracepoints": {name: tracepoint}, "offsets": {...}, "compile_seconds": s}

"tracepoints" holds every attachment fd, keyed by the PROGRAMS value: "category:event"
for a tracepoint (perf event fd), "raw:event" for a raw tracepoint (raw-tracepoint fd).

Failure (no fds, exit status 1)::

    {"ok": false, "error": "one line saying what went wrong"}
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from linnix_exporter.kernel import bpf_syscall, btf, handoff, host

# Program name in probes.c -> where it is attached: "category:event" is a tracepoint
# (BPF_PROG_TYPE_TRACEPOINT), "raw:event" a raw tracepoint (BPF_PROG_TYPE_RAW_TRACEPOINT).
# linnix_free is raw because it needs the tracepoint's task_struct argument: exited-task
# CPU is read when the task is freed, the first point where its runtime is final (see
# bpf/probes.c).
PROGRAMS: dict[str, str] = {
    "linnix_fork": "sched:sched_process_fork",
    "linnix_exec": "sched:sched_process_exec",
    "linnix_exit": "sched:sched_process_exit",
    "linnix_free": "raw:sched_process_free",
}
RAW_PREFIX = "raw:"
MAPS = ("counters", "comm_counts")
DEFAULT_COMM_CACHE_SLOTS = 256


class LoadError(Exception):
    """A failure with a one-line explanation for the daemon's log."""


def btf_offsets() -> dict[str, int]:
    try:
        return {
            "TASK_START_TIME_OFF": btf.offset_of("task_struct", "start_time"),
            "TASK_SUM_EXEC_OFF": btf.offset_of("task_struct", "se.sum_exec_runtime"),
            "TASK_COMM_OFF": btf.offset_of("task_struct", "comm"),
            "TASK_PID_OFF": btf.offset_of("task_struct", "pid"),
            "TASK_TGID_OFF": btf.offset_of("task_struct", "tgid"),
        }
    except btf.BtfError as e:
        raise LoadError(f"kernel BTF: {e}") from e


def _compile_errors(log: str) -> str:
    """The first compiler error lines of a bcc/clang log, joined into one line."""
    errors = [ln.strip() for ln in log.splitlines() if "error:" in ln]
    if not errors:
        tail = [ln.strip() for ln in log.splitlines() if ln.strip()]
        errors = tail[-2:]
    summary = "; ".join(errors[:3])
    if len(errors) > 3:
        summary += f" (+{len(errors) - 3} more)"
    return summary


def _check_caps() -> None:
    # CAP_BPF+CAP_PERFMON suffice on 5.8+; CAP_SYS_ADMIN implies both.
    if not host.missing_caps((host.CAP_SYS_ADMIN,)):
        return
    missing = host.missing_caps((host.CAP_BPF, host.CAP_PERFMON))
    if missing:
        raise LoadError(
            f"missing capabilities {', '.join(missing)} (or CAP_SYS_ADMIN): "
            "run as root or grant them to the exporter"
        )


def compile_probes(
    comm_slots: int,
    comm_cache_slots: int = DEFAULT_COMM_CACHE_SLOTS,
    defines: dict[str, int] | None = None,
    src: Path | None = None,
) -> Any:
    """Compile and load bpf/probes.c with bcc (nothing attached yet); returns the BPF
    object. `defines` are extra -D cflags and `src` another source (bench/probe_cost.py
    builds its variants with them). Only ever called in a short-lived process: it
    imports bcc and LLVM."""
    _check_caps()
    try:
        host.prepare()
    except host.HostError as e:
        raise LoadError(str(e)) from e
    offsets = btf_offsets()
    src = src or handoff.bpf_source("probes.c")
    if not src.is_file():
        raise LoadError(f"BPF source not found at {src}")
    macros = {
        **offsets,
        "COMM_SLOTS": comm_slots,
        "COMM_CACHE_SLOTS": comm_cache_slots,
        "NR_CPU_IDS": bpf_syscall.cpu_id_limit(),
        **(defines or {}),
    }
    cflags = [f"-D{k}={v}" for k, v in macros.items()]
    # bcc prints clang's diagnostics on fd 2 and raises a bare "Failed to compile";
    # capture fd 2 to turn them into the one-line error the daemon logs.
    with _stderr_to_error():
        from bcc import BPF  # only ever imported in this child (or a bench)

        return BPF(src_file=str(src).encode(), cflags=cflags)


def attach(b: Any) -> None:
    """Attach every program of PROGRAMS where it belongs."""
    with _stderr_to_error():
        for name, tp in PROGRAMS.items():
            if tp.startswith(RAW_PREFIX):
                b.attach_raw_tracepoint(
                    tp=tp.removeprefix(RAW_PREFIX).encode(), fn_name=name.encode()
                )
            else:
                b.attach_tracepoint(tp=tp.encode(), fn_name=name.encode())


def detach(b: Any) -> None:
    """Undo attach() (bench rounds attach and detach one compiled object repeatedly)."""
    for tp in PROGRAMS.values():
        if tp.startswith(RAW_PREFIX):
            b.detach_raw_tracepoint(tp.removeprefix(RAW_PREFIX).encode())
        else:
            b.detach_tracepoint(tp.encode())


@contextlib.contextmanager
def _stderr_to_error() -> Iterator[None]:
    """Capture fd 2 (where bcc and clang write) and raise LoadError with its first
    error lines when the body fails."""
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except LoadError:
            raise
        except Exception as e:
            os.dup2(saved, 2)
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            sys.stderr.write(text)
            detail = _compile_errors(text) if "compile" in str(e).lower() else ""
            raise LoadError(f"{e}: {detail}" if detail else str(e)) from e
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load(comm_slots: int, comm_cache_slots: int) -> tuple[dict[str, Any], list[int]]:
    """Compile, load and attach; returns the header and the fds it indexes."""
    started = time.monotonic()
    b = compile_probes(comm_slots, comm_cache_slots)
    attach(b)
    compile_seconds = time.monotonic() - started

    fds: list[int] = []
    header: dict[str, Any] = {
        "ok": True,
        "programs": {},
        "maps": {},
        "tracepoints": {},
        "program_tracepoints": dict(PROGRAMS),
        "offsets": btf_offsets(),
        "comm_slots": comm_slots,
        "comm_cache_slots": comm_cache_slots,
        "nr_cpu_ids": bpf_syscall.cpu_id_limit(),
        "compile_seconds": round(compile_seconds, 3),
    }
    for name in PROGRAMS:
        header["programs"][name] = len(fds)
        fds.append(b.funcs[name.encode()].fd)
    for name in MAPS:
        header["maps"][name] = len(fds)
        fds.append(b.get_table(name).map_fd)
    for tp in PROGRAMS.values():
        header["tracepoints"][tp] = len(fds)
        if tp.startswith(RAW_PREFIX):
            fds.append(b.raw_tracepoint_fds[tp.removeprefix(RAW_PREFIX).encode()])
        else:
            fds.append(b.tracepoint_fds[tp.encode()])
    return header, fds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sock-fd", type=int, required=True)
    p.add_argument("--comm-slots", type=int, default=1024)
    p.add_argument("--comm-cache-slots", type=int, default=DEFAULT_COMM_CACHE_SLOTS)
    args = p.parse_args(argv)

    def run() -> tuple[dict[str, Any], list[int]]:
        if args.comm_slots < 1:
            raise LoadError(f"--comm-slots must be positive, got {args.comm_slots}")
        cache = args.comm_cache_slots
        if cache < 0 or cache & (cache - 1):
            raise LoadError(f"--comm-cache-slots must be 0 or a power of two, got {cache}")
        return load(args.comm_slots, cache)

    # Leaves with os._exit: bcc's atexit handler would detach the tracepoints
    # (PERF_EVENT_IOC_DISABLE on the perf event the parent now holds).
    handoff.child_main(args.sock_fd, run, LoadError)


if __name__ == "__main__":
    main()
