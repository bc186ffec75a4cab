"""Who holds every BPF program, from one BPF iterator read (iter/task_file, 5.8+).

`progstats.scan_owners` walks /proc: one readlink per fd on the host (200,000 on a big
node) for the few that are BPF program or link fds. bpf/prog_owners_iter.c walks the
same file tables inside the kernel and writes one 24-byte record per program or link
fd; a scan is BPF_ITER_CREATE + a read() or two + close, whatever the number of fds.

Loaded by the stats iterator's child (kernel/prog_iter.py `load_iterators`), which calls
`compile_and_link()` here; the daemon holds the fds in an `OwnerIterReader`. Its
constructor checks one scan against scan_owners for the daemon's own process (it holds
this very iterator's program and link fds), so wrong offsets fail at load (IterError:
the daemon falls back to /proc) rather than as wrong owners later.
"""

from __future__ import annotations

import os
import struct

from linnix_exporter.kernel import btf
from linnix_exporter.kernel.prog_iter import IterError, IterLink, compile_iter
from linnix_exporter.snapshot import Owner

FUNC_NAME = "bpf_iter__task_file"  # BPF_ITER(task_file) in prog_owners_iter.c
PROG_NAME = "linnix_owners"  # what the kernel, bpftool and our metrics show
ITER_TARGET_FUNC = "bpf_iter_task_file"  # the kernel function an iter/task_file attaches to
RECORD = struct.Struct("<II16s")  # struct rec: tgid, prog_id, comm


def btf_defines() -> dict[str, int]:
    """-D values for prog_owners_iter.c from the running kernel's BTF."""
    try:
        return {
            "FILE_DENTRY_OFF": btf.offset_of("file", "f_path.dentry"),
            "FILE_PRIVATE_OFF": btf.offset_of("file", "private_data"),
            "DENTRY_HASH_LEN_OFF": btf.offset_of("dentry", "d_name")
            + btf.offset_of("qstr", "hash_len"),
            "DENTRY_NAME_OFF": btf.offset_of("dentry", "d_name") + btf.offset_of("qstr", "name"),
            "LINK_PROG_OFF": btf.offset_of("bpf_link", "prog"),
            "PROG_AUX_OFF": btf.offset_of("bpf_prog", "aux"),
            "AUX_ID_OFF": btf.offset_of("bpf_prog_aux", "id"),
            "TASK_TGID_OFF": btf.offset_of("task_struct", "tgid"),
            "TASK_GROUP_LEADER_OFF": btf.offset_of("task_struct", "group_leader"),
            "TASK_COMM_OFF": btf.offset_of("task_struct", "comm"),
        }
    except btf.BtfError as e:
        raise IterError(f"kernel BTF: {e}") from e


def compile_and_link() -> tuple[int, int]:
    """Child side (imports bcc): (link fd, prog fd) of the owners iterator."""
    return compile_iter("prog_owners_iter.c", FUNC_NAME, btf_defines(), PROG_NAME, ITER_TARGET_FUNC)


class OwnerIterReader(IterLink):
    """`scan()` returns what progstats.scan_owners returns, from one iterator read."""

    def __init__(self, link_fd: int, prog_fd: int, initial_buffer: int = 1 << 14) -> None:
        super().__init__(link_fd, prog_fd, RECORD.size, initial_buffer)
        try:
            mine = {o.pid for o in self.scan().get(self.prog_id, ())}
        except IterError:
            self.close()
            raise
        if os.getpid() not in mine:
            self.close()
            raise IterError(
                f"owners iterator did not find this process holding its own program "
                f"{self.prog_id} (found {sorted(mine)}): wrong BTF offsets?"
            )

    def scan(self) -> dict[int, tuple[Owner, ...]]:
        owners: dict[int, set[Owner]] = {}
        comms: dict[bytes, str] = {}
        with self._read_all() as view:
            for tgid, prog_id, raw in RECORD.iter_unpack(view):
                comm = comms.get(raw)
                if comm is None:
                    comm = comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
                owners.setdefault(prog_id, set()).add(Owner(tgid, comm))
        return {i: tuple(sorted(o, key=lambda x: x.pid)) for i, o in owners.items()}
