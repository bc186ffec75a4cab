"""Reading every program's stats: the bpf_prog iterator vs the bpf() syscall path.

CPU time (getrusage, user + system) of this process per program for
IterProgReader.all() and ProgReader.all(), interleaved in the same run, with N trivial
programs loaded (goal: <= 5 us per program with 1,000 loaded). The iterator's loader
child (bcc compile) is not counted: it runs once at start-up.

Usage: python -m bench.iter_cost [N ...]   (default 10 100 1000)
"""

from __future__ import annotations

import resource
import statistics
import sys

from bench.common import header
from linnix_exporter.kernel import iter_loader
from linnix_exporter.kernel.bpf_syscall import ProgReader
from linnix_exporter.kernel.prog_iter import IterProgReader
from tests.support import trivial_prog

ROUNDS = 50


def _usage() -> tuple[float, float]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime


def measure(it: IterProgReader, n: int) -> dict[str, float]:
    fds = trivial_prog.load_many(n, prefix="lnx_ibench")
    try:
        sysr = ProgReader()
        total = len(it.all())
        sysr.all()
        it_u, it_s, sc_u, sc_s = [], [], [], []
        for _ in range(ROUNDS):
            u0, s0 = _usage()
            it.all()
            u1, s1 = _usage()
            sysr.all()
            u2, s2 = _usage()
            it_u.append(u1 - u0)
            it_s.append(s1 - s0)
            sc_u.append(u2 - u1)
            sc_s.append(s2 - s1)
        per = 1e6 / total
        return {
            "programs": total,
            "iter_us": statistics.mean(a + b for a, b in zip(it_u, it_s, strict=True)) * per,
            "iter_sys_us": statistics.mean(it_s) * per,
            "sys_us": statistics.mean(a + b for a, b in zip(sc_u, sc_s, strict=True)) * per,
            "sys_sys_us": statistics.mean(sc_s) * per,
        }
    finally:
        trivial_prog.close_all(fds)


def main(argv: list[str]) -> None:
    counts = [int(a) for a in argv] or [10, 100, 1000]
    print(header("python -m bench.iter_cost " + " ".join(map(str, counts))))
    print(f"mean of {ROUNDS} reads each, interleaved; CPU time (getrusage) of this process")
    print(
        "| programs | iterator CPU/program | (of which kernel) "
        "| syscalls CPU/program | (of which kernel) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    with iter_loader.load_iterators(owners=False)[0] as it:
        for n in counts:
            r = measure(it, n)
            print(
                f"| {r['programs']:.0f} | {r['iter_us']:.2f} us | {r['iter_sys_us']:.2f} us "
                f"| {r['sys_us']:.2f} us | {r['sys_sys_us']:.2f} us "
                f"| {r['sys_us'] / r['iter_us']:.1f}x |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
