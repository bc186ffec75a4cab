"""Hooks of every program (kernel/hooks.py): link-info and task-fd parsing on recorded
fixtures (kprobe and fentry ones built by hand: this kernel attaches neither), and on
the real kernel the hooks of bpftrace, bcc's syscount and links the test makes, against
`bpftool perf show -j` and `bpftool link show -j`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linnix_exporter.kernel import hooks, raw_attach
from linnix_exporter.kernel.bpf_syscall import TaskFd
from linnix_exporter.kernel.hooks import Hook, hook_of_task_fd, parse_link_info
from linnix_exporter.kernel.host import ensure_tracefs
from tests.kernel_helpers import stop_process

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "link_info.json").read_text())
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
CGROUP2 = "/sys/fs/cgroup/unified"


@pytest.mark.parametrize(
    "case", FIXTURES["recorded"] + FIXTURES["built"], ids=lambda c: f"{c['hook']}-{c['link_id']}"
)
def test_parse_link_info_fixture(case: dict[str, Any]) -> None:
    got = parse_link_info(bytes.fromhex(case["info"]), case["text"].encode() + b"\0")
    assert got == Hook(
        case["prog_id"], case["hook"], case["target"], case["link_id"], 0, case.get("cgroup_id", 0)
    )


def test_tracing_target_named_by_btf_resolver() -> None:
    fentry = next(c for c in FIXTURES["built"] if c["hook"] == "fentry")
    names = {(1, 51234): "do_sys_openat2"}
    got = parse_link_info(bytes.fromhex(fentry["info"]), b"", lambda o, i: names.get((o, i)))
    assert (got.hook, got.target) == ("fentry", "do_sys_openat2")


def test_unknown_link_type_is_named_not_a_crash() -> None:
    info = bytes.fromhex("630000000100000002000000") + bytes(52)
    assert parse_link_info(info).hook == "link_99"


@pytest.mark.parametrize(
    ("q", "hook", "target"),
    [
        # as `bpftool perf show` printed them here (fd_type, tracepoint / filename+offset)
        (TaskFd(7, 1, b"sys_enter_getppid", 0, 0), "tracepoint", "sys_enter_getppid"),
        (TaskFd(7, 0, b"sched_process_free", 0, 0), "raw_tracepoint", "sched_process_free"),
        (TaskFd(7, 4, LIBC.encode(), 250032, 0), "uprobe", f"{LIBC}+0x3d0b0"),
        (TaskFd(7, 5, LIBC.encode(), 0x3F410, 0), "uretprobe", f"{LIBC}+0x3f410"),
        # kprobes cannot be attached here: built from the kernel's bpf_task_fd_query
        (TaskFd(7, 2, b"do_sys_openat2", 0x10, 0), "kprobe", "do_sys_openat2+0x10"),
        (TaskFd(7, 3, b"", 0, 0xFFFFFFFF81234560), "kretprobe", "0xffffffff81234560"),
    ],
)
def test_hook_of_task_fd(q: TaskFd, hook: str, target: str) -> None:
    assert hook_of_task_fd(q, pid=42) == Hook(7, hook, target, pid=42)


def test_link_and_perf_parsing_agree_on_targets() -> None:
    """A uprobe seen as a perf-event link and as a perf event held by a process gets
    the same target: all_hooks dedupes them by (prog_id, hook, target)."""
    case = next(c for c in FIXTURES["recorded"] if c["hook"] == "uprobe")
    link = parse_link_info(bytes.fromhex(case["info"]), case["text"].encode())
    held = hook_of_task_fd(TaskFd(case["prog_id"], 4, case["text"].encode(), 0x3D0B0, 0))
    assert (link.prog_id, link.hook, link.target) == (held.prog_id, held.hook, held.target)


# ---- on the real kernel ------------------------------------------------------------


def bpftool_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["bpftool", *args, "-j"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return list(json.loads(out or "[]"))


def perf_show_hooks(pid: int) -> set[tuple[int, str, str]]:
    """bpftool perf show's attachments of one process, written as hooks.py writes them."""
    out = set()
    for e in bpftool_json("perf", "show"):
        if e["pid"] != pid:
            continue
        kind = e["fd_type"]
        if kind in ("uprobe", "uretprobe"):
            target = f"{e['filename']}+{e['offset']:#x}"
        elif kind in ("kprobe", "kretprobe"):
            target = f"{e['func']}+{e['offset']:#x}" if "func" in e else f"{e['addr']:#x}"
        else:
            target = e["tracepoint"]
        out.add((e["prog_id"], kind, target))
    return out


def ours(pid: int) -> set[tuple[int, str, str]]:
    return {(h.prog_id, h.hook, h.target) for h in hooks.perf_event_hooks(pids=[pid])}


@contextlib.contextmanager
def attached_agent(argv: list[str], count: int) -> Iterator[subprocess.Popen[bytes]]:
    """A foreign agent, yielded once bpftool perf show lists `count` attachments of it."""
    ensure_tracefs()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while len(perf_show_hooks(proc.pid)) < count:
            assert proc.poll() is None, f"{argv[0]} exited"
            assert time.monotonic() < deadline, f"{argv[0]} did not attach {count} programs"
            time.sleep(0.3)
        yield proc
    finally:
        stop_process(proc)


@pytest.mark.kernel
def test_bpftrace_uprobe_and_tracepoint_hooks_match_bpftool() -> None:
    script = (
        f"uprobe:{LIBC}:abs {{ @a = count(); }} "
        "tracepoint:syscalls:sys_enter_getppid { @t = count(); }"
    )
    with attached_agent(["bpftrace", "-e", script], 2) as proc:
        want = perf_show_hooks(proc.pid)
        got = ours(proc.pid)
    assert got == want
    offset = raw_attach.elf_symbol_offset(LIBC, "abs")
    assert {(h, t) for _, h, t in got} == {
        ("uprobe", f"{LIBC}+{offset:#x}"),
        ("tracepoint", "sys_enter_getppid"),
    }


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("syscount-bpfcc") is None, reason="needs bpfcc-tools")
def test_bcc_syscount_tracepoint_hooks_match_bpftool() -> None:
    # without -L, syscount attaches raw_syscalls:sys_exit alone, through a perf event
    with attached_agent(["syscount-bpfcc", "-i", "60"], 1) as proc:
        want = perf_show_hooks(proc.pid)
        got = ours(proc.pid)
    assert got == want
    assert {(h, t) for _, h, t in got} == {("tracepoint", "sys_exit")}


@contextlib.contextmanager
def scratch_cgroup() -> Iterator[int]:
    path = f"{CGROUP2}/linnix-test-hooks-{os.getpid()}"
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)
        os.rmdir(path)


@pytest.mark.kernel
@pytest.mark.skipif(not os.path.isdir(CGROUP2), reason="needs cgroup v2 at " + CGROUP2)
def test_links_the_test_creates_match_bpftool_link_show() -> None:
    ensure_tracefs()
    fds: list[int] = []
    try:
        with scratch_cgroup() as cg:
            prog = raw_attach.load_prog(raw_attach.BPF_PROG_TYPE_CGROUP_SKB, "lnx_t_cg", ret=1)
            fds.append(prog)
            cg_link = raw_attach.link_create(prog, cg, raw_attach.BPF_CGROUP_INET_INGRESS)
            fds.append(cg_link)
            tp = raw_attach.load_prog(raw_attach.BPF_PROG_TYPE_TRACEPOINT, "lnx_t_tp")
            fds.append(tp)
            event = raw_attach.open_tracepoint("syscalls", "sys_enter_getppid")
            fds.append(event)
            fds.append(raw_attach.link_create(tp, event, raw_attach.BPF_PERF_EVENT))
            up = raw_attach.load_prog(raw_attach.BPF_PROG_TYPE_KPROBE, "lnx_t_up")
            fds.append(up)
            offset = raw_attach.elf_symbol_offset(LIBC, "labs")
            uevent = raw_attach.open_uprobe(LIBC, offset, os.getpid())
            fds.append(uevent)
            fds.append(raw_attach.link_create(up, uevent, raw_attach.BPF_PERF_EVENT))
            prog_ids = {_prog_id(f) for f in (prog, tp, up)}
            listed = [e for e in bpftool_json("link", "show") if e["prog_id"] in prog_ids]
            got = {h.link_id: h for h in hooks.LinkReader().all() if h.prog_id in prog_ids}
            every = [h for h in hooks.all_hooks() if h.prog_id in prog_ids]
            mine = perf_show_hooks(os.getpid())
    finally:
        for fd in reversed(fds):
            os.close(fd)
    assert sorted(got) == sorted(e["id"] for e in listed)
    for e in listed:
        h = got[e["id"]]
        assert h.prog_id == e["prog_id"]
        if e["type"] == "cgroup":
            assert (h.hook, h.cgroup_id) == ("cgroup", e["cgroup_id"])
            assert h.target == f"{e['attach_type']} cgroup_id={e['cgroup_id']}"
        else:
            # this bpftool (7.1) prints no details of perf_event links: the type
            # and program are its part; the target is checked against perf show below
            assert e["type"] == "perf_event"
    perf_links = {(h.prog_id, h.hook, h.target) for h in got.values() if h.hook != "cgroup"}
    assert perf_links == {m for m in mine if m[0] in prog_ids}
    # each attachment once: the perf events behind the two perf-event links are ours too
    assert len(every) == 3, every


def _prog_id(fd: int) -> int:
    from linnix_exporter.kernel.bpf_syscall import prog_id_of_fd

    return prog_id_of_fd(fd)


@pytest.mark.kernel
def test_link_info_offsets_match_btf() -> None:
    """The uapi offsets hooks.py reads, against this kernel's own BTF of bpf_link_info."""
    from linnix_exporter.kernel import btf

    want = {
        "cgroup.cgroup_id": 16,
        "cgroup.attach_type": 24,
        "tracing.attach_type": 16,
        "tracing.target_obj_id": 20,
        "tracing.target_btf_id": 24,
        "raw_tracepoint.tp_name_len": 24,
        "netns.attach_type": 20,
        "tcx.attach_type": 20,
        "netfilter.priority": 24,
        "kprobe_multi.count": 24,
        "uprobe_multi.path_size": 48,
        "uprobe_multi.count": 52,
        "perf_event.type": 16,
        "perf_event.uprobe.file_name": 24,
        "perf_event.uprobe.name_len": 32,
        "perf_event.uprobe.offset": 36,
        "perf_event.kprobe.addr": 40,
        "perf_event.tracepoint.tp_name": 24,
        "perf_event.event.type": 32,
    }
    assert {p: btf.offset_of("bpf_link_info", p) for p in want} == want


def served(d: Any, family: str) -> list[dict[str, str]]:
    """The label sets of one family in the daemon's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body, _ = d.get("/metrics")
    assert status == 200
    return [
        dict(s.labels)
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == family
    ]


@pytest.mark.kernel
def test_daemon_serves_bpftrace_hooks_as_bpftool_lists_them_and_hook_costs() -> None:
    from tests.kernel_helpers import daemon

    script = (
        f"uprobe:{LIBC}:abs {{ @a = count(); }} "
        "tracepoint:syscalls:sys_enter_getppid { @t = count(); }"
    )
    with attached_agent(["bpftrace", "-e", script], 2) as proc:
        want = perf_show_hooks(proc.pid)
        ids = {prog_id for prog_id, _, _ in want}
        with daemon("--collector.hooks", "--bpf.top-programs", "100000", port=19601) as d:
            d.wait_ready()
            deadline = time.monotonic() + 60
            while True:  # until a tick after the owner scan found bpftrace is served
                rows = served(d, "linnix_bpf_program_hook_info")
                got = {(int(r["id"]), r["hook"], r["target"]) for r in rows if int(r["id"]) in ids}
                if got or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            costs = {r["hook"]: r["source"] for r in served(d, "linnix_bpf_hook_cost_seconds")}
    assert got == want
    # uprobes and tracepoints calibrate here; kprobes cannot (no kprobe PMU on this kernel).
    # bpftrace's own program on sys_enter_getppid shares the calibration's tracepoint.
    assert costs["uprobe"] == "measured" and costs["tracepoint"] == "measured_shared", costs
    if not raw_attach.kprobe_supported():
        assert costs["kprobe"] == "unsupported" and costs["fentry"] == "unsupported", costs


@pytest.mark.kernel
def test_reader_calibrates_rarely_and_rescans_on_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made: it calibrates, then a read every `every` s; attachments are re-read when
    a new owner scan arrives (a new owners map), else reused (a fake /proc: the
    holder's fd dir)."""
    from linnix_exporter.snapshot import HookCost, Owner

    calls: list[float] = []
    now = [0.0]
    cost = (HookCost("uprobe", "measured", cost_ns=16_000.0),)

    def calibrate() -> tuple[HookCost, ...]:
        calls.append(now[0])
        return cost

    (tmp_path / "42" / "fd").mkdir(parents=True)
    reader = hooks.HooksReader(calibrate, every=100.0, monotonic=lambda: now[0], proc=str(tmp_path))
    assert calls == [0.0]  # at start-up, before any tick
    scan = {1: (Owner(42, "agent"),)}
    first = reader.read(scan)
    assert first.costs == cost and calls == [0.0]
    # A perf event appears in the holder's fds: not looked at while nothing changed...
    os.symlink("anon_inode:[perf_event]", tmp_path / "42" / "fd" / "7")
    scans: list[list[int]] = []
    real = hooks.perf_event_hooks

    def counting(pids: Any = None, proc: str = "/proc") -> list[Hook]:
        scans.append(list(pids))
        return real(pids=pids, proc=proc)

    monkeypatch.setattr(hooks, "perf_event_hooks", counting)
    now[0] = 50.0
    reader.read(scan)
    assert scans == [] and calls == [0.0]
    # ... and read when the next owner scan arrives (a new map, the same holder); the
    # costs again after 100 s
    now[0] = 120.0
    reader.read({1: (Owner(42, "agent"),), 2: (Owner(42, "agent"),)})
    assert scans == [[42]] and calls == [0.0, 120.0]


def test_cgroup_attachment_labelled_with_its_pod(tmp_path: Path) -> None:
    """A cgroup id is its cgroup v2 directory's inode: a kubepods-style tree (systemd
    driver) and the kubelet's pod log directory name the pod of an attachment on the
    pod's cgroup or a container's below it; a cgroup outside kubepods names none."""
    from linnix_exporter.kernel.attribution import Attributor, CgroupPods

    uid = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
    pod_dir = (
        tmp_path / "cg" / "kubepods.slice" / "kubepods-burstable.slice"
        / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    )  # fmt: skip
    container = pod_dir / f"cri-containerd-{'ab' * 32}.scope"
    container.mkdir(parents=True)
    (tmp_path / "cg" / "system.slice").mkdir()
    (tmp_path / "pods" / f"kube-system_cilium-x7k2p_{uid}").mkdir(parents=True)
    now = [0.0]
    pods = CgroupPods(
        Attributor(str(tmp_path / "pods")).pod, roots=[str(tmp_path / "cg")], clock=lambda: now[0]
    )
    ino = os.stat
    assert pods(ino(pod_dir).st_ino) == ("kube-system", "cilium-x7k2p")
    assert pods(ino(container).st_ino) == ("kube-system", "cilium-x7k2p")
    assert pods(ino(tmp_path / "cg" / "system.slice").st_ino) == ("", "")
    # An unknown id walks the tree again, but not more often than `every`.
    later = pod_dir / "later.scope"
    later.mkdir()
    assert pods(ino(later).st_ino) == ("", "")  # walked at 0 s: not yet
    now[0] = 31.0
    assert pods(ino(later).st_ino) == ("kube-system", "cilium-x7k2p")
    # The reader labels cgroup attachments (and only those) through it.
    reader = hooks.HooksReader(lambda: (), pods=pods, proc=str(tmp_path))
    placed = reader._placed(
        [Hook(5, "cgroup", "cgroup_inet_ingress", link_id=1, cgroup_id=ino(container).st_ino),
         Hook(6, "tracepoint", "sys_enter", pid=1)]
    )  # fmt: skip
    assert [(h.namespace, h.pod) for h in placed] == [("kube-system", "cilium-x7k2p"), ("", "")]


def test_link_still_settling_is_read_on_the_next_walk(tmp_path: Path) -> None:
    """A link the kernel lists while its attach is under way (EAGAIN: read() gives None)
    is read again on the next tick, though the id walk is the same; a read link is not."""
    settled = Hook(9, "raw_tracepoint", "sys_enter", link_id=5)
    answers = {5: [None, settled]}
    reads: list[int] = []

    class Links:
        def ids(self) -> list[int]:
            return [5]

        def read(self, link_id: int) -> Hook | None:
            reads.append(link_id)
            return answers[link_id].pop(0) if answers[link_id] else settled

    reader = hooks.HooksReader(lambda: (), proc=str(tmp_path))
    reader._links = Links()  # type: ignore[assignment]
    owners: dict[int, Any] = {}
    assert reader.read(owners).attachments == ()
    assert reader.read(owners).attachments == (settled,)
    assert reader.read(owners).attachments == (settled,)
    assert reads == [5, 5]  # the third tick reused the second's read


def test_failed_calibration_is_tried_again_soon_then_less_often(tmp_path: Path) -> None:
    """A failed kind has no price: the reader calibrates again after RETRY_SECONDS,
    doubling while it keeps failing, and back to `every` once it succeeds."""
    from linnix_exporter.snapshot import HookCost

    failed = (HookCost("uprobe", "failed", reason="statistics switched mid-arm"),)
    good = (HookCost("uprobe", "measured", cost_ns=16_000.0),)
    answers = [failed, failed, failed, good]
    calls: list[float] = []
    now = [0.0]

    def calibrate() -> tuple[HookCost, ...]:
        calls.append(now[0])
        return answers.pop(0) if answers else good

    class NoLinks:
        def ids(self) -> list[int]:
            return []

    clock = lambda: now[0]  # noqa: E731
    reader = hooks.HooksReader(calibrate, every=3600.0, monotonic=clock, proc=str(tmp_path))
    reader._links = NoLinks()  # type: ignore[assignment]
    for t in range(0, 8000, 5):
        now[0] = float(t)
        reader.read({})
    retry = hooks.RETRY_SECONDS
    assert calls == [0.0, retry, 3 * retry, 7 * retry, 7 * retry + 3600.0, 7 * retry + 7200.0]
    assert reader.read({}).costs == good
