"""The hooks the daemon SERVES (linnix_bpf_program_hook_info), for three kinds of agent
at once, against what bpftool lists for them (issue 19, "How it must be shown"):

- bpftrace with a uprobe and a tracepoint (perf events its process holds);
- a bcc tool, syscount (a perf event on raw_syscalls:sys_exit, held by a Python process);
- a link the test creates: a cgroup_skb program on a scratch cgroup (BPF_LINK_CREATE).

`bpftool perf show` and `bpftool link show` are the oracle; the served set of those
programs must equal theirs exactly, no attachment more or less. tests/test_hooks.py
checks the same readers without the daemon."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from linnix_exporter.kernel import raw_attach
from linnix_exporter.kernel.bpf_syscall import prog_id_of_fd
from tests.kernel_helpers import daemon
from tests.test_hooks import (
    CGROUP2,
    LIBC,
    attached_agent,
    bpftool_json,
    perf_show_hooks,
    scratch_cgroup,
    served,
)

pytestmark = pytest.mark.kernel

PORT = 20210
BPFTRACE = (
    f"uprobe:{LIBC}:abs {{ @a = count(); }} "
    "tracepoint:syscalls:sys_enter_getppid { @t = count(); }"
)


@contextlib.contextmanager
def cgroup_link() -> Iterator[int]:
    """A cgroup_skb program linked to a scratch cgroup; yields its program id."""
    with scratch_cgroup() as cg:
        prog = raw_attach.load_prog(raw_attach.BPF_PROG_TYPE_CGROUP_SKB, "lnx_t_served", ret=1)
        try:
            link = raw_attach.link_create(prog, cg, raw_attach.BPF_CGROUP_INET_INGRESS)
            try:
                yield prog_id_of_fd(prog)
            finally:
                os.close(link)
        finally:
            os.close(prog)


def link_show_hooks(prog_ids: set[int]) -> set[tuple[int, str, str]]:
    """bpftool link show's links of these programs, written as kernel/hooks.py writes a
    cgroup link's target."""
    out = set()
    for e in bpftool_json("link", "show"):
        if e["prog_id"] in prog_ids:
            assert e["type"] == "cgroup", e  # the only link kind this test makes
            out.add((e["prog_id"], "cgroup", f"{e['attach_type']} cgroup_id={e['cgroup_id']}"))
    return out


@pytest.mark.skipif(shutil.which("syscount-bpfcc") is None, reason="needs bpfcc-tools")
@pytest.mark.skipif(not os.path.isdir(CGROUP2), reason="needs cgroup v2 at " + CGROUP2)
def test_served_hooks_of_bpftrace_bcc_and_a_link_equal_bpftool() -> None:
    with (
        attached_agent(["bpftrace", "-e", BPFTRACE], 2) as tracer,
        attached_agent(["syscount-bpfcc", "-i", "60"], 1) as bcc,
        cgroup_link() as cg_prog,
    ):
        want = perf_show_hooks(tracer.pid) | perf_show_hooks(bcc.pid)
        want |= link_show_hooks({cg_prog})
        ids = {prog_id for prog_id, _, _ in want}
        # each agent is there, with the kinds the issue names
        assert {h for _, h, _ in perf_show_hooks(tracer.pid)} == {"uprobe", "tracepoint"}
        assert {h for _, h, _ in perf_show_hooks(bcc.pid)} == {"tracepoint"}
        assert cg_prog in ids
        # every program listed, idle ones too: a shared node may hold thousands (4,051
        # once here, another session's bench), and an idle cgroup program ranks last
        with daemon("--collector.hooks", "--bpf.top-programs", "100000", port=PORT) as d:
            d.wait_ready()
            deadline = time.monotonic() + 60
            while True:  # until a tick after the owner scan found all three is served
                rows = served(d, "linnix_bpf_program_hook_info")
                got = {(int(r["id"]), r["hook"], r["target"]) for r in rows if int(r["id"]) in ids}
                if got == want or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        # bpftool again: nothing came or went while the daemon read (else no oracle)
        again = perf_show_hooks(tracer.pid) | perf_show_hooks(bcc.pid)
        assert again | link_show_hooks({cg_prog}) == want
    assert got == want, (sorted(got - want), sorted(want - got))
