"""Run the benchmarks and keep each one's raw output: `make bench` (all of them) or
`python -m bench.run NAME...`. Each script's stdout is shown as it runs and written to
bench/results/<NAME>.txt, opening with date, machine, kernel and command; docs cite
those files. A script that fails leaves its previous results file as it was, and the run
exits 1 after trying the others.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import save_result

# name -> module and arguments; the name is the results file.
BENCHES: dict[str, tuple[str, ...]] = {
    "probe_cost": ("bench.probe_cost",),
    "probe_read_cost": ("bench.probe_read_cost",),
    "objects_cost": ("bench.objects_cost",),
    "loader_cost": ("bench.loader_cost",),
    "systemd_security": ("bench.systemd_security",),
    "collection_cost": ("bench.collection_cost",),
    "iter_cost": ("bench.iter_cost",),
    "cold_tick": ("bench.cold_tick", "--baseline", "b420ef3", "--strace", "--strace-seconds", "41"),
    "big_host": ("bench.big_host", "--baseline", "b420ef3"),
    # 10 min, the exporter before issue 12 (b420ef3) and on a timer beside it.
    "idle_cost": ("bench.idle_cost", "--baseline", "b420ef3", "--timer"),
    # 10 min, the process_* families (issue 22) beside the exporter just before them.
    "idle_cost-process": ("bench.idle_cost", "--baseline", "16c537a"),
    # 10 min, issue 18's layout beside the code before it (16c537a): same or lower.
    "idle_cost-issue18": ("bench.idle_cost", "--baseline", "16c537a"),
    "slice_cost": ("bench.slice_cost",),
    "hook_cost": ("bench.hook_cost",),
    # 10 min, defaults beside --collector.hooks (issue 19: idle within issue 12's goal).
    "idle_cost-hooks-quiet": ("bench.idle_cost", "--hooks"),
    "idle_cost-otlp-http": ("bench.idle_cost", "--seconds", "120", "--otlp", "http"),
    "idle_cost-otlp-grpc": ("bench.idle_cost", "--seconds", "120", "--otlp", "grpc"),
    "idle_cost-otlp-http-1s": (
        "bench.idle_cost",
        "--seconds",
        "60",
        "--otlp",
        "http",
        "--otlp-interval-ms",
        "1000",
    ),
    "idle_cost-otlp-grpc-1s": (
        "bench.idle_cost",
        "--seconds",
        "60",
        "--otlp",
        "grpc",
        "--otlp-interval-ms",
        "1000",
    ),
    "fleet_cardinality": ("bench.fleet_cardinality",),
    "process_read_cost": ("bench.process_read_cost",),
    "usage_over_time": ("bench.usage_over_time", "--seconds", "120"),
    # 10 min with OTLP over HTTP, idle then under a fork/exec storm (issue 20).
    "usage_over_time-otlp-10min": (
        "bench.usage_over_time",
        "--seconds",
        "600",
        "--configs",
        "idle+otlp,storm+otlp",
    ),
    # RSS against command names seen: 20,000 names in 2 min, OTLP over HTTP (issue 20).
    "comm_storm": ("bench.comm_storm", "--seconds", "120"),
    # 2,000 programs running, 3,000 maps: before (16c537a), each step, after (issue 20).
    "crowded_node": (
        "bench.crowded_node",
        "--baseline",
        "16c537a",
        "--steps",
        "3310b0f,b1ebafb,ea655e7",
    ),
    "scrape_load": ("bench.scrape_load",),
    "otlp_soak": ("bench.otlp_soak", "--minutes", "3"),
    "storm_overhead": ("bench.storm_overhead",),
    # The overhead proof with its defaults, as docs/how-overhead-is-measured.md shows it.
    "prove": ("linnix_exporter", "prove"),
    "image_startup": ("bench.image_startup", "3"),
    "top_cost": ("bench.top_cost",),
}
# Commands a bench needs run first (not measured, output not kept).
PREPARE: dict[str, tuple[str, ...]] = {"image_startup": ("bash", "scripts/image.sh")}  # fmt: skip


def run_one(name: str) -> bool:
    module, *args = BENCHES[name]
    command = " ".join(["python", "-m", module, *args])
    if name in PREPARE and subprocess.run(PREPARE[name]).returncode != 0:
        print(f"== {name}: {' '.join(PREPARE[name])} failed; results file left as it was")
        return False
    print(f"== {name}: {command}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    if proc.wait() != 0:
        print(f"== {name} failed (exit {proc.returncode}); results file left as it was")
        return False
    print(f"== {name}: {save_result(name, ''.join(lines), command)}", flush=True)
    return True


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown bench {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = [n for n in names if not run_one(n)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
