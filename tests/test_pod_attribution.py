"""Programs attributed to pods on the real kernel: bpftrace processes moved into real
cgroups in the kubelet's layouts (cgroup v2 under /sys/fs/cgroup/unified with the systemd
driver's slices; cgroup v1 with the cgroupfs driver's directories), a temporary pod log
directory, and the labels the running daemon serves."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_helpers import Daemon, daemon, foreign_agent

pytestmark = pytest.mark.kernel

UNIFIED = Path("/sys/fs/cgroup/unified")
V1_PIDS = Path("/sys/fs/cgroup/pids")


def _cgroup_of(pid: int, hierarchy: str) -> str:
    """The path of `pid` in one hierarchy ("" is v2's `0::` line, else a v1 controller)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, ctrl, path = line.split(":", 2)
        if (hierarchy == "" and hid == "0") or hierarchy in ctrl.split(","):
            return path
    raise AssertionError(f"no {hierarchy or 'v2'} line for {pid}")


@contextlib.contextmanager
def cgroup(root: Path, rel: str, pid: int) -> Iterator[Path]:
    """Create root/rel, move `pid` into it; on exit move it back where it was and remove
    the directories this created (deepest first; parents someone else uses stay)."""
    made: list[Path] = []
    path = root
    for part in rel.split("/"):
        path = path / part
        if not path.exists():
            path.mkdir()
            made.append(path)
    hierarchy = "" if root == UNIFIED else root.name
    home = root / _cgroup_of(pid, hierarchy).lstrip("/")
    (path / "cgroup.procs").write_text(str(pid))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):  # gone already if the process exited
            (home / "cgroup.procs").write_text(str(pid))
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


@contextlib.contextmanager
def bpftrace(script: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    with foreign_agent(["bpftrace", "-e", script]) as (proc, ids):
        yield proc, ids[0]


def _owner_rows(d: Daemon, prog_id: int, deadline: float) -> list[dict[str, str]]:
    """The owner_info label sets the daemon serves for one program id."""
    while True:
        rows = []
        for line in d.get("/metrics")[1].splitlines():
            if line.startswith("linnix_bpf_program_owner_info{") and f'id="{prog_id}"' in line:
                rows.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line)))
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def _cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def test_served_labels_name_pod_namespace_and_container(tmp_path: Path) -> None:
    uid2, uid1 = str(uuid.uuid4()), str(uuid.uuid4())
    cid2, cid1 = _cid(), _cid()
    pods = tmp_path / "pods"
    (pods / f"kube-system_cilium-t3st_{uid2}").mkdir(parents=True)
    (pods / f"falco_falco-v1-pod_{uid1}").mkdir()
    v2_path = (
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{uid2.replace('-', '_')}.slice/cri-containerd-{cid2}.scope"
    )
    v1_path = f"kubepods/besteffort/pod{uid1}/{cid1}"
    with (
        bpftrace("tracepoint:sched:sched_process_fork { @a[comm] = count(); }") as (p2, id2),
        bpftrace("tracepoint:sched:sched_process_exec { @b[comm] = count(); }") as (p1, id1),
        cgroup(UNIFIED, v2_path, p2.pid),
        cgroup(V1_PIDS, v1_path, p1.pid),
    ):
        # What the kernel says now, independently of the exporter.
        assert _cgroup_of(p2.pid, "").endswith(cid2 + ".scope")
        assert _cgroup_of(p1.pid, "pids") == "/" + v1_path
        with daemon("--collect.interval", "1s", "--attribution.pod-logs-path", str(pods)) as d:
            d.wait_ready()
            deadline = time.monotonic() + 30
            rows2 = _owner_rows(d, id2, deadline)
            rows1 = _owner_rows(d, id1, deadline)
            text = d.get("/metrics")[1]
            assert d.stop() == 0
    assert {(r["owner_pid"], r["owner_comm"]) for r in rows2} == {(str(p2.pid), "bpftrace")}
    assert (rows2[0]["container_id"], rows2[0]["namespace"], rows2[0]["pod"]) == (
        cid2,
        "kube-system",
        "cilium-t3st",
    )
    assert (rows1[0]["container_id"], rows1[0]["namespace"], rows1[0]["pod"]) == (
        cid1,
        "falco",
        "falco-v1-pod",
    )
    # The roll-up names the pods too (at 0 or more: the programs may not have run).
    owner = (
        'linnix_bpf_owner_run_time_seconds_total{{namespace="{}",owner_comm="bpftrace",pod="{}"}}'
    )
    assert owner.format("kube-system", "cilium-t3st") in text
    assert owner.format("falco", "falco-v1-pod") in text
    # Cleaned up: no cgroup of ours is left.
    assert not (UNIFIED / v2_path).exists() and not (V1_PIDS / v1_path).exists()
