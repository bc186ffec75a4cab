"""deploy/image_headers.py: the kernel header files the image keeps for bcc's compile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.image_headers import header_entries, traced_paths
from tests.kernel_helpers import REPO

# strace -f output, hand-written after a real trace: bcc chdir()s into the kernel source
# directory and clang opens headers relative to it; failed calls and other pids' cwd
# must not count.
STRACE = """\
100  openat(AT_FDCWD, "/usr/lib/python3/dist-packages/bcc/__init__.py", O_RDONLY|O_CLOEXEC) = 3
100  newfstatat(AT_FDCWD, "/lib/modules/6.18.0/source/include/linux/kconfig.h", {...}, 0) = 0
100  chdir("/lib/modules/6.18.0/source") = 0
100  openat(AT_FDCWD, "././include/linux/kconfig.h", O_RDONLY|O_CLOEXEC) = 5
100  openat(AT_FDCWD, "include/linux/types.h", O_RDONLY|O_CLOEXEC) = 5
100  openat(AT_FDCWD, "include/linux/missing.h", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such)
101  openat(AT_FDCWD, "relative.h", O_RDONLY) = 4
100  chdir("/work") = 0
100  openat(AT_FDCWD, "include/linux/types.h", O_RDONLY|O_CLOEXEC) = 6
"""


def test_traced_paths_follow_each_pids_working_directory() -> None:
    assert traced_paths(STRACE, "/start") == {
        "/usr/lib/python3/dist-packages/bcc/__init__.py",
        "/lib/modules/6.18.0/source/include/linux/kconfig.h",
        "/lib/modules/6.18.0/source/include/linux/types.h",
        "/start/relative.h",  # pid 101 never changed directory
        "/work/include/linux/types.h",
    }


def test_header_entries_name_files_of_the_two_debian_directories(tmp_path: Path) -> None:
    src = tmp_path / "src"
    amd64 = src / "linux-headers-6.1.0-9-amd64"
    common = src / "linux-headers-6.1.0-9-common"
    for f in (amd64 / "include/generated/autoconf.h", common / "include/linux/types.h"):
        f.parent.mkdir(parents=True)
        f.write_text("")
    (tmp_path / "other.h").write_text("")
    build = tmp_path / "build"
    build.symlink_to(amd64)  # what /lib/modules/$(uname -r)/build is on a prepared host
    paths = {
        f"{build}/include/generated/autoconf.h",  # through the link
        str(common / "include/linux/types.h"),
        str(common / "include/linux"),  # a directory: its files say what is needed
        str(tmp_path / "other.h"),  # not in the header packages
    }
    assert header_entries(paths, str(src)) == [
        "amd64/include/generated/autoconf.h",
        "common/include/linux/types.h",
    ]


@pytest.mark.kernel
def test_the_list_is_what_the_compile_reads_now() -> None:
    """Compiles both programs under strace (as deploy/image_headers.py does) and
    compares with the committed list: bpf/*.c or bcc changed -> regenerate it."""
    out = subprocess.run(
        [sys.executable, "-m", "deploy.image_headers", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
