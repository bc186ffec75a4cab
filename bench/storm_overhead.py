"""Overhead under fork/exec storms of increasing rate, with the workload's A/B slowdown.

For each rate, one `linnix-exporter prove` measurement (linnix_exporter.tools.prove, the
same code as the subcommand): the real exporter as a child, the storm for --seconds with
samples every 2 s (our probes' run_time_ns + the exporter's CPU from /proc, as a share of
the node), then --rounds A/B pairs of the same storm with the exporter stopped (A) and
running (B), alternated.

Two independent views of the cost, side by side per rate:
- accounted: what the kernel's BPF statistics and /proc say the probes and the exporter
  used;
- A/B: at "max" the workload's throughput loss (1 - B/A, tasks created per second from
  /proc/stat); at a paced rate throughput is fixed by the pacing, so the node's busy share
  B - A (/proc/stat) is shown instead. Both include what run_time_ns cannot see
  (tracepoint dispatch, cache effects) and all the noise of a shared VM: read them with
  the A spread printed beside them.

Usage: python -m bench.storm_overhead [--rates 100,300,1000,3000,max] [--seconds 10]
       [--rounds 2] [--round-seconds 4]
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from bench.common import header
from linnix_exporter.tools import prove, prove_report
from linnix_exporter.tools.prove_sample import median


def one_rate(rate: float | None, seconds: float, rounds: int, round_s: float) -> dict[str, Any]:
    settings = prove_report.Settings(
        duration=seconds,
        interval=2.0,
        rates=(rate,),
        budget=0.01,
        rounds=rounds,
        ab_round_seconds=round_s,
        ab_rate=rate,
        scrape_interval=15.0,
    )
    return prove.measure(settings)


def fmt_pct(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x * 100:.{digits}f}%"


def row(rep: dict[str, Any]) -> str:
    ph = rep["phases"][0] if rep["phases"] else {}
    sm = ph.get("summary") or {}
    ab = rep["ab"]
    rounds = ab["rounds"]
    if rep["verdict"]["status"] == "cannot_measure":
        return f"| {rep['settings']['rates'][0]} | cannot measure: {rep['verdict']['reason']} |"
    busy_a = [r["node_busy_ratio"] for r in rounds if not r["exporter"]]
    busy_b = [r["node_busy_ratio"] for r in rounds if r["exporter"]]
    thr_a = [r["throughput_per_second"] for r in rounds if not r["exporter"]]
    spread = (max(thr_a) - min(thr_a)) / median(thr_a) if len(thr_a) > 1 else math.nan
    busy_delta = median(busy_b) - median(busy_a) if busy_a and busy_b else math.nan
    # None when the storm could not count its own spawns (prove prints n/a): a row still.
    achieved = ph.get("achieved_per_second")
    return (
        f"| {ph.get('rate', '?')} | {'n/a' if achieved is None else f'{achieved:.0f}'} "
        f"| {fmt_pct(sm.get('probes_node_ratio'))} | {fmt_pct(sm.get('exporter_node_ratio'))} "
        f"| {fmt_pct(sm.get('total_node_ratio'))} | {fmt_pct(sm.get('peak_node_ratio'))} "
        f"| {ab['median_a']:.0f} / {ab['median_b']:.0f} | {fmt_pct(ab['slowdown'], 2)} "
        f"| {fmt_pct(spread, 2)} | {fmt_pct(busy_delta, 2)} "
        f"| {fmt_pct(ab['accounted_node_ratio_b'])} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.storm_overhead", description=__doc__)
    ap.add_argument("--rates", default="100,300,1000,3000,max")
    ap.add_argument("--seconds", type=float, default=10.0, help="storm length per rate")
    ap.add_argument("--rounds", type=int, default=2, help="A/B pairs per rate")
    ap.add_argument("--round-seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    from linnix_exporter.tools.workload import parse_rate

    rates = [parse_rate(r) for r in args.rates.split(",")]
    print(header("python -m bench.storm_overhead " + " ".join(argv or sys.argv[1:])))
    lines = []
    for rate in rates:
        rep = one_rate(rate, args.seconds, args.rounds, args.round_seconds)
        print(f"\n--- rate {rate or 'max'} ---", flush=True)
        print(prove_report.format_report(rep), flush=True)
        lines.append(row(rep))
        if rep["verdict"]["status"] == "interrupted":
            break
    print(
        "\n| rate | achieved/s | probes % node | exporter % node | total mean | total peak "
        "| A/B tasks/s (median) | slowdown 1-B/A | A spread | busy B-A | accounted in B |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
