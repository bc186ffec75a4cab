"""Owner -> container -> pod from /proc/PID/cgroup text and pod log directory names
(kernel/attribution.py), on hand-written fixtures of each runtime's path layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from linnix_exporter.kernel.attribution import (
    Attribution,
    Attributor,
    CgroupPlace,
    parse_pod_dir,
    place_from_cgroup,
    place_from_path,
    start_time,
)

CID = "3f1c0b2a" * 8  # 64 hex
UID = "8d2c4b1e-5f6a-4c3b-9e8d-7a6b5c4d3e2f"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "want"),
    [
        # containerd, systemd driver (the shape field notes checked on this machine)
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope",
            CgroupPlace(CID, UID),
        ),
        # guaranteed QoS: no QoS slice
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope", (CID, UID)),
        # CRI-O, systemd driver
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"crio-{CID}.scope",
            (CID, UID),
        ),
        # cgroupfs driver (containerd or CRI-O): bare ids
        (f"/kubepods/burstable/pod{UID}/{CID}", (CID, UID)),
        (f"/kubepods/pod{UID}/{CID}", (CID, UID)),
        # a process in a cgroup below its container's stays the container's
        (f"/kubepods/burstable/pod{UID}/{CID}/init", (CID, UID)),
        # Docker: systemd and cgroupfs drivers
        (f"/system.slice/docker-{CID}.scope", (CID, "")),
        (f"/docker/{CID}", (CID, "")),
        # Podman: systemd (rootful and rootless) and cgroupfs
        (f"/machine.slice/libpod-{CID}.scope", (CID, "")),
        (
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
            (CID, ""),
        ),
        (f"/libpod_parent/libpod-{CID}", (CID, "")),
        # conmon (the runtime's monitor) is not the container
        (f"/machine.slice/libpod-conmon-{CID}.scope", ("", "")),
        (f"/system.slice/crio-conmon-{CID}.scope", ("", "")),
        # seen from another cgroup namespace: relative components
        (
            f"/../../kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope",
            (CID, UID),
        ),
        # a pod's own slice (a process in the pod sandbox cgroup, no container)
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice", ("", UID)),
        # not containers
        ("/", ("", "")),
        ("/system.slice/ssh.service", ("", "")),
        ("/user.slice/user-0.slice/session-3.scope", ("", "")),
        (f"/pod{UID}/{CID[:63]}", ("", "")),  # 63 hex: not an id; pod dir outside kubepods
    ],
)
def test_place_from_path(path: str, want: tuple[str, str]) -> None:
    assert place_from_path(path) == want


def test_cgroup_v2_line_on_a_hybrid_host() -> None:
    text = (
        "9:name=systemd:/\n8:pids:/\n4:memory:/\n1:cpu:/\n"
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n"
    )
    assert place_from_cgroup(text) == (CID, UID)


def test_cgroup_v1_hierarchies() -> None:
    text = (
        f"12:pids:/kubepods/burstable/pod{UID}/{CID}\n"
        f"11:memory:/kubepods/burstable/pod{UID}/{CID}\n"
        "1:name=systemd:/system.slice/containerd.service\n0::/\n"
    )
    assert place_from_cgroup(text) == (CID, UID)


def test_v1_pod_without_container_then_container_elsewhere() -> None:
    # One hierarchy names only the pod, another the container: both are kept.
    text = f"5:cpu:/kubepods/pod{UID}\n4:pids:/docker/{CID}\n0::/\n"
    assert place_from_cgroup(text) == (CID, UID)


def test_pure_v2_host_and_empty() -> None:
    assert place_from_cgroup(f"0::/system.slice/docker-{CID}.scope\n") == (CID, "")
    assert place_from_cgroup("0::/init.scope\n") == ("", "")
    assert place_from_cgroup("") == ("", "")


@pytest.mark.parametrize(
    ("name", "want"),
    [
        (f"kube-system_cilium-x7k2p_{UID}", (UID, "kube-system", "cilium-x7k2p")),
        (f"default_web-0_{UID}", (UID, "default", "web-0")),
        (f"default_web-0_{UID}.tmp", None),
        ("default_web-0", None),
        (f"a_b_c_{UID}", None),  # neither part may hold "_"
        (f"_web_{UID}", None),
        ("lost+found", None),
    ],
)
def test_parse_pod_dir(name: str, want: tuple[str, str, str] | None) -> None:
    assert parse_pod_dir(name) == want


def _fake_proc(root: Path, pid: int, cgroup: str, start: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    # comm with a space and a parenthesis: the parser must count fields after the last ')'.
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (we ird) x) " + " ".join(fields) + "\n")


def test_attributor_resolves_pod_names_and_caches_by_start_time(tmp_path: Path) -> None:
    proc, pods = tmp_path / "proc", tmp_path / "pods"
    pods.mkdir()
    path = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    _fake_proc(proc, 42, path, 1000)
    now = [0.0]
    a = Attributor(str(pods), str(proc), pod_dirs_every=5.0, clock=lambda: now[0])
    # The pod's log directory does not exist yet: container known, pod not.
    assert a(42) == Attribution(CID, "", "")
    (pods / f"prod_api-7f9_{UID}").mkdir()
    assert a(42) == Attribution(CID, "", "")  # the listing is not re-read within 5 s
    now[0] = 6.0
    assert a(42) == Attribution(CID, "prod", "api-7f9")
    # Cached by (pid, start time): the cgroup file is not read again ...
    (proc / "42" / "cgroup").write_text("0::/\n")
    assert a(42) == Attribution(CID, "prod", "api-7f9")
    # ... unless the pid now names another process (another start time).
    _fake_proc(proc, 42, "0::/\n", 2000)
    assert a(42) == Attribution()
    assert a(43) == Attribution()  # gone: no labels, no error


def test_start_time_of_this_process() -> None:
    with open("/proc/self/stat") as f:
        want = int(f.read().rsplit(")", 1)[1].split()[19])
    assert start_time(os.getpid()) == want
    assert start_time(2**22 + 7) is None
