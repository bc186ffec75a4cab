"""Which container and Kubernetes pod a process runs in: /proc/PID/cgroup and the
kubelet's pod log directory, no API server.

- Container id: the 64-hex id a runtime puts in the cgroup path, under cgroup v2 (the
  `0::` line) or v1 (one line per controller hierarchy). Path shapes, systemd and
  cgroupfs drivers:
    containerd  .../cri-containerd-<id>.scope           .../kubepods/<qos>/pod<uid>/<id>
    CRI-O       .../crio-<id>.scope  (crio-conmon-<id>.scope is the monitor, not the container)
    Docker      .../docker-<id>.scope                   /docker/<id>
    Podman      .../libpod-<id>.scope (libpod-conmon-<id>: monitor)  /libpod_parent/libpod-<id>
  A process in a cgroup below the container's (`.../<id>.scope/init`) still belongs to it.
  Paths may start with `/..` when read from inside another cgroup namespace: only the
  components are matched, never the root.
- Pod uid: the kubepods slice (`kubepods-<qos>-pod<uid with _>.slice`, systemd driver) or
  directory (`kubepods/<qos>/pod<uid>`, cgroupfs driver).
- Namespace and pod name: the kubelet keeps one directory per pod under /var/log/pods,
  named `<namespace>_<name>_<uid>` (neither a namespace nor a pod name may contain `_`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple

DEFAULT_POD_LOGS = "/var/log/pods"
_CACHE_MAX = 4096  # processes remembered; owners of BPF programs are far fewer


class Attribution(NamedTuple):
    container_id: str = ""
    namespace: str = ""
    pod: str = ""


NONE = Attribution()

_HEX64 = r"[0-9a-f]{64}"
# One path component naming a container, runtime prefix and .scope suffix included.
_CONTAINER = re.compile(
    rf"^(?:(?:cri-containerd|crio|docker|libpod)-(?P<scoped>{_HEX64})\.scope"
    rf"|(?P<bare>{_HEX64})|libpod-(?P<libpod>{_HEX64}))$"
)
# kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice (guaranteed), or pod<uid>.
_POD_SLICE = re.compile(r"^kubepods(?:-[a-z]+)?-pod(?P<uid>[0-9a-f_]{36})\.slice$")
_POD_DIR = re.compile(r"^pod(?P<uid>[0-9a-f-]{36})$")


class CgroupPlace(NamedTuple):
    container_id: str
    pod_uid: str


def place_from_path(path: str) -> CgroupPlace:
    """Container id and pod uid named by one cgroup path ("" when absent)."""
    container = uid = ""
    in_kubepods = False
    for part in path.split("/"):
        if part.startswith("kubepods"):
            in_kubepods = True
        m = _POD_SLICE.match(part)
        if m:
            uid = m.group("uid").replace("_", "-")
            continue
        if in_kubepods:
            m = _POD_DIR.match(part)
            if m:
                uid = m.group("uid")
                continue
        m = _CONTAINER.match(part)
        if m and not container:  # the outermost: a nested cgroup stays the container's
            container = m.group("scoped") or m.group("bare") or m.group("libpod") or ""
    return CgroupPlace(container, uid)


def place_from_cgroup(text: str) -> CgroupPlace:
    """The container and pod of a process from its /proc/PID/cgroup text: the cgroup v2
    line first (on a hybrid host it is the one runtimes using the unified hierarchy
    write), then the v1 hierarchies in the order the kernel lists them."""
    v2 = ""
    v1: list[str] = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        _, _, path = rest.partition(":")
        if hid == "0":
            v2 = path
        else:
            v1.append(path)
    best = CgroupPlace("", "")
    for path in (v2, *v1):
        got = place_from_path(path)
        if got.container_id:
            return CgroupPlace(got.container_id, got.pod_uid or best.pod_uid)
        if got.pod_uid and not best.pod_uid:
            best = got
    return best


def parse_pod_dir(name: str) -> tuple[str, str, str] | None:
    """`<namespace>_<pod>_<uid>` -> (uid, namespace, pod), None for anything else."""
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    ns, pod, uid = parts
    if not re.fullmatch(r"[0-9a-f-]{36}", uid):
        return None
    return uid, ns, pod


def read_pod_dirs(root: str) -> dict[str, tuple[str, str]]:
    """uid -> (namespace, pod) for every pod directory under `root` (empty if absent)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for n in names:
        got = parse_pod_dir(n)
        if got is not None:
            out[got[0]] = (got[1], got[2])
    return out


def start_time(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, it names one
    process even after the pid is reused. None if the process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


class Attributor:
    """pid -> Attribution, cached by (pid, start time): a process does not change pod,
    and a reused pid has another start time. The pod directory listing is re-read when
    a pod uid it does not know shows up, at most every `pod_dirs_every` seconds (pods
    are created far less often than that matters)."""

    def __init__(
        self,
        pod_logs_path: str = DEFAULT_POD_LOGS,
        proc: str = "/proc",
        pod_dirs_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = pod_logs_path
        self._proc = proc
        self._every = pod_dirs_every
        self._clock = clock
        self._pods: dict[str, tuple[str, str]] = {}
        self._pods_at = float("-inf")
        # (pid, start time) -> (attribution, pod uid still to resolve to a name or "").
        self._cache: dict[tuple[int, int], tuple[Attribution, str]] = {}

    def _pod(self, uid: str) -> tuple[str, str]:
        got = self._pods.get(uid)
        if got is None and self._clock() - self._pods_at >= self._every:
            self._pods = read_pod_dirs(self._root)
            self._pods_at = self._clock()
            got = self._pods.get(uid)
        return got or ("", "")

    def pod(self, uid: str) -> tuple[str, str]:
        """(namespace, pod name) of a pod uid; ("", "") while unknown."""
        return self._pod(uid)

    def __call__(self, pid: int) -> Attribution:
        started = start_time(pid, self._proc)
        if started is None:
            return NONE
        key = (pid, started)
        hit = self._cache.get(key)
        if hit is not None:
            got, unresolved = hit
            if not unresolved:
                return got
            # A pod whose log directory did not exist yet (the kubelet creates it as the
            # pod starts): look again, at the listing's pace.
            ns, pod = self._pod(unresolved)
            if pod:
                got = Attribution(got.container_id, ns, pod)
                self._cache[key] = (got, "")
            return got
        try:
            with open(f"{self._proc}/{pid}/cgroup") as f:
                place = place_from_cgroup(f.read())
        except OSError:
            return NONE
        ns, pod = self._pod(place.pod_uid) if place.pod_uid else ("", "")
        got = Attribution(place.container_id, ns, pod)
        if len(self._cache) >= _CACHE_MAX:  # exited owners: start again rather than grow
            self._cache.clear()
        self._cache[key] = (got, place.pod_uid if place.pod_uid and not pod else "")
        return got


def cgroup2_roots(mounts: str = "/proc/self/mounts") -> list[str]:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
    host)."""
    try:
        with open(mounts) as f:
            return [ln.split()[1] for ln in f if ln.split()[2:3] == ["cgroup2"]]
    except OSError:
        return []


class CgroupPods:
    """cgroup id -> (namespace, pod): the pod whose cgroup a cgroup attachment is on.
    A cgroup id is its cgroup v2 directory's inode: the tree is walked for it (a few
    thousand directories on a busy node) only when an id the last walk did not see
    shows up, at most every `every` seconds; the path names the pod uid
    (place_from_path) and `pod_of_uid` its namespace and name (Attributor.pod)."""

    def __init__(
        self,
        pod_of_uid: Callable[[str], tuple[str, str]],
        roots: list[str] | None = None,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pod_of_uid = pod_of_uid
        self._roots = roots
        self._every = every
        self._clock = clock
        self._walked_at = float("-inf")
        self._uid_by_ino: dict[int, str] = {}

    def _walk(self) -> None:
        roots = cgroup2_roots() if self._roots is None else self._roots
        found: dict[int, str] = {}
        for root in roots:
            for path, dirs, _ in os.walk(root):
                for d in dirs:
                    full = os.path.join(path, d)
                    try:
                        ino = os.stat(full).st_ino
                    except OSError:
                        continue  # removed meanwhile
                    found[ino] = place_from_path(os.path.relpath(full, root)).pod_uid
        self._uid_by_ino = found
        self._walked_at = self._clock()

    def __call__(self, cgroup_id: int) -> tuple[str, str]:
        uid = self._uid_by_ino.get(cgroup_id)
        if uid is None and self._clock() - self._walked_at >= self._every:
            self._walk()
            uid = self._uid_by_ino.get(cgroup_id)
        return self._pod_of_uid(uid) if uid else ("", "")
