"""Host preparation and checks: tracefs, kernel headers for bcc, capabilities.

`python -m linnix_exporter.kernel.host` prepares the host (scripts/setup.sh and the
container image call it); the daemon calls the same functions at start-up, so there is
one place that knows how.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS = Path("/sys/kernel/debug")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")

# Linux capability numbers (include/uapi/linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}


class HostError(RuntimeError):
    """The host lacks something we need; the message names the fix."""


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_caps(wanted: tuple[int, ...], caps: int | None = None) -> list[str]:
    """Names of the capabilities in `wanted` that this process lacks."""
    have = effective_caps() if caps is None else caps
    return [CAP_NAMES[c] for c in wanted if not have & (1 << c)]


def _mount(source: str, target: Path, fstype: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise HostError(
            f"cannot mount {fstype} at {target}: {os.strerror(err)}; "
            f"mount it yourself: mount -t {fstype} {fstype} {target}"
        )


def ensure_tracefs() -> bool:
    """Mount tracefs (bcc reads tracepoint formats there). True if we mounted it."""
    if (TRACEFS / "events").is_dir():
        return False
    _mount("tracefs", TRACEFS, "tracefs")
    return True


def ensure_debugfs() -> bool:
    """Mount debugfs; older bcc versions look for tracing under /sys/kernel/debug."""
    if (DEBUGFS / "tracing").exists() or not DEBUGFS.is_dir():
        return False
    try:
        _mount("debugfs", DEBUGFS, "debugfs")
    except HostError:
        return False  # optional: tracefs is what matters
    return True


def _has_headers(build: Path) -> bool:
    return (build / "include" / "generated").is_dir() or (build / "Makefile").is_file()


def ensure_kernel_headers(
    release: str | None = None,
    modules: Path = Path("/lib/modules"),
    debian_headers: str = "/usr/src/linux-headers-*-amd64",
) -> str:
    """Make /lib/modules/$(uname -r)/build usable by bcc; returns what was found/done.

    With no headers for the running kernel (the normal case on these VMs), link the
    Debian linux-headers-*-amd64 tree. Tracepoint argument layouts come from tracefs, so
    programs that read only tracepoint args and helper results compile correctly; task
    struct offsets must come from BTF (kernel/btf.py), never from these headers.
    """
    release = release or os.uname().release
    kdir = modules / release
    build = kdir / "build"
    if _has_headers(build):
        return f"headers present at {build}"
    candidates = sorted(glob.glob(debian_headers))
    if not candidates:
        raise HostError(
            f"no kernel headers for {release} and no Debian headers to fall back on; "
            "install them: apt-get install linux-headers-amd64"
        )
    arch_dir = Path(candidates[-1])
    common = Path(str(arch_dir).removesuffix("-amd64") + "-common")
    kdir.mkdir(parents=True, exist_ok=True)
    for link, target in ((build, arch_dir), (kdir / "source", common)):
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
    return f"linked {build} -> {arch_dir}"


def check_btf(path: Path = BTF_VMLINUX) -> None:
    if not path.is_file():
        raise HostError(
            f"{path} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF, "
            "which the probes need for task_struct offsets"
        )


def prepare() -> list[str]:
    """Everything the probes need from the host; returns what was done, for the log."""
    done = []
    if ensure_tracefs():
        done.append(f"mounted tracefs at {TRACEFS}")
    if ensure_debugfs():
        done.append(f"mounted debugfs at {DEBUGFS}")
    done.append(ensure_kernel_headers())
    check_btf()
    return done


if __name__ == "__main__":
    try:
        for line in prepare():
            print(f"host: {line}")
    except HostError as e:
        print(f"host: {e}", file=sys.stderr)
        sys.exit(1)


def name_thread(name: str) -> None:
    """Name the calling thread in /proc (15 chars), so per-thread CPU readings
    (/proc/PID/task/*/comm, top -H) tell the exporter's threads apart."""
    try:
        with open("/proc/thread-self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass  # cosmetic only
