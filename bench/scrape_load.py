"""Scrape load: /metrics latency and errors under 50 concurrent clients with 1,000 BPF
programs loaded. The real daemon (with its probes) runs; this process loads 1,000
trivial programs with the raw bpf() syscall, then wrk hammers /metrics with keep-alive
connections for --seconds in three variants:

- all:      --bpf.top-programs large enough to list every program, plain text;
- all+gzip: the same with Accept-Encoding: gzip;
- top50:    the default --bpf.top-programs 50 (the rest in one [other] series).

A small Lua script makes wrk print its exact p50/p90/p99/p99.9 and error counters
(connect/read/write/timeout, and `status` = non-2xx/3xx answers); they are checked
against the "Socket errors" and "Non-2xx or 3xx responses" lines of wrk's own report.
Answers slower than 10 s, Prometheus' default scrape_timeout (they would be failed
scrapes), are counted exactly in the Lua script; wrk's own --timeout is 60 s so that
every latency is in the percentiles.
The daemon's CPU comes from /proc/PID/stat over the wrk run;
linnix_exporter_collections_total before and after shows whether collections kept their
interval while the server was saturated. Right after wrk, /metrics and /healthz must
still answer 200 (with a complete, parseable /metrics); the bench exits 1 if not.

Usage: python -m bench.scrape_load [--seconds 30] [--connections 50] [--programs 1000]
                                   [--interval 2s] [--variants all,all+gzip,top50]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.common import header
from linnix_exporter.config import parse_duration
from tests.kernel_helpers import Daemon, daemon, proc_stat_cpu_seconds
from tests.support import trivial_prog

# Prometheus' default scrape_timeout: a slower answer would be a failed scrape.
SLOW_S = 10
# wrk's own --timeout is set well above it, so every answer's latency is recorded and the
# percentiles are true ones. (wrk drops an answer slower than --timeout from the latency
# figures and counts timeouts by events, not requests: once per late answer plus once at
# each 2 s check while a request is out.)
WRK_TIMEOUT_S = 60
# wrk calls done() once with every thread's figures merged; latency is in microseconds.
# latency(i) walks the distinct recorded values in order, with their counts: it gives
# the exact number of answers slower than SLOW_S. (Each call scans wrk's histogram from
# the start, a few s of wrk CPU; it runs after the load, so it does not compete with it.)
LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  local slow = 0
  for i = 1, #latency do
    local v, n = latency(i)
    if v > SLOW_US then slow = slow + n end
  end
  io.write(string.format(
    "RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d "
    .. "status=%d timeout=%d slow=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d "
    .. "mean_us=%.0f\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, slow, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
""".replace("SLOW_US", str(SLOW_S * 1_000_000))

VARIANTS = {
    # name: (--bpf.top-programs, extra wrk headers)
    "all": (None, []),
    "all+gzip": (None, ["-H", "Accept-Encoding: gzip"]),
    "top50": (50, []),
}


@dataclass
class Result:
    variant: str
    wrk: dict[str, float]
    daemon_cpu_s: float
    wrk_cpu_s: float
    wall_s: float
    ticks: float
    expected_ticks: float
    collect_ms: float
    loadavg: str
    body_bytes: int
    after: str
    after_ok: bool


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_wrk(out: str) -> dict[str, float]:
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if m is None:
        raise SystemExit(f"wrk printed no RESULT line:\n{out}")
    w = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    # wrk prints these two lines only when a count is non-zero: they must agree with the
    # counters the Lua script read, or the script is reading the wrong fields.
    text = {"connect": 0.0, "read": 0.0, "write": 0.0, "timeout": 0.0, "status": 0.0}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        text.update(
            zip(("connect", "read", "write", "timeout"), map(float, sock.groups()), strict=True)
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        text["status"] = float(non2xx.group(1))
    if any(w[k] != v for k, v in text.items()):
        raise SystemExit(f"wrk's report and the Lua counters disagree: {text} vs {w}")
    return w


def still_answers(d: Daemon) -> tuple[str, bool]:
    """Right after the load: /metrics complete and parseable, /healthz 200."""
    t = time.perf_counter()
    status, body, _ = d.get("/metrics")
    ms = (time.perf_counter() - t) * 1e3
    ok = status == 200
    if ok:
        names = {f.name for f in text_string_to_metric_families(body)}
        ok = "linnix_exporter_collections" in names
    health = d.get("/healthz")[0]
    ok = ok and health == 200
    return f"/metrics {status} in {ms:.0f} ms, /healthz {health}", ok


def run_variant(variant: str, args: argparse.Namespace, programs: int, lua_path: str) -> Result:
    top, wrk_headers = VARIANTS[variant]
    flags = ["--collect.interval", args.interval]
    flags += ["--bpf.top-programs", str(top if top is not None else programs + 100)]
    interval = parse_duration(args.interval)
    with daemon(*flags) as d:
        d.wait_ready()
        d.wait_tick(1)  # a second tick: rates and every program are in the served tick
        status, body, _ = d.get("/metrics")
        assert status == 200
        listed = sum(
            1 for ln in body.splitlines() if ln.startswith("linnix_bpf_program_runs_total{")
        )
        print(
            f"[{variant}] daemon pid {d.proc.pid}, flags {' '.join(flags)}; /metrics "
            f"{len(body)} bytes, {listed} program series (incl. [other] if any)"
        )
        m0 = d.metrics()
        pid = d.proc.pid
        la = loadavg()
        c0, t0 = proc_stat_cpu_seconds(pid), time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [
            "wrk",
            "-t2",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "--timeout",
            f"{WRK_TIMEOUT_S}s",
            "-s",
            lua_path,
            *wrk_headers,
            d.url + "/metrics",
        ]
        print(f"[{variant}] {' '.join(cmd)}")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        c1, t1 = proc_stat_cpu_seconds(pid), time.monotonic()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        la = f"{la} -> {loadavg()}"
        m1 = d.metrics()
        after, after_ok = still_answers(d)
        print("\n".join(f"    {ln}" for ln in out.splitlines()))
        print(f"[{variant}] after the load: {after}")
        d.stop()
    key = "linnix_exporter_collections_total{}"
    return Result(
        variant=variant,
        wrk=parse_wrk(out),
        daemon_cpu_s=c1 - c0,
        wrk_cpu_s=(ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        wall_s=t1 - t0,
        ticks=m1[key] - m0[key],
        expected_ticks=(t1 - t0) / interval,
        collect_ms=m1["linnix_exporter_collect_duration_seconds{}"] * 1e3,
        loadavg=la,
        body_bytes=len(body),
        after=after,
        after_ok=after_ok,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--interval", default="2s", help="daemon --collect.interval")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant {bad[0]!r} (choose from {', '.join(VARIANTS)})")
    try:
        parse_duration(args.interval)
    except ValueError as e:
        ap.error(f"--interval: {e}")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    print(
        header(
            f"python -m bench.scrape_load --seconds {args.seconds} --connections "
            f"{args.connections} --programs {args.programs} --interval {args.interval} "
            f"--variants {args.variants}"
        )
    )
    fds = trivial_prog.load_many(args.programs, prefix="lnx_load")
    results = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(LUA)
        lua.flush()
        try:
            for v in variants:
                results.append(run_variant(v, args, args.programs, lua.name))
        finally:
            trivial_prog.close_all(fds)
    print(
        f"\n{args.programs} trivial programs loaded, {args.connections} keep-alive connections, "
        f"{args.seconds} s each, wrk -t2 on the same {os.cpu_count()} CPUs as the daemon"
    )
    print(
        "| variant | body plain / sent per request | requests | requests/s | p50 | p90 | p99 "
        "| max | errors (conn/read/write/timeout/non-2xx) | over 10 s | daemon CPU "
        "| CPU per request | wrk CPU | ticks (expected) | last collect | loadavg before -> after "
        "| afterwards |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        w = r.wrk
        n = w["requests"]
        rps = n / (w["duration_us"] / 1e6)
        errs = "/".join(f"{w[k]:.0f}" for k in ("connect", "read", "write", "timeout", "status"))
        per_req = r.daemon_cpu_s / n * 1e3 if n else float("nan")
        print(
            f"| {r.variant} | {r.body_bytes / 1024:.0f} / {w['bytes'] / n / 1024 if n else 0:.0f} "
            f"KiB | {n:.0f} | {rps:.1f} "
            f"| {w['p50_us'] / 1e3:.0f} ms | {w['p90_us'] / 1e3:.0f} ms "
            f"| {w['p99_us'] / 1e3:.0f} ms | {w['max_us'] / 1e3:.0f} ms | {errs} "
            f"| {w['slow']:.0f} "
            f"| {r.daemon_cpu_s:.1f} s = {r.daemon_cpu_s / r.wall_s * 100:.0f}% of a core "
            f"| {per_req:.1f} ms | {r.wrk_cpu_s:.1f} s "
            f"| {r.ticks:.0f} ({r.expected_ticks:.1f}) | {r.collect_ms:.1f} ms | {r.loadavg} "
            f"| {'answers' if r.after_ok else 'FAILED'}: {r.after} |"
        )
    if not all(r.after_ok for r in results):
        raise SystemExit("the exporter did not answer correctly after the load")


if __name__ == "__main__":
    main()
