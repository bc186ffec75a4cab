"""A crowded node (issue 20): 2,000 BPF programs that all run, 3,000 maps; what the
exporter costs there, the code before (--baseline) and now side by side in one run.

1. Per-program tick CPU, cold and warm, both read paths (bench/crowded_worker.py, one
   process per arm, arms alternated): the tick state machine with --programs trivial
   socket filters loaded, each run once between ticks (BPF_PROG_TEST_RUN), ticks
   timed with time.thread_time after --idle s asleep (cold) and back to back (warm).
   Each arm also runs with no program of ours loaded (only the node's own, a few
   dozen): "per program" is given two ways, the tick over every program on the node
   (total / programs) and the slope ((tick at N - tick at 0) / added programs), which
   leaves out what a tick costs whatever the number of programs.
2. Reads at this scale (current code, in this process, maps and programs loaded): every
   map's memlock (the read done at each owner scan), program details (full name, JIT'd
   size, map ids: read once per new program), an owner scan by the owners iterator.
3. The whole daemon (probes on, defaults: on demand, 15 s interval) with the programs
   running once a second and the maps held by this process, current and baseline at
   the same time, each scraped every --scrape-interval s over keep-alive: the first
   tick after start (wall time of the start-up collection, served at seq 1), CPU by
   per-thread schedstat over --idle-seconds, RSS, then /metrics latency with --clients
   concurrent keep-alive scrapers (wrk, --wrk-seconds) on one daemon at a time.

With --steps REV,REV,... the per-program tick is also measured at each of those
commits in turn (what each step bought).

Usage: python -m bench.crowded_node [--programs 2000] [--maps 3000] [--baseline REV]
          [--cold 3] [--idle 10] [--warm 20] [--idle-seconds 600] [--scrape-interval 15]
          [--clients 50] [--wrk-seconds 20] [--bursts 40] [--steps REV,...]
          [--skip-ticks] [--skip-daemon]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.collection_cost import percentile
from bench.common import PeriodicScraper, cpu_by_thread, header, loadavg, rev_name, tree_at
from bench.scrape_load import LUA, WRK_TIMEOUT_S, parse_wrk
from tests.kernel_helpers import REPO, Daemon, daemon, proc_status, thread_stats
from tests.support import bpf_maps, trivial_prog
from tests.support.otlp_receiver import HttpReceiver

PORTS = iter(range(19200, 19300))  # this bench's daemons (the machine is shared)


def create_maps(n: int) -> list[int]:
    """n small array maps (16 x 64-byte values), held by their fds in this process."""
    return [
        bpf_maps.create(bpf_maps.BPF_MAP_TYPE_ARRAY, 4, 64, 16, name=f"lnx_crowd{i % 100000}")
        for i in range(n)
    ]


# ---- 1. per-program tick CPU ------------------------------------------------------------


def worker(
    tree: Path, method: str, programs: int, args: argparse.Namespace, extra: list[str] | None = None
) -> dict[str, list]:
    cmd = [
        sys.executable,
        str(REPO / "bench" / "crowded_worker.py"),
        "--tree",
        str(tree),
        "--method",
        method,
        "--programs",
        str(programs),
        "--cold",
        str(args.cold),
        "--idle",
        str(args.idle),
        "--warm",
        str(args.warm),
        *(extra or []),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cold_split(r: dict[str, list]) -> str:
    """Median cold tick per program on the node, over the ticks whose program set was
    the one of the tick before and over those where it had changed (another process
    loaded or unloaded programs: the layout is rebuilt), with their counts."""
    cells = []
    for changed in (False, True):
        per = [
            c / n
            for c, n, ch in zip(r["cold"], r["cold_programs"], r["cold_set_changed"], strict=True)
            if ch == changed
        ]
        cells.append(f"{med(per) * 1e6:.2f} us ({len(per)})" if per else "- (0)")
    return " | ".join(cells)


def compile_floor(out_dir: Path) -> Path | None:
    """bench/syscall_floor.c built with the system's C compiler (None when there is none:
    the floor row is then left out)."""
    exe = out_dir / "syscall_floor"
    src = REPO / "bench" / "syscall_floor.c"
    try:
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"[floor] no C floor: {e}", flush=True)
        return None
    return exe


def tick_table(
    trees: list[tuple[str, Path]], args: argparse.Namespace, c_floor: Path | None
) -> None:
    rows: dict[tuple[str, str, int], dict[str, list]] = {}
    # Alternate the arms: baseline then current for each setting, so a slow minute of
    # the shared machine lands on both. The current code's arm with programs also
    # measures the read path's floor (crowded_worker.py --floor).
    for method in ("iterator", "syscall"):
        for n in (0, args.programs):
            for name, tree in trees:
                la = loadavg()
                extra: list[str] = []
                if name == "current" and n:
                    extra = ["--floor"]
                    if method == "syscall" and c_floor is not None:
                        extra += ["--c-floor", str(c_floor)]
                r = worker(tree, method, n, args, extra)
                r["loadavg"] = [la]  # type: ignore[list-item]
                rows[(name, method, n)] = r
                print(
                    f"[ticks] {name} {method} +{n}: cold "
                    f"{[round(c * 1e3, 2) for c in r['cold']]} ms (programs "
                    f"{r['cold_programs']}, set changed {r['cold_set_changed']}), warm median "
                    f"{med(r['warm']) * 1e3:.2f} ms; load {la}",
                    flush=True,
                )
    print(
        f"\nTick CPU (time.thread_time of the tick, kernel time of the reads included) with "
        f"every program run once between ticks; cold: median of {args.cold} ticks each after "
        f"{args.idle:g} s asleep; warm: median of {args.warm} back to back. No probes, "
        "no owner scan in the measured ticks. per program = tick / programs on the node; "
        "slope = (tick with the added programs - tick without) / added programs."
    )
    print(
        "| code | read path | programs | cold tick | cold per program | cold slope "
        "| warm tick | warm per program | warm slope | cold ticks with a changed set "
        "| cold per program, set unchanged (ticks) | cold per program, set changed (ticks) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in trees:
        for method in ("iterator", "syscall"):
            base, full = rows[(name, method, 0)], rows[(name, method, args.programs)]
            n = med(full["cold_programs"])
            added = n - med(base["cold_programs"])
            cold, cold0 = med(full["cold"]), med(base["cold"])
            warm, warm0 = med(full["warm"]), med(base["warm"])
            changed = sum(full["cold_set_changed"])
            print(
                f"| {name} | {method} | {n:.0f} | {cold * 1e3:.2f} ms | {cold / n * 1e6:.2f} us "
                f"| {(cold - cold0) / added * 1e6:.2f} us | {warm * 1e3:.2f} ms "
                f"| {warm / n * 1e6:.2f} us | {(warm - warm0) / added * 1e6:.2f} us "
                f"| {changed} of {len(full['cold'])} | {cold_split(full)} |"
            )
    floor_rows = [
        (method, rows[("current", method, args.programs)])
        for method in ("iterator", "syscall")
        if rows[("current", method, args.programs)].get("floor")
    ]
    if not floor_rows:
        return
    print(
        "\nThe floor of each read path (same process, same programs, timed the same way: "
        "cold after the same sleep, warm back to back): the iterator's read alone "
        "(BPF_ITER_CREATE + read()s, kernel time, no Python per program); for the syscall "
        "path bench/syscall_floor.c, the same three calls per program (GET_FD_BY_ID, "
        "OBJ_GET_INFO_BY_FD, close) in C, no Python. tick = the current code's whole tick "
        "above."
    )
    print(
        "| read path | floor | floor cold per program | floor warm per program "
        "| tick cold per program | tick warm per program | floor share of the cold tick |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for method, r in floor_rows:
        f: dict[str, list[float]] = r["floor"]  # type: ignore[assignment]
        fc = med(f["cold"]) / med(f["cold_programs"])
        fw = med(f["warm"]) / med(f["warm_programs"])
        tc = med(r["cold"]) / med(r["cold_programs"])
        tw = med(r["warm"]) / med(r["warm_programs"])
        what = "iterator read (kernel)" if method == "iterator" else "C loop, 3 syscalls"
        print(
            f"| {method} | {what} | {fc * 1e6:.2f} us | {fw * 1e6:.2f} us "
            f"| {tc * 1e6:.2f} us | {tw * 1e6:.2f} us | {fc / tc * 100:.0f}% |"
        )


def steps_table(revs: list[str], args: argparse.Namespace) -> None:
    """What each step bought: the same per-program tick at every listed commit, in order."""
    rows = []
    for rev in revs:
        subject = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%s", rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        with tree_at(rev) as tree:
            for method in ("iterator", "syscall"):
                r = worker(tree, method, args.programs, args)
                rows.append((rev_name(rev), subject[:70], method, r))
                print(f"[steps] {rev_name(rev)} {method}: cold {r['cold']}", flush=True)
    print(
        f"\nWhat each step bought: the tick above with +{args.programs} programs at each "
        "commit, in order (cold: median per program on the node; changed: cold ticks in "
        "which the program set had changed, other processes on this shared machine)"
    )
    print(
        "| commit | step | read path | cold per program | warm per program | changed "
        "| cold, set unchanged (ticks) | cold, set changed (ticks) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for rev, subject, method, r in rows:
        n = med(r["cold_programs"])
        print(
            f"| {rev} | {subject} | {method} | {med(r['cold']) / n * 1e6:.2f} us "
            f"| {med(r['warm']) / med(r['warm_programs']) * 1e6:.2f} us "
            f"| {sum(r['cold_set_changed'])} of {len(r['cold'])} | {cold_split(r)} |"
        )


# ---- 2. reads at this scale ---------------------------------------------------------------


def reads_table(programs: int, maps: int) -> None:
    from linnix_exporter.kernel.bpf_objects import ObjectsReader
    from linnix_exporter.kernel.bpf_syscall import ProgReader
    from linnix_exporter.kernel.iter_loader import load_iterators

    reader, owners, why = load_iterators()
    try:
        raws = ProgReader().all()
        rounds = []
        for _ in range(3):
            # A new reader: every map read (start-up); the same reader again: what each
            # owner scan after it reads (the maps whose memlock can move, and new ones).
            objects = ObjectsReader()
            c = time.thread_time()
            memlock = objects.map_memory()
            mem_s = time.thread_time() - c
            c = time.thread_time()
            memlock = objects.map_memory()
            again_s = time.thread_time() - c
            objects = ObjectsReader()  # details are cached: a new reader reads them all
            c = time.thread_time()
            for r in raws:
                objects.details(r.id, r.tag, "")
            det_s = time.thread_time() - c
            scan_s = float("nan")
            if owners is not None:
                c = time.thread_time()
                owners.scan()
                scan_s = time.thread_time() - c
            rounds.append((mem_s, det_s, scan_s, again_s))
            time.sleep(2)
    finally:
        reader.close()
        if owners is not None:
            owners.close()
    mem_s, det_s, scan_s, again_s = (med([r[i] for r in rounds]) for i in range(4))
    print(
        f"\nReads at this scale (current code, thread CPU, median of 3; {len(raws)} programs "
        f"and {len(memlock)} maps on the node, {programs} and {maps} of them ours):"
    )
    print("| read | when | CPU | per object |")
    print("|---|---|---:|---:|")
    print(
        f"| every map's memlock (bpf_objects.map_memory), first read | start "
        f"| {mem_s * 1e3:.1f} ms | {mem_s / max(1, len(memlock)) * 1e6:.2f} us per map |"
    )
    print(
        f"| every map's memlock, read again (new maps and those that can grow) "
        f"| each owner scan | {again_s * 1e3:.1f} ms "
        f"| {again_s / max(1, len(memlock)) * 1e6:.2f} us per map |"
    )
    print(
        f"| program details (name from BTF, JIT'd size, map ids) | once per new program "
        f"| {det_s * 1e3:.1f} ms | {det_s / max(1, len(raws)) * 1e6:.2f} us per program |"
    )
    why_txt = "" if owners is not None else f" (owners iterator unavailable: {why})"
    print(
        f"| owner scan (owners iterator, every fd on the node) | each owner scan{why_txt} "
        f"| {scan_s * 1e3:.1f} ms | {scan_s / max(1, len(raws)) * 1e6:.2f} us per program |"
    )


# ---- 3. the whole daemon ------------------------------------------------------------------


def runner(fds: list[int], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for fd in fds:
            trivial_prog.run(fd)


@contextlib.contextmanager
def crowd(programs: int, maps: int, running: bool = False) -> Iterator[list[int]]:
    """`maps` array maps and `programs` trivial programs held by this process for the
    block (their fds: the programs' are yielded), each program run once first; with
    `running`, every one again each second until the block ends (the daemon benches'
    node, where all of them run between ticks)."""
    map_fds = create_maps(maps)
    fds: list[int] = []
    stop = threading.Event()
    try:
        fds = trivial_prog.load_many(programs, prefix="lnx_crowd")
        for fd in fds:
            trivial_prog.run(fd)
        if running:
            threading.Thread(target=runner, args=(fds, stop), daemon=True).start()
        yield fds
    finally:
        stop.set()
        trivial_prog.close_all(fds)
        for fd in map_fds:
            os.close(fd)


@contextlib.contextmanager
def started(
    name: str, cwd: Path, every: float, env: dict[str, str]
) -> Iterator[tuple[Daemon, PeriodicScraper, dict]]:
    t0 = time.monotonic()
    with daemon(port=next(PORTS), cwd=cwd, env=env) as d:
        d.wait_ready()
        ready_s = time.monotonic() - t0
        first = d.metrics()
        info = {
            "ready_s": ready_s,
            "first_seq": first.get("linnix_exporter_collections_total{}", float("nan")),
            "first_collect_s": first.get("linnix_exporter_collect_duration_seconds{}", 0.0),
        }
        scraper = PeriodicScraper(d.port, every).start()
        try:
            yield d, scraper, info
        finally:
            scraper.close()


def burst_latencies(port: int, clients: int, rounds: int, gap: float) -> list[float]:
    """`clients` keep-alive scrapers that send their GET /metrics at the same instant
    (a barrier), `rounds` times, `gap` s apart: every scrape of a round is in flight at
    once, the worst case of scrapers that happen to coincide. Latency per request."""
    barrier = threading.Barrier(clients)
    lat: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        try:
            for _ in range(rounds):
                barrier.wait()
                t = time.perf_counter()
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                r.read()
                mine.append(time.perf_counter() - t)
                if r.status != 200:
                    raise SystemExit(f"/metrics answered {r.status}")
                time.sleep(gap)
        finally:
            conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def wrk_p99(d: Daemon, clients: int, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(LUA)
        lua.flush()
        cmd = ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--timeout", f"{WRK_TIMEOUT_S}s"]
        cmd += ["-s", lua.name, d.url + "/metrics"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def latency_cells(r: dict[str, float | str]) -> str:
    if "burst_p99" not in r:
        return "- | - | -"
    return (
        f"{float(r['burst_p50']) * 1e3:.1f} / {float(r['burst_p99']) * 1e3:.1f} / "
        f"{float(r['burst_max']) * 1e3:.1f} ms ({float(r['burst_n']):.0f}) "
        f"| {float(r['wrk_p50_us']) / 1e3:.1f} / {float(r['wrk_p99_us']) / 1e3:.1f} / "
        f"{float(r['wrk_max_us']) / 1e3:.1f} ms "
        f"| {float(r['wrk_requests']) / float(r['wrk_duration_us']) * 1e6:.0f}"
    )


def daemon_table(trees: list[tuple[str, Path]], fds: list[int], args: argparse.Namespace) -> None:
    stop = threading.Event()
    threading.Thread(target=runner, args=(fds, stop), daemon=True).start()
    results: dict[str, dict[str, float | str]] = {}
    # The current code also runs with OTLP over HTTP on, to a receiver in this process
    # (its CPU is not the daemon's): memory as the goal states it (<= 40 MB with OTLP).
    rx = HttpReceiver().start()
    env = rx.exporter_env()
    try:
        with contextlib.ExitStack() as stack:
            arms = [(name, t, {}) for name, t in trees] + [("current, OTLP over HTTP", REPO, env)]
            runs = {
                name: stack.enter_context(started(name, t, args.scrape_interval, e))
                for name, t, e in arms
            }
            time.sleep(20)  # past start-up and the first ratios
            la = loadavg()
            before = {n: thread_stats(r[0].proc.pid) for n, r in runs.items()}
            rss: dict[str, list[int]] = {n: [] for n in runs}
            end = time.monotonic() + args.idle_seconds
            while time.monotonic() < end:
                time.sleep(5)
                for n, r in runs.items():
                    rss[n].append(proc_status(r[0].proc.pid, "VmRSS"))
            for n, (d, scraper, info) in runs.items():
                run_s, switches, by_name = cpu_by_thread(before[n], thread_stats(d.proc.pid))
                m = scraper.last
                results[n] = {
                    **info,
                    "cpu_ratio": run_s / args.idle_seconds,
                    "switches_min": switches / args.idle_seconds * 60,
                    "rss_max_mib": max(rss[n]) / 1024,
                    "rss_end_mib": rss[n][-1] / 1024,
                    "programs": m.get("linnix_bpf_programs{}", float("nan")),
                    "maps": m.get("linnix_bpf_maps{}", float("nan")),
                    "collect_ms": m.get("linnix_exporter_collect_duration_seconds{}", 0) * 1e3,
                    "threads": ", ".join(
                        f"{k} {v * 1e3:.0f} ms" for k, v in sorted(by_name.items())
                    ),
                    "loadavg": la,
                }
            for n, (d, scraper, _) in runs.items():
                if "OTLP" in n:
                    continue  # the scrape latency of the same code is measured without
                scraper.close()
                lat = burst_latencies(d.port, args.clients, args.bursts, 1.0)
                results[n].update(
                    {
                        "burst_p50": percentile(lat, 50),
                        "burst_p99": percentile(lat, 99),
                        "burst_max": max(lat),
                        "burst_n": len(lat),
                    }
                )
                w = wrk_p99(d, args.clients, args.wrk_seconds)
                results[n].update({f"wrk_{k}": v for k, v in w.items()})
                print(
                    f"[daemon] {n}: bursts p99 {percentile(lat, 99) * 1e3:.1f} ms; wrk {w}",
                    flush=True,
                )
    finally:
        stop.set()
        rx.stop()
    print(
        f"\nThe daemon at defaults (probes on, on demand, 15 s interval; the current code also "
        f"with OTLP over HTTP, every 60 s to a receiver in this process), {args.programs} "
        f"programs run once a second and {args.maps} maps held by this process; both "
        f"daemons at once, each scraped every {args.scrape_interval:g} s; CPU = per-thread "
        f"schedstat over {args.idle_seconds:g} s; then, on one daemon at a time, "
        f"{args.clients} keep-alive scrapers sending at the same instant, {args.bursts} "
        f"times 1 s apart (bursts), and {args.clients} keep-alive clients scraping back "
        f"to back for {args.wrk_seconds} s (wrk: the server saturated, latency is queueing)"
    )
    print(
        "| code | programs / maps served | first tick (wall, start-up) | ready after "
        "| CPU (share of one core) | wake-ups/min | RSS max / end | last collect "
        "| /metrics p50 / p99 / max, bursts of 50 | wrk p50 / p99 / max, 50 clients "
        "| wrk requests/s | load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, r in results.items():
        print(
            f"| {n} | {r['programs']:.0f} / {r['maps']:.0f} "
            f"| {float(r['first_collect_s']) * 1e3:.0f} ms (seq {r['first_seq']:.0f}) "
            f"| {r['ready_s']:.1f} s | {float(r['cpu_ratio']) * 100:.3f}% "
            f"| {r['switches_min']:.1f} | {r['rss_max_mib']:.1f} / {r['rss_end_mib']:.1f} MiB "
            f"| {r['collect_ms']:.1f} ms | {latency_cells(r)} | {r['loadavg']} |"
        )
    for n, r in results.items():
        print(f"{n} CPU by thread: {r['threads']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=2000)
    ap.add_argument("--maps", type=int, default=3000)
    ap.add_argument("--baseline")
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--scrape-interval", type=float, default=15)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--wrk-seconds", type=int, default=20)
    ap.add_argument("--bursts", type=int, default=40)
    ap.add_argument("--skip-ticks", action="store_true")
    ap.add_argument("--steps", help="commits (a,b,...) for a table of what each step bought")
    ap.add_argument("--skip-daemon", action="store_true")
    args = ap.parse_args()
    if args.programs < 1 or args.maps < 0 or args.cold < 1 or args.warm < 1:
        ap.error("--programs, --cold and --warm must be >= 1, --maps >= 0")
    print(header("python -m bench.crowded_node " + " ".join(sys.argv[1:])))
    print(f"current tree: {rev_name('HEAD')} (+ uncommitted changes, if any)")
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = [("current", REPO)]
        if args.baseline:
            old = stack.enter_context(tree_at(args.baseline))
            trees.insert(0, (f"baseline {rev_name(args.baseline)}", old))
        if not args.skip_ticks:
            floor_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            tick_table(trees, args, compile_floor(floor_dir))
        if args.steps:
            steps_table(args.steps.split(","), args)
        with crowd(args.programs, args.maps) as fds:
            reads_table(args.programs, args.maps)
            if not args.skip_daemon:
                daemon_table(trees, fds, args)


if __name__ == "__main__":
    main()
