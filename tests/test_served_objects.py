"""Kernel memory and the owner roll-up as a running daemon serves them, against bpftool
(programs' bytes_jited and map_ids, maps' bytes_memlock), /proc/*/fdinfo (which process
holds which program: `prog_id:` of program and link fds) and the jit-limit sysctl, all
read by the test just before and just after the ticks it checks.

The readers are checked against bpftool in test_bpf_objects.py and test_owner_iter.py;
here the served figures are: what reaches /metrics after the roll-up, the "[other]"
rows and the node sums.

A foreign agent with a name only this test uses (bpftrace through a symlink, so its
comm is the link's name) holds one program and its maps: an owner whose programs the
test knows from outside. Other owners on a shared node are checked too when their
programs and holders stayed the same over the readings (others load and unload all the
time); an attempt in which the agent's did not is measured again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_helpers import Daemon, bpftool_progs, daemon, foreign_agent

pytestmark = pytest.mark.kernel

INTERVAL = 3.0  # long enough for the readings (bpftool twice, an fdinfo walk) between ticks
ATTEMPTS = 5
NS = 1e9
JIT_LIMIT = Path("/proc/sys/net/core/bpf_jit_limit")
OWNER = "linnix_bpf_owner_"
PROGRAM = "linnix_bpf_program_"


def bpftool_maps() -> dict[int, dict[str, Any]]:
    out = subprocess.run(
        ["bpftool", "map", "show", "-j"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {m["id"]: m for m in json.loads(out)}


def holders_by_program() -> tuple[dict[int, frozenset[int]], dict[int, str]]:
    """Every process holding a program or link fd, by program id (from `prog_id:` in
    /proc/PID/fdinfo), and the comm of each such process."""
    held: dict[int, set[int]] = {}
    comms: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            for fd in (proc / "fdinfo").iterdir():
                with contextlib.suppress(OSError), open(fd) as f:
                    for line in f:
                        if line.startswith("prog_id:"):
                            held.setdefault(int(line.split()[1]), set()).add(pid)
            if any(pid in h for h in held.values()):
                comms[pid] = (proc / "comm").read_text().strip()
        except OSError:
            continue
    return {k: frozenset(v) for k, v in held.items()}, comms


@dataclass(frozen=True)
class Objects:
    """The test's own readings at one moment, all taken between wall0 and wall1."""

    wall0: float
    progs: dict[int, dict[str, Any]]
    maps: dict[int, dict[str, Any]]
    holders: dict[int, frozenset[int]]
    comms: dict[int, str]
    wall1: float

    def owner_of(self, prog_id: int) -> str:
        """The served rule: each program once, under its lowest-pid holder."""
        pids = self.holders.get(prog_id)
        return self.comms.get(min(pids), "?") if pids else "[none]"

    def programs_of(self) -> dict[str, frozenset[int]]:
        out: dict[str, set[int]] = {}
        for prog_id in self.progs:
            out.setdefault(self.owner_of(prog_id), set()).add(prog_id)
        return {k: frozenset(v) for k, v in out.items()}


def read_objects() -> Objects:
    wall0 = time.time()
    progs = bpftool_progs()
    maps = bpftool_maps()
    holders, comms = holders_by_program()
    return Objects(wall0, progs, maps, holders, comms, time.time())


@dataclass(frozen=True)
class Tick:
    before: Objects
    served: dict[str, float]
    after: Objects


def bracketed_tick(d: Daemon, after_seq: float = 0) -> Tick | None:
    """Readings before and after one tick (later than `after_seq`), or None if the tick
    read the kernel while the test was reading (a late wake-up on a busy node)."""
    before = read_objects()
    m = d.wait_tick_after(before.wall1)
    after = read_objects()
    stamp = m["linnix_exporter_last_collect_timestamp_seconds{}"]
    took = m["linnix_exporter_collect_duration_seconds{}"]
    if not before.wall1 < stamp - took or not stamp + took < after.wall0:
        return None
    if m["linnix_exporter_collections_total{}"] <= after_seq:
        return None
    return Tick(before, m, after)


def two_consecutive_ticks(d: Daemon) -> tuple[Tick, Tick]:
    missed = []
    for _ in range(ATTEMPTS):
        a = bracketed_tick(d)
        b = bracketed_tick(d, a.served["linnix_exporter_collections_total{}"]) if a else None
        seq = "linnix_exporter_collections_total{}"
        if a and b and b.served[seq] == a.served[seq] + 1:
            return a, b
        missed.append("not bracketed" if not (a and b) else "not consecutive")
    raise AssertionError(f"no two consecutive ticks bracketed in {ATTEMPTS}: {missed}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """bpftrace counting forks per comm, exec'd through a symlink named for this test:
    yields (its comm, its program id)."""
    comm = f"lnxown{os.getpid() % 100000:05d}"
    link = tmp_path_factory.mktemp("agent") / comm
    bpftrace = shutil.which("bpftrace")
    assert bpftrace
    link.symlink_to(bpftrace)
    argv = [str(link), "-e", "tracepoint:sched:sched_process_fork { @[comm] = count(); }"]
    with foreign_agent(argv) as (proc, (prog_id,)):
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm
        yield comm, prog_id


@pytest.fixture(scope="module")
def ticks(agent: tuple[str, int]) -> Iterator[tuple[Tick, Tick]]:
    # Every program and owner listed (no "[other]" to subtract); owners and maps'
    # memory rescanned at every tick (refresh under the interval, a budget that never
    # defers a scan): the served figures are the ones read at the bracketed ticks.
    with daemon(
        "--collect.mode", "timer",
        "--collect.interval", f"{INTERVAL:g}s",
        "--bpf.top-programs", "1000",
        "--bpf.owner-refresh", "1s",
        "--bpf.owner-scan-budget", "1",
        "--bpf.stats-mode", "always",
    ) as d:  # fmt: skip
        d.wait_ready()
        d.wait_tick(1)
        yield two_consecutive_ticks(d)
        assert d.stop() == 0


def served_by_id(m: dict[str, float], family: str) -> dict[int, float]:
    out = {}
    for k, v in m.items():
        if k.startswith(family + "{id=") and "name=[other]" not in k:
            out[int(k.split("id=")[1].split(",")[0])] = v
    return out


def stable(t: Tick, prog_id: int) -> bool:
    return prog_id in t.before.progs and prog_id in t.after.progs


def memlock(o: Objects, map_ids: set[int]) -> int | None:
    """Σ bytes_memlock of these maps, None if one is gone."""
    if not map_ids <= o.maps.keys():
        return None
    return sum(int(o.maps[i]["bytes_memlock"]) for i in map_ids)


def test_program_jit_bytes_and_maps_against_bpftool(
    ticks: tuple[Tick, Tick], agent: tuple[str, int]
) -> None:
    """Fixed for a program's life: exact, for every listed program bpftool saw on both
    sides of the tick."""
    t = ticks[1]
    jited = served_by_id(t.served, "linnix_bpf_program_jited_bytes")
    maps = served_by_id(t.served, "linnix_bpf_program_maps")
    checked = [i for i in jited if stable(t, i)]
    for i in checked:
        p = t.after.progs[i]
        assert jited[i] == p.get("bytes_jited", 0), (i, jited[i], p)
        assert maps[i] == len(p.get("map_ids", [])), (i, maps[i], p)
    assert agent[1] in checked and len(checked) >= 6  # the agent, our 4 probes, iterators


def test_program_map_memory_against_bpftool(
    ticks: tuple[Tick, Tick], agent: tuple[str, int]
) -> None:
    """Σ bytes_memlock of the program's maps. A map's memlock is read at each owner scan
    (every tick here) and can change (a hash map without preallocation grows with its
    elements): exact when bpftool read the same on both sides of the tick, else between
    the two; a program with a map gone in between is left out."""
    t = ticks[1]
    served = served_by_id(t.served, "linnix_bpf_program_map_memory_bytes")
    checked = 0
    for i, v in served.items():
        if not stable(t, i):
            continue
        ids = set(t.after.progs[i].get("map_ids", []))
        lo, hi = memlock(t.before, ids), memlock(t.after, ids)
        if lo is None or hi is None:
            continue
        assert min(lo, hi) <= v <= max(lo, hi), (i, lo, v, hi)
        checked += 1
    assert agent[1] in served and served[agent[1]] > 0  # bpftrace's count map
    assert checked >= 6


def test_node_objects_against_bpftool_and_the_sysctl(ticks: tuple[Tick, Tick]) -> None:
    """Every map on the node once, every program's JIT'd size, the jit limit: between
    what bpftool listed before and after the tick (objects come and go on a shared node;
    a map or program in both readings is in the served sum, one in either may be)."""
    t = ticks[1]
    m, b, a = t.served, t.before, t.after
    both_maps, either_maps = b.maps.keys() & a.maps.keys(), b.maps.keys() | a.maps.keys()
    assert len(both_maps) <= m["linnix_bpf_maps{}"] <= len(either_maps)

    def mem(ids: set[int], pick: Any) -> int:
        return sum(
            pick(int(o.maps[i]["bytes_memlock"]) for o in (b, a) if i in o.maps) for i in ids
        )

    lo, hi = mem(both_maps, min), mem(either_maps, max)
    assert lo <= m["linnix_bpf_map_memory_bytes{}"] <= hi, (lo, hi)
    both, either = b.progs.keys() & a.progs.keys(), b.progs.keys() | a.progs.keys()

    def jit(ids: set[int]) -> int:
        return sum(int((a.progs.get(i) or b.progs[i]).get("bytes_jited", 0)) for i in ids)

    assert jit(both) <= m["linnix_bpf_jited_bytes{}"] <= jit(either)
    assert m["linnix_bpf_jit_limit_bytes{}"] == int(JIT_LIMIT.read_text())
    # Every program is listed here, so the "[other]" rows hold nothing.
    rows = ("map_memory_bytes", "maps", "jited_bytes")
    other = [k for k in m if "name=[other]" in k and k.split("{")[0] in {PROGRAM + r for r in rows}]
    assert len(other) == 3 and all(m[k] == 0 for k in other), {k: m[k] for k in other}


def owner_key(comm: str) -> str:
    return f"{{namespace=,owner_comm={comm},pod=}}"


def test_owner_rollup_against_bpftool_and_fdinfo(
    ticks: tuple[Tick, Tick], agent: tuple[str, int]
) -> None:
    """Each owner (the lowest-pid holder's comm, from the test's own fdinfo walk): its run
    time over the interval between bpftool's run time of the programs it holds read
    around the two ticks (a bracket, as in test_served_oracles.py), its share of the node
    over the served interval, its JIT'd bytes (exact) and its maps' memory (each map once
    per owner; exact when unchanged, else between). Owners whose programs or holders
    changed over the readings are left out; the agent's never may."""
    a, b = ticks
    comm, agent_id = agent
    cpus = b.served["linnix_node_cpus{}"]
    node_s = b.served["linnix_overhead_interval_seconds{}"] * cpus
    sets = [o.programs_of() for o in (a.before, a.after, b.before, b.after)]
    checked = []
    for owner, progs in sets[0].items():
        key = owner_key(owner)
        if owner in ("[none]", "?") or any(s.get(owner) != progs for s in sets[1:]):
            continue  # held by no one (a transient reader like bpftool may own it), or changed
        if OWNER + "run_time_seconds_total" + key not in b.served:
            continue
        grew = (
            b.served[OWNER + "run_time_seconds_total" + key]
            - a.served[OWNER + "run_time_seconds_total" + key]
        )

        def rt(o: Objects, ids: frozenset[int] = progs) -> int:
            return sum(int(o.progs[i].get("run_time_ns", 0)) for i in ids)

        lo, hi = rt(b.before) - rt(a.after), rt(b.after) - rt(a.before)
        assert lo <= round(grew * NS) <= hi, (owner, lo, grew * NS, hi)
        ratio = b.served[OWNER + "cpu_ratio" + key]
        assert lo / NS / node_s <= ratio <= hi / NS / node_s, (owner, ratio)
        jited = sum(int(b.after.progs[i].get("bytes_jited", 0)) for i in progs)
        assert b.served[OWNER + "jited_bytes" + key] == jited, owner
        maps = {m for i in progs for m in b.after.progs[i].get("map_ids", [])}
        mem_lo, mem_hi = memlock(b.before, maps), memlock(b.after, maps)
        if mem_lo is not None and mem_hi is not None:
            got = b.served[OWNER + "map_memory_bytes" + key]
            assert min(mem_lo, mem_hi) <= got <= max(mem_lo, mem_hi), (owner, got)
        checked.append(owner)
    assert comm in checked, (comm, checked)
    # The agent's one program ran (forks on the node) and is all of its owner's time.
    assert sets[0][comm] == {agent_id}


def test_collection_time_and_stamp_against_the_tests_clock() -> None:
    """On demand, a scrape that finds the last read stale waits for a new one: that
    collection (one more in collections_total), its timestamp and its duration lie within
    the scrape as the test timed it, and each collector's read within the collection (they
    run one after another)."""
    with daemon("--no-probes.enabled", "--collect.interval", "1s") as d:
        d.wait_ready()
        s = d.session()
        before = s.metrics()
        for _ in range(3):  # a late scrape on a busy node may still find it fresh: retry
            time.sleep(1.5)  # stale by then: the next scrape collects first
            wall0, mono0 = time.time(), time.monotonic()
            m = s.metrics()
            took_scrape, wall1 = time.monotonic() - mono0, time.time()
            if (
                m["linnix_exporter_collections_total{}"]
                == before["linnix_exporter_collections_total{}"] + 1
            ):
                break
            before = m
        else:
            raise AssertionError("no scrape caused exactly one collection in 3 tries")
        s.close()
        assert d.stop() == 0
    stamp = m["linnix_exporter_last_collect_timestamp_seconds{}"]
    took = m["linnix_exporter_collect_duration_seconds{}"]
    assert wall0 <= stamp <= wall1, (wall0, stamp, wall1)
    assert 0 < took <= took_scrape, (took, took_scrape)
    each = {
        k.split("collector=")[1].rstrip("}"): v
        for k, v in m.items()
        if k.startswith("linnix_exporter_collector_duration_seconds{")
    }
    # Every collector but the probes (not loaded here) read in that collection.
    assert {"programs", "owners", "self"} <= set(each) and "probes" not in each, each
    assert all(v > 0 for v in each.values()) and sum(each.values()) <= took, (each, took)
