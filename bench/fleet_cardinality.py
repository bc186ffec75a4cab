"""Series one node sends a fleet's central Prometheus, at the default limits, with 50 and
with 1,000 BPF programs loaded on the node (issue 22).

For each program count: the real daemon at defaults (--bpf.top-programs 50,
--probes.top-comms 30; only --collect.interval is 2 s, which changes no series), trivial
programs loaded with bpf() (run once each, so they have run counts) until the node holds
the count, and every limit filled: more than --probes.top-comms distinct command names
exec'd, so the per-comm families reach their bound. Then one scrape, its samples counted
by family (each sample is one series), plus the five series a Prometheus agent adds per
target (up, scrape_duration_seconds, scrape_samples_scraped,
scrape_samples_post_metric_relabeling, scrape_series_added).

Usage: python -m bench.fleet_cardinality [--programs 50 1000] [--comms 40]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import header
from tests.kernel_helpers import daemon
from tests.support import trivial_prog

AGENT_SERIES = 5  # up and the four scrape_* series, per target


def exec_comms(n: int) -> None:
    """Exec /bin/true under n distinct command names (symlinks named c00, c01, ...)."""
    with tempfile.TemporaryDirectory(prefix="linnix-comms-") as tmp:
        for i in range(n):
            link = Path(tmp) / f"c{i:02d}"
            link.symlink_to("/bin/true")
            for _ in range(3):
                subprocess.run([str(link)], check=True)


def families(body: str) -> Counter[str]:
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(body):
        out[fam.name] += len(fam.samples)
    return out


def measure(n: int, comms: int) -> tuple[float, Counter[str]]:
    fds: list[int] = []
    try:
        with daemon("--collect.interval", "2s") as d:
            d.wait_ready()
            m = d.wait_tick(1)
            missing = max(0, n - int(m["linnix_bpf_programs{}"]))
            fds = trivial_prog.load_many(missing, prefix="lnx_card")
            for fd in fds:
                trivial_prog.run(fd)
            exec_comms(comms)
            time.sleep(2.5)
            seq = m["linnix_exporter_collections_total{}"]
            d.wait_tick(seq + 1)  # the program set changed: owners rescanned
            time.sleep(2.5)
            m = d.wait_tick(seq + 2)  # rates over an interval with every program
            status, body, _ = d.get("/metrics")
            assert status == 200
            programs = m["linnix_bpf_programs{}"]
            assert d.stop() == 0
        return programs, families(body)
    finally:
        trivial_prog.close_all(fds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, nargs="+", default=[50, 1000])
    ap.add_argument("--comms", type=int, default=40)
    args = ap.parse_args()
    progs = " ".join(str(n) for n in args.programs)
    print(header(f"python -m bench.fleet_cardinality --programs {progs} --comms {args.comms}"))
    results = [(n, *measure(n, args.comms)) for n in args.programs]
    names = sorted({f for _, _, c in results for f in c}, key=lambda f: (-results[-1][2][f], f))
    print(f"\nseries by family, one scrape (pid {os.getpid()} loaded the extra programs)")
    for n, p, _ in results:
        if p > n:  # a shared node: others' programs were loaded already
            print(
                f"asked for {n} programs: the node held {p:.0f} already. The per-program "
                f"families list min(programs, 50) + ours + [other], so a node with {n} "
                "serves at most the figure of this column."
            )
    print()
    print("| family | " + " | ".join(f"{p:.0f} programs" for _, p, _ in results) + " |")
    print("|---|" + "---:|" * len(results))
    for f in names:
        print(f"| `{f}` | " + " | ".join(str(c[f]) for _, _, c in results) + " |")
    scraped = [sum(c.values()) for _, _, c in results]
    print("| **scraped** | " + " | ".join(str(s) for s in scraped) + " |")
    print(f"| agent's per-target series | {' | '.join(str(AGENT_SERIES) for _ in results)} |")
    print(
        "| **per node at the center** | "
        + " | ".join(str(s + AGENT_SERIES) for s in scraped)
        + " |"
    )


if __name__ == "__main__":
    main()
