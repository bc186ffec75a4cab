"""`top`'s model, screen keys and layout on hand-worked samples (no kernel, no terminal)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from linnix_exporter.tools import top
from linnix_exporter.tools.top_model import (
    Model,
    Row,
    arrange,
    samples_from_text,
)

# Two ticks of an exporter, 2 s apart on a 2-CPU node. Program 7 (bpftrace, in pod
# default/web) ran 2,000 times for 2 ms in between; program 9 did not run; "[other]"
# ran 100 times for 0.5 ms. Worked by hand:
#   program 7: 2,000 runs / 2 s = 1,000 runs/s; 2 ms / 2 s = 0.001 of one core
#              (CPU% 0.10), 0.0005 of the node; 2,000,000 ns / 2,000 = 1,000 ns/run.
#   [other]:   50 runs/s; 0.5 ms / 2 s = 0.00025 of a core; 5,000 ns/run.
TICK = """\
# TYPE linnix_exporter_last_collect_timestamp_seconds gauge
linnix_exporter_last_collect_timestamp_seconds {t}
# TYPE linnix_node_cpus gauge
linnix_node_cpus 2
# TYPE linnix_bpf_programs gauge
linnix_bpf_programs 5
# TYPE linnix_bpf_unlisted_programs gauge
linnix_bpf_unlisted_programs 3
# TYPE linnix_bpf_stats_enabled gauge
linnix_bpf_stats_enabled{{method="{method}"}} 1
# TYPE linnix_bpf_stats_run_cost_seconds gauge
linnix_bpf_stats_run_cost_seconds{{source="measured"}} 4.2e-08
# TYPE linnix_bpf_stats_duty_ratio gauge
linnix_bpf_stats_duty_ratio {duty}
# TYPE linnix_overhead_ratio gauge
linnix_overhead_ratio 0.002
# TYPE linnix_overhead_budget_ratio gauge
linnix_overhead_budget_ratio 0.01
# TYPE linnix_overhead_component_ratio gauge
linnix_overhead_component_ratio{{component="probes"}} 0.0005
linnix_overhead_component_ratio{{component="exporter"}} 0.0015
linnix_overhead_component_ratio{{component="stats"}} 0.0
# TYPE linnix_bpf_program_run_time_seconds_total counter
linnix_bpf_program_run_time_seconds_total{{id="7",name="sys_enter_sched",type="tracepoint",tag="ab",ours="false"}} {rt7}
linnix_bpf_program_run_time_seconds_total{{id="9",name="idle",type="kprobe",tag="cd",ours="true"}} 1.0
linnix_bpf_program_run_time_seconds_total{{id="",name="[other]",type="",tag="",ours="false"}} {rto}
# TYPE linnix_bpf_program_runs_total counter
linnix_bpf_program_runs_total{{id="7",name="sys_enter_sched",type="tracepoint",tag="ab",ours="false"}} {n7}
linnix_bpf_program_runs_total{{id="9",name="idle",type="kprobe",tag="cd",ours="true"}} 10
linnix_bpf_program_runs_total{{id="",name="[other]",type="",tag="",ours="false"}} {no}
# TYPE linnix_bpf_program_owner_info gauge
linnix_bpf_program_owner_info{{id="7",name="sys_enter_sched",owner_pid="300",owner_comm="child",container_id="c1",namespace="default",pod="web"}} 1
linnix_bpf_program_owner_info{{id="7",name="sys_enter_sched",owner_pid="200",owner_comm="bpftrace",container_id="c1",namespace="default",pod="web"}} 1
"""  # noqa: E501


def tick(
    t: float,
    rt7: float,
    n7: int,
    rto: float,
    no: int,
    method: str = "enable_stats_fd",
    duty: float = 1.0,
) -> Mapping[str, list[tuple[Mapping[str, str], float]]]:
    text = TICK.format(t=t, rt7=rt7, n7=n7, rto=rto, no=no, method=method, duty=duty)
    return samples_from_text(text)


def by_id(rows: tuple[Row, ...]) -> dict[int | None, Row]:
    return {r.prog_id: r for r in rows}


def test_rates_between_two_ticks() -> None:
    m = Model()
    first = m.update(tick(1000.0, 0.5, 10_000, 0.01, 500))
    assert first.rates is None
    assert all(r.runs_per_second is None for r in first.rows)  # no rate from one tick
    view = m.update(tick(1002.0, 0.502, 12_000, 0.0105, 600))
    rows = by_id(view.rows)
    p = rows[7]
    assert p.runs_per_second == pytest.approx(1000.0)
    assert p.core_ratio == pytest.approx(0.001)
    assert p.node_ratio == pytest.approx(0.0005)
    assert p.ns_per_run == pytest.approx(1000.0)
    assert p.whole_ratio is None  # the exporter prices no hooks (collector off)
    # Counted under the lowest-pid holder, with its pod.
    assert (p.owner, p.owner_pid, p.pod) == ("bpftrace", 200, "default/web")
    idle = rows[9]
    assert idle.runs_per_second == 0.0 and idle.ns_per_run is None and idle.ours
    assert idle.owner == "[none]"
    other = rows[None]
    assert other.runs_per_second == pytest.approx(50.0)
    assert other.core_ratio == pytest.approx(0.00025)
    assert other.ns_per_run == pytest.approx(5000.0)
    h = view.header
    assert (h.online_cpus, h.programs, h.unlisted) == (2, 5, 3)
    assert h.stats_cost_ns == pytest.approx(42.0) and h.stats_cost_source == "measured"
    assert h.overhead_ratio == 0.002 and h.overhead_budget_ratio == 0.01
    assert h.components == {"probes": 0.0005, "exporter": 0.0015, "stats": 0.0}


# The hooks collector's counters, appended to TICK. Program 7 (a tracepoint at 1,500 ns
# a hit, say) paid 2,000 runs x 1,500 ns = 3 ms of hook cost in the 2 s; program 9 is
# attached and did not run; program 12 was listed and attached only now.
HOOKS = """\
# TYPE linnix_bpf_hook_seconds_total counter
linnix_bpf_hook_seconds_total {node}
# TYPE linnix_bpf_program_hook_seconds_total counter
linnix_bpf_program_hook_seconds_total{{id="7",name="sys_enter_sched",type="tracepoint",tag="ab",ours="false"}} {h7}
linnix_bpf_program_hook_seconds_total{{id="9",name="idle",type="kprobe",tag="cd",ours="true"}} 0.25
"""  # noqa: E501


def hooked(t: float, rt7: float, n7: int, h7: float, extra: str = "") -> str:
    text = TICK.format(t=t, rt7=rt7, n7=n7, rto=0.01, no=500, method="x", duty=1)
    return text + HOOKS.format(node=h7 + 1.0, h7=h7) + extra


def test_whole_price_from_the_served_hook_counters() -> None:
    """WHOLE% of program 7: run time 2 ms + hooks 3 ms over 2 s = 0.0025 of one core
    (CPU% 0.10 + 0.15). Program 9, attached, idle: 0 + 0 = 0. "[other]" has no hook
    counter of its own: empty."""
    m = Model()
    m.update(samples_from_text(hooked(1000.0, 0.5, 10_000, 0.400)))
    rows = by_id(m.update(samples_from_text(hooked(1002.0, 0.502, 12_000, 0.403))).rows)
    assert rows[7].core_ratio == pytest.approx(0.001)
    assert rows[7].whole_ratio == pytest.approx(0.0025)
    assert rows[9].whole_ratio == 0.0
    assert rows[None].core_ratio is not None and rows[None].whole_ratio is None
    assert top.row_cells(rows[7], 3)[-1] == "0.25"


def test_whole_price_of_a_program_without_a_counter_before_or_at_all() -> None:
    """Program 11 (not attached: no hook counter while hooks are priced) costs its run
    time; program 9's counter appearing only now may hold history from before it was
    listed: empty for this interval rather than that history."""
    m = Model()
    first = hooked(1000.0, 0.5, 10_000, 0.4).replace(
        'linnix_bpf_program_hook_seconds_total{id="9"', 'linnix_bpf_not_read{id="9"'
    )
    m.update(samples_from_text(first))
    rows = by_id(m.update(samples_from_text(hooked(1002.0, 0.502, 12_000, 0.403))).rows)
    assert rows[9].whole_ratio is None and rows[9].core_ratio == 0.0
    m = Model()
    second = hooked(1002.0, 0.502, 12_000, 0.403).replace(
        'linnix_bpf_program_hook_seconds_total{id="7"', 'linnix_bpf_not_read{id="7"'
    )
    m.update(samples_from_text(hooked(1000.0, 0.5, 10_000, 0.4)))
    rows = by_id(m.update(samples_from_text(second)).rows)
    assert rows[7].whole_ratio == pytest.approx(rows[7].core_ratio) == pytest.approx(0.001)


def test_whole_price_reading_the_kernel() -> None:
    """The kernel feed's tick carries the hook price of the interval (rates.hooks_over,
    already for the whole interval): program 2 ran 150 ms in the 10 s and its hooks cost
    30 ms: 0.015 + 0.003 = 0.018 of one core; program 3, not attached: its run time only.
    The hooks collector off (hooks_ns None): empty."""
    from dataclasses import replace

    from linnix_exporter.tools.top_model import view_of_tick
    from tests.test_prometheus_sink import make_tick

    tick = make_tick()
    assert tick.rates is not None
    off = replace(tick, rates=replace(tick.rates, hooks_ns=None, program_hooks_ns={}))
    assert by_id(view_of_tick(off).rows)[2].whole_ratio is None
    rates = replace(tick.rates, hooks_ns=40e6, program_hooks_ns={2: 30e6})
    rows = by_id(view_of_tick(replace(tick, rates=rates)).rows)
    assert rows[2].core_ratio == pytest.approx(0.015)
    assert rows[2].whole_ratio == pytest.approx(0.018)
    others = [r for i, r in rows.items() if i not in (2, None) and r.core_ratio is not None]
    assert others and all(r.whole_ratio == r.core_ratio for r in others)


def test_same_tick_keeps_the_view() -> None:
    """An exporter ticking every 10 s is read every second: refreshes that see the same
    tick keep its rates instead of showing zeros."""
    m = Model()
    m.update(tick(1000.0, 0.5, 10_000, 0.01, 500))
    view = m.update(tick(1002.0, 0.502, 12_000, 0.0105, 600))
    assert m.update(tick(1002.0, 0.502, 12_000, 0.0105, 600)) is view


def test_sampled_mode_divides_by_the_time_statistics_were_on() -> None:
    """Statistics on for a quarter of the 2 s: the 2,000 runs were counted in 0.5 s, so
    4,000 runs/s, and 2 ms of run time in 0.5 s is 0.004 of a core."""
    m = Model()
    m.update(tick(1000.0, 0.5, 10_000, 0.01, 500, method="sampled", duty=0.25))
    view = m.update(tick(1002.0, 0.502, 12_000, 0.0105, 600, method="sampled", duty=0.25))
    p = by_id(view.rows)[7]
    assert p.runs_per_second == pytest.approx(4000.0)
    assert p.core_ratio == pytest.approx(0.004)
    assert p.ns_per_run == pytest.approx(1000.0)  # a mean per run needs no scaling
    assert view.header.stats_method == "sampled"


def test_a_program_first_seen_gets_no_rate_rather_than_its_history() -> None:
    """Served metrics carry no load time: a program that appears (loaded, or newly
    listed) is not charged its whole history as one interval."""
    m = Model()
    m.update(tick(1000.0, 0.5, 10_000, 0.01, 500))
    text = TICK.format(t=1002.0, rt7=0.502, n7=12_000, rto=0.0105, no=600, method="x", duty=1)
    text = text.replace('id="9"', 'id="11"')
    p = by_id(m.update(samples_from_text(text)).rows)[11]
    assert p.runs_per_second == 0.0 and p.core_ratio == 0.0


def row(prog_id: int | None, cpu: float | None, runs: float | None, ns: float | None) -> Row:
    return Row(
        prog_id, f"p{prog_id}", "tracepoint", False, f"o{prog_id}", 1, "", cpu, cpu, runs, ns
    )


ROWS = (
    row(1, 0.2, 10.0, 500.0),
    row(2, 0.5, 5.0, 900.0),
    row(3, None, None, None),  # first seen: no rate yet, sorted last
    row(None, 0.9, 99.0, 9.0),  # "[other]": always last
    row(12, 0.1, 50.0, 100.0),
)


@pytest.mark.parametrize(
    ("column", "order"),
    [
        ("cpu", [2, 1, 12, 3, None]),
        ("runs", [12, 1, 2, 3, None]),
        ("ns", [2, 1, 12, 3, None]),
        ("id", [1, 2, 3, 12, None]),
        ("owner", [1, 12, 2, 3, None]),  # o1 < o12 < o2 < o3 as text
    ],
)
def test_sort(column: str, order: list[int | None]) -> None:
    assert [r.prog_id for r in arrange(ROWS, column)] == order


def test_filter_matches_id_name_owner_and_hides_other() -> None:
    assert [r.prog_id for r in arrange(ROWS, "id", "2")] == [2, 12]
    assert [r.prog_id for r in arrange(ROWS, "id", "O12")] == [12]  # case-insensitive
    assert arrange(ROWS, "id", "nothing") == []


def test_keys() -> None:
    s = top.Screen()
    for k in "n":
        assert s.key(k)
    assert s.sort == "ns"
    for k in "/ab\x7fc":  # typing filters as it goes; backspace edits
        s.key(k)
    assert (s.filter, s.editing) == ("ac", "ac")
    s.key("\r")
    assert (s.filter, s.editing) == ("ac", None)
    s.key("/")
    s.key("x")
    s.key("\x1b")  # Esc while editing: back to the filter before
    assert (s.filter, s.editing) == ("ac", None)
    s.key("\x1b")  # Esc otherwise: no filter
    assert s.filter == ""
    s.key("/")
    assert s.key("q")  # a q typed into the filter is text
    s.key("\r")
    assert s.filter == "q"
    assert not s.key("q")


def test_escape_sequences_are_not_keys() -> None:
    assert top.keys_from(b"\x1b[A") == []  # arrow up
    assert top.keys_from(b"\x1b") == ["\x1b"]
    assert top.keys_from(b"nq") == ["n", "q"]


def test_table_lines_align_and_cut() -> None:
    long = row(5, 0.123456, 1234.5, 12.0)._replace(name="n" * 60, ours=True)
    lines = top.table_lines([long, row(None, None, 3.0, None)], "runs", unlisted=4)
    title, first, other = lines
    assert "[RUNS/S]" in title and "[CPU%]" not in title
    assert "n" * 39 + "~" in first and "n" * 41 not in first  # cut at MAX_WIDTH
    cells = first.split()
    assert cells[0] == "5" and cells[-5:] == ["12.35", "12.346", "1234", "12.0", "-"]
    assert "[other] (4 programs)" in other
    # Right-justified numbers end under their titles.
    assert first.index("1234") + 4 == title.index("[RUNS/S]") + len("[RUNS/S]")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("localhost:10924", "http://localhost:10924/metrics"),
        ("http://10.0.0.1:9/", "http://10.0.0.1:9/metrics"),
        ("https://node/x/metrics", "https://node/x/metrics"),
    ],
)
def test_metrics_url(given: str, url: str) -> None:
    assert top.metrics_url(given) == url


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "100ms"], "--interval: must be within 0.5s-60s"),
        (["--interval", "soon"], "--interval: invalid duration"),
        (["--overhead.budget", "2"], "--overhead.budget: must be in (0, 1]"),
        (["--from", "ftp://x:1"], "--from: not an http(s) URL"),
        (["--from", "http://x:99999"], "--from: bad port"),
    ],
)
def test_bad_flags_one_line_exit_2(argv: list[str], message: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "top", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_not_a_terminal_one_line_exit_2() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "top"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and p.stdout == "", p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a terminal" in lines[0], p.stderr


def test_unreachable_exporter_one_line_exit_1() -> None:
    import pty

    from tests.kernel_helpers import free_port

    port = free_port()  # nothing listens there
    master, tty = pty.openpty()  # top needs a terminal before it reads anything
    try:
        p = subprocess.run(
            [sys.executable, "-m", "linnix_exporter", "top", "--from", f"127.0.0.1:{port}"],
            stdout=tty,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(master)
        os.close(tty)
    assert p.returncode == 1, p
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}/metrics" in lines[0], p.stderr


def test_help_lists_the_keys() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    top.add_parser(sub)
    text = parser.parse_args(["top"]).handler.__module__
    assert text == "linnix_exporter.tools.top"
    out = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "top", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for k, (_, what) in top.SORTS.items():
        assert f"{k}  sort by {what}" in out
    assert "/  filter" in out and "q  quit" in out


def test_the_daemon_does_not_import_the_terminal_library() -> None:
    """`linnix-exporter run` builds every tool's parser: rich must stay out of its
    process (resident memory). The whole import graph of the daemon's modules."""
    code = (
        "import sys\n"
        "from linnix_exporter import cli\n"
        "import linnix_exporter.sinks.prometheus, linnix_exporter.web, linnix_exporter.state\n"
        "import linnix_exporter.sinks.otlp, linnix_exporter.sinks.otlp_http\n"
        "import linnix_exporter.kernel.probes, linnix_exporter.kernel.prog_iter\n"
        "cli.build_parser().parse_args(['run'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments',"
        " 'markdown_it')))\n"
        "print('linnix_exporter.tools.top' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == ["[]", "True"]  # top's module is loaded (its parser), rich is not


def test_kernel_header_is_what_metrics_serve_for_the_same_tick() -> None:
    """Reading the kernel, top takes the header from the Tick; --from reads it off
    /metrics. Both must say the same for one tick: the tick rendered by the daemon's
    Prometheus sink, parsed as --from parses it, against header_from_tick."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from linnix_exporter.sinks.prometheus import TickCollector
    from linnix_exporter.tools.top_model import build_rows, header_from_tick, read_header
    from tests.test_prometheus_sink import make_tick

    tick = make_tick()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TickCollector(lambda: tick, lambda: 0))
    served = read_header(samples_from_text(generate_latest(registry).decode()))
    direct = header_from_tick(tick)
    assert direct == served
    # Not vacuous: the fixture's tick has rates, statistics and a cost.
    assert direct.overhead_ratio and direct.components["exporter"] > 0
    assert direct.stats_cost_ns == 100.0 and direct.unlisted == 1
    # Its rows: program 2 ran 150 ms in 40 runs over the 10 s interval.
    rows = by_id(build_rows(tick.snapshot, tick.rates))
    assert rows[2].runs_per_second == pytest.approx(4.0)
    assert rows[2].core_ratio == pytest.approx(0.015)
    assert rows[2].owner == "cilium-agent" and rows[2].pod == "kube-system/cilium-x7k2p"


def test_header_lines_from_a_served_tick() -> None:
    """The header in words, from the fixture's gauges: overhead 0.002 of the node against
    a 0.01 budget is 0.200%, a fifth of it; statistics cost 42 ns a run, measured."""
    m = Model()
    m.update(tick(1000.0, 0.5, 10_000, 0.01, 500))
    view = m.update(tick(1002.0, 0.502, 12_000, 0.0105, 600, duty=1.0))
    lines = top.header_lines(view, "http://n:10924/metrics", 1.0, "")
    assert lines[0].startswith("linnix-exporter top  http://n:10924/metrics  refresh 1s")
    assert lines[1].startswith("node: 2 CPUs, 5 BPF programs; all BPF: -")  # not served
    assert lines[2] == (
        "exporter overhead: 0.200% of the node (20% of its 1% budget): "
        "probes 0.050%, exporter 0.150%, stats 0.000%"
    )
    assert lines[3] == (
        "statistics: on (enable_stats_fd), mode always (on 100% of the time); "
        "every program run pays 42.0 ns more (measured)"
    )
    kernel = top.header_lines(view, "kernel", 2.0, "gone")
    assert kernel[0].startswith("linnix-exporter top  kernel (statistics switched by top)")
    assert kernel[2].startswith("top's own overhead: 0.200%") and "top CPU 0.150%" in kernel[2]
    assert kernel[-1] == "error: gone (showing the last good reading)"


def test_from_an_exporter_behind_basic_auth() -> None:
    """user:password@host in --from becomes a Basic header; the screen's label keeps
    no password; a wrong one is the server's 401 in one line."""
    import base64
    import http.server
    import threading

    body = TICK.format(
        t=1000.0, rt7=0.5, n7=10, rto=0.0, no=0, method="enable_stats_fd", duty=1
    ).encode()
    good = "Basic " + base64.b64encode(b"prom:s3cr:t").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == good and self.path == "/metrics"
            self.send_response(200 if ok else 401)
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        feed = top.HttpFeed(top.metrics_url(f"http://prom:s3cr%3At@127.0.0.1:{port}"))
        assert feed.label == f"http://127.0.0.1:{port}/metrics"
        assert feed.view().header.online_cpus == 2
        wrong = top.HttpFeed(top.metrics_url(f"http://prom:nope@127.0.0.1:{port}"))
        with pytest.raises(top.FeedError, match="HTTP 401"):
            wrong.view()
    finally:
        server.shutdown()
        server.server_close()


def test_collector_hooks_flag_reaches_the_kernel_feed_options() -> None:
    """WHOLE% reading the kernel needs the hooks collector: off unless asked for, as in
    the daemon (its calibration is ~0.9 s of CPU at start)."""
    from linnix_exporter.cli import build_parser

    parse = build_parser().parse_args
    assert top.parse_options(parse(["top"])).hooks is False
    hooks = top.parse_options(parse(["top", "--collector.hooks"]))
    assert hooks.hooks is True
    from linnix_exporter.tick import HOOKS, PROBES

    assert HOOKS in top.KernelFeed.config(hooks).collectors
    plain = top.KernelFeed.config(top.parse_options(parse(["top"]))).collectors
    assert HOOKS not in plain and PROBES not in plain and plain  # the rest as the daemon's
