"""Where the daemon's memory goes on a crowded node (issue 20, points 3 and 4): the
exporter at defaults with OTLP over HTTP, --programs programs run once a second and
--maps maps held by this process, scraped every 15 s, run under tracemalloc (this file
as its launcher). After --seconds the daemon writes one snapshot: Python allocations
by file (the kernel readers' and tables' state per program and per map), the lines
that hold most, and its VmRSS and /proc/self/smaps totals (Python heap, anonymous
mappings, shared libraries). tracemalloc's own tables inflate VmRSS: read the traced
sizes, not the RSS, for the state.

Usage: python -m bench.daemon_memory [--programs 2000] [--maps 3000] [--seconds 120]
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ANON, HEAP, LIBS = (
    "anonymous (pymalloc arenas, malloc, stacks)",
    "[heap] (malloc)",
    "shared libraries",
)


def smaps_totals(pid: int | str = "self") -> dict[str, int]:
    """KiB resident by mapping kind: [heap], anonymous, shared libraries, other files."""
    kinds: dict[str, int] = {}
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and ":" not in parts[0]:
                name = parts[5] if len(parts) > 5 else ""
                kind = (
                    ANON
                    if not name
                    else HEAP
                    if name == "[heap]"
                    else LIBS
                    if ".so" in name
                    else "other"
                )
            elif parts[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(parts[1])
    return kinds


def snapshot_after(seconds: float, out: str) -> None:
    time.sleep(seconds)
    snap = tracemalloc.take_snapshot()
    cur, _ = tracemalloc.get_traced_memory()
    with open(out, "w") as f:
        rss = next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS"))  # noqa: SIM115
        f.write(f"after {seconds:g} s: {rss.strip()}, traced {cur / 2**20:.2f} MiB\n")
        for kind, kib in sorted(smaps_totals().items(), key=lambda kv: -kv[1]):
            f.write(f"  resident {kib / 1024:6.1f} MiB  {kind}\n")
        stats = snap.statistics("filename")
        ours = [s for s in stats if "linnix_exporter" in str(s.traceback)]
        f.write(
            f"Python allocations held by linnix_exporter's modules: "
            f"{sum(s.size for s in ours) / 2**20:.2f} MiB in {sum(s.count for s in ours)} blocks\n"
        )
        for s in ours[:15]:
            f.write(f"  {s.size / 1024:8.1f} KiB {s.count:7d} blocks  {s.traceback}\n")
        f.write("All allocations by file (top 12):\n")
        for s in stats[:12]:
            f.write(f"  {s.size / 1024:8.1f} KiB {s.count:7d} blocks  {s.traceback}\n")
        tops = sorted({m.split(".")[0] for m in sys.modules})
        f.write(f"{len(sys.modules)} modules loaded, packages: {' '.join(tops)}\n")
        f.write("By line (top 25):\n")
        for s in snap.statistics("lineno")[:25]:
            f.write(f"  {s.size / 1024:8.1f} KiB {s.count:7d} blocks  {s.traceback}\n")


def launched() -> None:
    """As the daemon's launcher: argv = [this, --launched, SECONDS, OUT, python, -m, ...]."""
    seconds, out, argv = float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    tracemalloc.start(1)
    threading.Thread(target=snapshot_after, args=(seconds, out), daemon=True).start()
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


def main() -> None:
    from bench.common import PeriodicScraper, header
    from bench.crowded_node import crowd
    from tests.kernel_helpers import daemon
    from tests.support.otlp_receiver import HttpReceiver

    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=2000)
    ap.add_argument("--maps", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=120)
    args = ap.parse_args()
    print(header("python -m bench.daemon_memory " + " ".join(sys.argv[1:])), flush=True)
    rx = HttpReceiver().start()
    env = rx.exporter_env()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "snapshot.txt")
        launcher = [sys.executable, __file__, "--launched", str(args.seconds), out]
        try:
            with (
                crowd(args.programs, args.maps, running=True),
                daemon(port=20490, env=env, launcher=launcher) as d,
            ):
                d.wait_ready()
                scraper = PeriodicScraper(d.port, 15).start()
                while not os.path.exists(out):
                    time.sleep(2)
                time.sleep(2)
                scraper.close()
        finally:
            rx.stop()
        print(Path(out).read_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launched"]:
        launched()
    else:
        main()
