"""Where every BPF program is attached: its hooks, as the kernel tells them.

Two sources, as `bpftool link show` and `bpftool perf show` read them:

- bpf links (BPF_LINK_GET_NEXT_ID, BPF_LINK_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD ->
  struct bpf_link_info): the link type, the program, and the per-type target (tracepoint
  name, kprobe function, uprobe file and offset, cgroup id, ifindex, netns, tracing
  target). Each fd is closed at once: holding a link's fd keeps the attachment alive.
- perf-event attachments held by processes (how bcc and bpftrace 0.17 attach: no link):
  BPF_TASK_FD_QUERY on each `anon_inode:[perf_event]` fd of each process gives the
  program, the kind (tracepoint, raw tracepoint, kprobe, kretprobe, uprobe, uretprobe),
  the name or path, and the offset.

The parsing is pure (`parse_link_info`, `hook_of_task_fd`), tested on recorded
fixtures, kprobe and fentry ones included (this kernel can attach neither). struct
bpf_link_info offsets are uapi ABI, checked against this kernel's BTF (see tests).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections.abc import Callable, Iterable

from linnix_exporter.kernel.bpf_syscall import (
    _ATTR_SIZE,
    _SYS_BPF,
    BPF_OBJ_GET_INFO_BY_FD,
    AttachQuery,
    BpfError,
    TaskFd,
    _pinned,
    _syscall,
)
from linnix_exporter.snapshot import Hook as Hook
from linnix_exporter.snapshot import HookCost, Hooks, OwnerMap

BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31

# enum bpf_link_type (uapi ABI order)
LINK_TYPES = (
    "unspec",
    "raw_tracepoint",
    "tracing",
    "cgroup",
    "iter",
    "netns",
    "xdp",
    "perf_event",
    "kprobe_multi",
    "struct_ops",
    "netfilter",
    "tcx",
    "uprobe_multi",
    "netkit",
    "sockmap",
)

# enum bpf_attach_type (uapi ABI order), named as bpftool names them.
ATTACH_TYPES = (
    "cgroup_inet_ingress",
    "cgroup_inet_egress",
    "cgroup_inet_sock_create",
    "cgroup_sock_ops",
    "sk_skb_stream_parser",
    "sk_skb_stream_verdict",
    "cgroup_device",
    "sk_msg_verdict",
    "cgroup_inet4_bind",
    "cgroup_inet6_bind",
    "cgroup_inet4_connect",
    "cgroup_inet6_connect",
    "cgroup_inet4_post_bind",
    "cgroup_inet6_post_bind",
    "cgroup_udp4_sendmsg",
    "cgroup_udp6_sendmsg",
    "lirc_mode2",
    "flow_dissector",
    "cgroup_sysctl",
    "cgroup_udp4_recvmsg",
    "cgroup_udp6_recvmsg",
    "cgroup_getsockopt",
    "cgroup_setsockopt",
    "trace_raw_tp",
    "trace_fentry",
    "trace_fexit",
    "modify_return",
    "lsm_mac",
    "trace_iter",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_getpeername",
    "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname",
    "xdp_devmap",
    "cgroup_inet_sock_release",
    "xdp_cpumap",
    "sk_lookup",
    "xdp",
    "sk_skb_verdict",
    "sk_reuseport_select",
    "sk_reuseport_select_or_migrate",
    "perf_event",
    "trace_kprobe_multi",
    "lsm_cgroup",
    "struct_ops",
    "netfilter",
    "tcx_ingress",
    "tcx_egress",
    "trace_uprobe_multi",
    "cgroup_unix_connect",
    "cgroup_unix_sendmsg",
    "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername",
    "cgroup_unix_getsockname",
    "netkit_primary",
    "netkit_peer",
    "trace_kprobe_session",
    "trace_uprobe_session",
)

# A tracing link's hook, by attach type: what the kernel runs to reach the program.
_TRACING_HOOKS = {
    "trace_fentry": "fentry",
    "trace_fexit": "fexit",
    "modify_return": "fmod_ret",
    "trace_raw_tp": "raw_tracepoint",
    "lsm_mac": "lsm",
    "lsm_cgroup": "lsm",
}

# enum bpf_perf_event_type -> hook (0 unspec, 6 a hardware/software perf event)
PERF_EVENT_HOOKS = ("perf_event", "uprobe", "uretprobe", "kprobe", "kretprobe", "tracepoint")
# enum bpf_task_fd_type -> hook, as `bpftool perf show` prints fd_type
TASK_FD_HOOKS = ("raw_tracepoint", "tracepoint", "kprobe", "kretprobe", "uprobe", "uretprobe")

LINK_INFO_SIZE = 128  # struct bpf_link_info is 64 bytes on 6.18; the rest stays zero
_HEAD = struct.Struct("<III")  # type, id, prog_id
# Where a type's string buffer (pointer, length) sits in the union at offset 16:
# raw_tracepoint tp_name / iter target_name at 16, 24; uprobe_multi path at 16, size at 48;
# perf_event's file_name / func_name / tp_name at 24, 32.
_TEXT_SLOTS = {1: (16, 24), 4: (16, 24), 12: (16, 48), 7: (24, 32)}
TEXT_SIZE = 4096  # PATH_MAX
# Link types whose info is a u32 target then the attach type, at offset 16: the
# target's name as the target string writes it ("<attach type> <name>=N").
_TARGET_THEN_ATTACH = {
    "tcx": "ifindex",
    "netkit": "ifindex",
    "netns": "netns_ino",
    "sockmap": "map_id",
}


def attach_type_name(value: int) -> str:
    return ATTACH_TYPES[value] if value < len(ATTACH_TYPES) else f"attach_{value}"


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_link_info(
    info: bytes, text: bytes = b"", func_name: Callable[[int, int], str | None] | None = None
) -> Hook:
    """A Hook from a struct bpf_link_info and the string the kernel wrote into the
    buffer that `_TEXT_SLOTS` names for its type. `func_name(btf_obj_id, btf_id)` names a
    tracing target; without it (or unknown) the target carries the ids bpftool prints.

    Targets: tracepoint/raw_tracepoint: the event name; kprobe: func+0xoff (or the
    address); uprobe: path+0xoff; cgroup: `<attach type> cgroup_id=N`; tcx/netkit:
    `<attach type> ifindex=N`; xdp: `ifindex=N`; netns: `<attach type> netns_ino=N`;
    tracing: the function (or `btf_obj=N btf_id=M`); netfilter: `pf=N hooknum=M
    priority=P`; kprobe_multi: `N functions`; uprobe_multi: `path (N offsets)`.
    """
    ltype, link_id, prog_id = _HEAD.unpack_from(info, 0)
    kind = LINK_TYPES[ltype] if ltype < len(LINK_TYPES) else f"link_{ltype}"
    name = _text(text)
    u32 = struct.Struct("<I").unpack_from
    u64 = struct.Struct("<Q").unpack_from
    hook, target, cgroup_id = kind, "", 0
    if kind == "raw_tracepoint" or kind == "iter":
        target = name
    elif kind == "tracing":
        attach = attach_type_name(u32(info, 16)[0])
        obj, btf_id = struct.unpack_from("<II", info, 20)
        hook = _TRACING_HOOKS.get(attach, attach)
        fn = func_name(obj, btf_id) if func_name else None
        target = fn or f"btf_obj={obj} btf_id={btf_id}"
    elif kind in _TARGET_THEN_ATTACH:
        value, attach = struct.unpack_from("<II", info, 16)
        target = f"{attach_type_name(attach)} {_TARGET_THEN_ATTACH[kind]}={value}"
    elif kind == "cgroup":
        (cgroup_id,) = u64(info, 16)
        target = f"{attach_type_name(u32(info, 24)[0])} cgroup_id={cgroup_id}"
    elif kind == "xdp":
        target = f"ifindex={u32(info, 16)[0]}"
    elif kind == "netfilter":
        pf, hooknum, prio = struct.unpack_from("<IIi", info, 16)
        target = f"pf={pf} hooknum={hooknum} priority={prio}"
    elif kind == "struct_ops":
        target = f"map_id={u32(info, 16)[0]}"
    elif kind == "kprobe_multi":
        target = f"{u32(info, 24)[0]} functions"
    elif kind == "uprobe_multi":
        target = f"{name} ({u32(info, 52)[0]} offsets)"
    elif kind == "perf_event":
        ptype = u32(info, 16)[0]
        hook = PERF_EVENT_HOOKS[ptype] if ptype < len(PERF_EVENT_HOOKS) else "perf_event"
        (offset,) = u32(info, 36)
        if hook in ("uprobe", "uretprobe"):
            target = f"{name}+{offset:#x}"
        elif hook in ("kprobe", "kretprobe"):
            target = f"{name}+{offset:#x}" if name else f"{u64(info, 40)[0]:#x}"
        elif hook == "tracepoint":
            target = name
        else:
            config, etype = struct.unpack_from("<QI", info, 24)
            target = f"type={etype} config={config}"
    return Hook(prog_id, hook, target, link_id=link_id, cgroup_id=cgroup_id)


def hook_of_task_fd(q: TaskFd, pid: int = 0) -> Hook:
    """A Hook from a BPF_TASK_FD_QUERY answer, with the target written as
    parse_link_info writes the same hook's (bpftool perf show: tracepoint name; kprobe
    func + offset or addr; uprobe filename + offset)."""
    hook = TASK_FD_HOOKS[q.fd_type] if q.fd_type < len(TASK_FD_HOOKS) else f"fd_{q.fd_type}"
    name = _text(q.name)
    if hook in ("uprobe", "uretprobe"):
        target = f"{name}+{q.probe_offset:#x}"
    elif hook in ("kprobe", "kretprobe"):
        target = f"{name}+{q.probe_offset:#x}" if name else f"{q.probe_addr:#x}"
    else:
        target = name
    return Hook(q.prog_id, hook, target, pid=pid)


class LinkReader:
    """Every bpf link on the node, read with the bpf() syscall; buffers made once."""

    def __init__(self, func_name: Callable[[int, int], str | None] | None = None) -> None:
        self._attr, self._attr_addr, self._attr_view = _pinned(_ATTR_SIZE)
        self._info, self._info_addr, self._info_view = _pinned(LINK_INFO_SIZE)
        self._text, self._text_addr, self._text_view = _pinned(TEXT_SIZE)
        self._func_name = func_name

    def _call(self, cmd: int, what: str) -> int:
        ret = int(_syscall(_SYS_BPF, cmd, self._attr_addr, _ATTR_SIZE))
        if ret < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"{what}: {os.strerror(err)}")
        return ret

    def ids(self) -> list[int]:
        out: list[int] = []
        start = 0
        while True:
            self._attr[:] = bytes(_ATTR_SIZE)
            struct.pack_into("I", self._attr, 0, start)
            try:
                self._call(BPF_LINK_GET_NEXT_ID, "BPF_LINK_GET_NEXT_ID")
            except BpfError as e:
                if e.errno == errno.ENOENT:
                    return out
                raise
            start = struct.unpack_from("I", self._attr, 4)[0]
            out.append(start)

    def _get_info(self, fd: int) -> None:
        self._attr[:] = bytes(_ATTR_SIZE)
        struct.pack_into("IIQ", self._attr, 0, fd, LINK_INFO_SIZE, self._info_addr)
        self._call(BPF_OBJ_GET_INFO_BY_FD, "BPF_OBJ_GET_INFO_BY_FD(link)")

    def read(self, link_id: int) -> Hook | None:
        """The link's hook, or None if it went away meanwhile or is not settled yet (the
        kernel lists a link's id while its attach is still under way, and answers EAGAIN
        for it until the attach succeeds or is undone)."""
        self._attr[:] = bytes(_ATTR_SIZE)
        struct.pack_into("I", self._attr, 0, link_id)
        try:
            fd = self._call(BPF_LINK_GET_FD_BY_ID, f"BPF_LINK_GET_FD_BY_ID({link_id})")
        except BpfError as e:
            if e.errno in (errno.ENOENT, errno.EAGAIN):
                return None
            raise
        try:
            self._info[:] = bytes(LINK_INFO_SIZE)
            self._text[:] = bytes(TEXT_SIZE)
            self._get_info(fd)  # first: the type, which says where its string goes
            slot = _TEXT_SLOTS.get(struct.unpack_from("I", self._info, 0)[0])
            if slot is not None:
                self._info[:] = bytes(LINK_INFO_SIZE)
                struct.pack_into("Q", self._info, slot[0], self._text_addr)
                struct.pack_into("I", self._info, slot[1], TEXT_SIZE)
                self._get_info(fd)
            return parse_link_info(bytes(self._info), bytes(self._text), self._func_name)
        finally:
            os.close(fd)  # at once: a held link fd keeps the attachment alive

    def all(self) -> list[Hook]:
        return [h for h in map(self.read, self.ids()) if h is not None]


PERF_EVENT_LINK = "anon_inode:[perf_event]"


def perf_event_hooks(pids: Iterable[int] | None = None, proc: str = "/proc") -> list[Hook]:
    """Programs attached through perf events that processes hold (bcc, bpftrace 0.17),
    as `bpftool perf show` lists them: one readlink per fd of each process, one
    BPF_TASK_FD_QUERY per perf-event fd. Perf events with no program are left out."""
    query = AttachQuery()
    out: list[Hook] = []
    if pids is None:
        pids = (int(e.name) for e in os.scandir(proc) if e.name.isdigit())
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or a kernel thread
        for name in fds:
            try:
                if os.readlink(f"{fd_dir}/{name}") != PERF_EVENT_LINK:
                    continue
            except OSError:
                continue
            got = query.task_fd(pid, int(name))
            if got is not None:
                out.append(hook_of_task_fd(got, pid))
    return out


def merge(links: list[Hook], held: list[Hook]) -> list[Hook]:
    """Links, then perf events held by processes. A perf-event link (libbpf's
    bpf_link_create on a perf event) leaves its perf event fd with the process too: that
    one is left out, its link already counted."""
    seen = {(h.prog_id, h.hook, h.target) for h in links}
    return links + [h for h in held if (h.prog_id, h.hook, h.target) not in seen]


def all_hooks(
    func_name: Callable[[int, int], str | None] | None = None, proc: str = "/proc"
) -> list[Hook]:
    """Every attachment on the node (every process's fds scanned: tests, tools)."""
    return merge(LinkReader(func_name).all(), perf_event_hooks(proc=proc))


# Recalibrate rarely: one calibration is ~0.8 s of CPU here (bench/results/hook_cost.txt);
# every 6 h that is 0.004% of a core. The hook costs follow the machine's speed, which
# moves by 2x between days and hosts of this kind, not between minutes.
RECALIBRATE_SECONDS = 6 * 3600.0
# A calibration with a failed kind (statistics switched on and off by another holder
# through its arms, a load refused) is tried again after RETRY_SECONDS, then twice as
# long each time it fails again, up to RECALIBRATE_SECONDS: a failed kind is served as
# no price, so waiting 6 h would leave its programs unpriced that long.
RETRY_SECONDS = 60.0


# Attachments of programs already seen are re-read at least this often (one owner-scan
# period by default): a program attached anew without any program, link or holder
# changing is rare, and the steady tick then costs one link-id walk.
REFRESH_SECONDS = 300.0


class HooksReader:
    """The hooks collector's source. A read: every bpf link, and the perf events of the
    processes the owner scan found holding BPF programs (bcc and bpftrace keep the
    program fds beside the perf events): one readlink per fd of those few processes,
    never of the whole host; and only when a new owner scan arrived (the owners map is
    a new object: programs or holders changed), the links changed, or REFRESH_SECONDS
    passed, else the last attachments. Not on every new program: on a node where
    programs come and go every tick, a holder with thousands of fds cost ~45 ms a read
    (bench/results/idle_cost-hooks.txt), and a new program's holder is known only once
    an owner scan covered it anyway (measured on a quiet node: a full read 1-4 ms of
    CPU with 6 holders and 7 links, the link-id walk 0.1 ms). The hook costs are
    calibrated when it is made (start-up), then by a read every RECALIBRATE_SECONDS:
    inside the tick, after the programs were read, so no tick lists the calibration's
    own programs."""

    def __init__(
        self,
        calibrate: Callable[[], tuple[HookCost, ...]],
        every: float = RECALIBRATE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        proc: str = "/proc",
        refresh: float = REFRESH_SECONDS,
        pods: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        self._calibrate = calibrate
        self._pods = pods  # cgroup id -> (namespace, pod): attribution.CgroupPods
        self._every = every
        self._refresh = refresh
        self._monotonic = monotonic
        self._proc = proc
        self._links = LinkReader()
        # The first calibration at start-up, before the first tick: its CPU is start-up
        # cost (in linnix_exporter_cpu_seconds_total, like the probes' compile), not the
        # first interval's share of the node.
        self._at = monotonic()
        self._costs = calibrate()
        self._wait = self._next_wait(every)
        self._owners: OwnerMap | None = None  # the owner scan the attachments follow
        self._link_ids: tuple[int, ...] = ()
        self._scanned = 0.0
        self._attachments: tuple[Hook, ...] = ()

    def read(self, owners: OwnerMap) -> Hooks:
        now = self._monotonic()
        if now - self._at >= self._wait:
            self._at = now
            self._costs = self._calibrate()
            self._wait = self._next_wait(self._wait)
        link_ids = tuple(self._links.ids())
        if (
            owners is not self._owners
            or link_ids != self._link_ids
            or now - self._scanned >= self._refresh
        ):
            read = {i: self._links.read(i) for i in link_ids}
            links = [h for h in read.values() if h is not None]
            pids = sorted({o.pid for held in owners.values() for o in held})
            held = perf_event_hooks(pids=pids, proc=self._proc)
            self._attachments = tuple(self._placed(merge(links, held)))
            # Ids not read are left out of the remembered walk: a link still settling is
            # listed again by the next walk, which then differs and reads it.
            link_ids = tuple(i for i in link_ids if read[i] is not None)
            self._owners, self._link_ids, self._scanned = owners, link_ids, now
        return Hooks(self._attachments, self._costs)

    def _next_wait(self, last: float) -> float:
        """Seconds until the next calibration: RECALIBRATE_SECONDS (`every`) after a
        good one; after one with a failed kind RETRY_SECONDS, doubling while it fails."""
        if not any(c.failed for c in self._costs):
            return self._every
        if last >= self._every:
            return min(RETRY_SECONDS, self._every)
        return min(2 * last, self._every)

    def _placed(self, hooks: list[Hook]) -> list[Hook]:
        """A cgroup attachment labelled with the pod whose cgroup it is on."""
        if self._pods is None:
            return hooks
        out = []
        for h in hooks:
            if h.cgroup_id:
                ns, pod = self._pods(h.cgroup_id)
                if pod:
                    h = h._replace(namespace=ns, pod=pod)
            out.append(h)
        return out

    def close(self) -> None:
        """Nothing held between reads."""
