"""What loading the probes costs: the short-lived bcc/LLVM child that compiles and
attaches them (its peak RSS and CPU, from the kernel's accounting of the reaped child:
getrusage(RUSAGE_CHILDREN)), the wall time, and the daemon-side process after the
handoff. Each round runs in a fresh process so the children's figures are that round's
alone.

Usage: python -m bench.loader_cost [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from bench.common import header


def one_round() -> dict[str, float]:
    from linnix_exporter.kernel.probes import Probes

    with Probes.load() as probes:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "child_maxrss_mib": kids.ru_maxrss / 1024,  # KiB on Linux
            "child_cpu_s": kids.ru_utime + kids.ru_stime,
            "compile_s": probes.compile_seconds,
            "load_wall_s": probes.load_seconds,
            "parent_maxrss_mib": me.ru_maxrss / 1024,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_round()))
        return
    print(header(f"python -m bench.loader_cost --rounds {args.rounds}"))
    print("| round | loader child peak RSS | child CPU | compile | load (wall) | parent peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i in range(args.rounds):
        out = subprocess.run(
            [sys.executable, "-m", "bench.loader_cost", "--one"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out)
        print(
            f"| {i + 1} | {r['child_maxrss_mib']:.1f} MiB | {r['child_cpu_s']:.2f} s "
            f"| {r['compile_s']:.2f} s | {r['load_wall_s']:.2f} s "
            f"| {r['parent_maxrss_mib']:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
