"""`linnix-exporter snapshot` without a kernel: the window report's math on hand-built
reads (every expected figure is worked out by hand in the comments), its JSON Schema,
filters, program lifecycles, flag checking, the atomic write, signals, and progress
output."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from linnix_exporter.cli import build_parser
from linnix_exporter.kernel.stats_cost import Calibration
from linnix_exporter.snapshot import Owner, ProgramStat
from linnix_exporter.tools import snapshot, window
from linnix_exporter.tools.progress import Progress, bar
from linnix_exporter.tools.window import Filters, HostInfo, Seen, Tracker, Window
from tests.fixtures import prog

S = 1_000_000_000  # ns per second
BOOT0 = 1000 * S  # CLOCK_BOOTTIME at the window start in the fixtures
MONO0 = 50.0  # monotonic time of the start read in the fixtures
HOST = HostInfo("node-a", "6.18.0-test", 2)


def validator() -> jsonschema.Draft202012Validator:
    schema = window.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def p(
    pid: int, rt: int, cnt: int, *, load: int = BOOT0 - 60 * S, name: str = "p", **kw: Any
) -> ProgramStat:
    return prog(pid, rt, cnt, load=load, name=name, **kw)


def track(reads: Sequence[tuple[float, Sequence[ProgramStat]]], **kw: Any) -> Tracker:
    """Feed (seconds after the start, read) pairs; the last one is the end read."""
    t = Tracker(**kw)
    for i, (at, progs) in enumerate(reads):
        t.add(progs, MONO0 + at, final=i == len(reads) - 1)
    return t


def make_window(t: Tracker, measured: float = 10.0, interrupted: bool = False) -> Window:
    return Window(
        started_wall=1_700_000_000.0,
        ended_wall=1_700_000_000.0 + measured,
        requested_seconds=10.0,
        start_mono=MONO0,
        measured_seconds=measured,
        boot_start_ns=BOOT0,
        boot_end_ns=BOOT0 + int(measured * S),
        interrupted=interrupted,
        samples=t.reads,
        sample_interval=1.0,
        programs=tuple(t.programs()),
    )


def report(t: Tracker, filters: Filters | None = None, **kw: Any) -> dict[str, Any]:
    return window.build_report(
        make_window(t, **kw), HOST, "enable_stats_fd", True, filters or Filters(), "0.1.0"
    )


# ---- one window with every lifecycle -------------------------------------------------

# 10 s window, 2 CPUs:
#  id 1 "present": 1 ms/1,000 runs at start, 21 ms/3,000 at the end -> 20 ms, 2,000 runs
#  id 2 "present", same name as id 1 (names collide, ids do not): idle
#  id 3 "unloaded": last seen at 4 s with 5 ms/50 runs more than at start
#  id 4 "loaded" at 2 s (load_time after the window start): 8 ms, 400 runs, in full
#  id 5 "loaded_and_unloaded": loaded at 6 s, last seen at 7 s with 1 ms, 10 runs
LOAD4 = BOOT0 + 2 * S
LOAD5 = BOOT0 + 6 * S
READS: list[tuple[float, list[ProgramStat]]] = [
    (0.0, [p(1, 1_000_000, 1000, name="dup"), p(2, 7, 1, name="dup"), p(3, 100, 1)]),
    (4.0, [p(1, 9_000_000, 2000, name="dup"), p(2, 7, 1, name="dup"), p(3, 5_000_100, 51)]),
    (
        7.0,
        [
            p(1, 15_000_000, 2500, name="dup"),
            p(2, 7, 1, name="dup"),
            p(4, 3_000_000, 100, load=LOAD4),
            p(5, 1_000_000, 10, load=LOAD5),
        ],
    ),
    (
        10.0,
        [
            p(1, 21_000_000, 3000, name="dup"),
            p(2, 7, 1, name="dup"),
            p(4, 8_000_000, 400, load=LOAD4),
        ],
    ),
]


@pytest.fixture
def full() -> dict[str, Any]:
    return report(track(READS))


def test_every_lifecycle_by_hand(full: dict[str, Any]) -> None:
    ps = full["program_stats"]
    assert set(ps) == {"1", "2", "3", "4", "5"}
    assert {k: v["lifecycle"] for k, v in ps.items()} == {
        "1": "present",
        "2": "present",
        "3": "unloaded",
        "4": "loaded",
        "5": "loaded_and_unloaded",
    }
    assert [(ps[k]["runtime_ns"], ps[k]["run_count"]) for k in "12345"] == [
        (20_000_000, 2000),
        (0, 0),
        (5_000_000, 50),  # up to its last read, a lower bound
        (8_000_000, 400),  # in full: loaded inside the window
        (1_000_000, 10),
    ]
    # Seen: whole window; whole window; 4 s; from its load (2 s) to the end: 8 s;
    # from its load (6 s) to its last read (7 s): 1 s.
    assert [ps[k]["observed_seconds"] for k in "12345"] == pytest.approx([10, 10, 4, 8, 1])
    assert (full["num_loaded_during_window"], full["num_unloaded_during_window"]) == (2, 2)
    assert full["num_programs"] == 5


def test_rates_divide_by_the_measured_window(full: dict[str, Any]) -> None:
    one = full["program_stats"]["1"]
    # 2,000 runs / 10 s; 20 ms / 2,000 runs; 20 ms / 10 s = 0.2% of one core, 0.1% of 2.
    assert one["events_per_sec"] == pytest.approx(200.0)
    assert one["avg_runtime_ns"] == pytest.approx(10_000.0)
    assert one["estimated_cpu_percent"] == pytest.approx(0.2)
    assert one["node_cpu_percent"] == pytest.approx(0.1)
    # An unloaded program's rate still divides by the window (not by its 4 s), so the
    # programs add up to the totals: 5 ms / 10 s = 0.05%.
    assert full["program_stats"]["3"]["estimated_cpu_percent"] == pytest.approx(0.05)
    assert full["program_stats"]["2"]["avg_runtime_ns"] == 0.0  # no runs: no division


def test_totals_are_the_sums(full: dict[str, Any]) -> None:
    # 20 + 0 + 5 + 8 + 1 = 34 ms; 2,000 + 50 + 400 + 10 = 2,460 runs over 10 s.
    assert full["total_runtime_ns"] == 34_000_000
    assert full["total_run_count"] == 2460
    assert full["total_events_per_sec"] == pytest.approx(246.0)
    assert full["total_estimated_cpu_percent"] == pytest.approx(0.34)
    assert full["total_node_cpu_percent"] == pytest.approx(0.17)
    ps = full["program_stats"].values()
    for k in ("events_per_sec", "estimated_cpu_percent", "node_cpu_percent"):
        assert sum(x[k] for x in ps) == pytest.approx(full[f"total_{k}"])


def test_measured_not_requested_window() -> None:
    # Ended early at 2.5 s (requested 10 s): 25 ms in 2.5 s is 1% of one core.
    t = track([(0.0, [p(1, 0, 0)]), (2.5, [p(1, 25_000_000, 5)])])
    r = report(t, measured=2.5, interrupted=True)
    assert r["window"]["interrupted"] is True
    assert r["window"]["requested_seconds"] == 10.0
    assert r["program_stats"]["1"]["estimated_cpu_percent"] == pytest.approx(1.0)
    assert r["program_stats"]["1"]["events_per_sec"] == pytest.approx(2.0)


def test_report_matches_schema(full: dict[str, Any]) -> None:
    v = validator()
    v.validate(full)
    # Strict: unknown fields, a bad lifecycle, a bad tag and a missing total all fail.
    bad_extra = json.loads(json.dumps(full))
    bad_extra["program_stats"]["1"]["surprise"] = 1
    bad_life = json.loads(json.dumps(full))
    bad_life["program_stats"]["1"]["lifecycle"] = "gone"
    bad_tag = json.loads(json.dumps(full))
    bad_tag["program_stats"]["1"]["tag"] = "xyz"
    missing = json.loads(json.dumps(full))
    del missing["total_node_cpu_percent"]
    bad_key = json.loads(json.dumps(full))
    bad_key["program_stats"]["dup"] = bad_key["program_stats"].pop("1")
    for bad in (bad_extra, bad_life, bad_tag, missing, bad_key):
        assert not v.is_valid(bad)


def test_stats_term(full: dict[str, Any]) -> None:
    # The same window with statistics costing 100 ns a run: 2,000 + 50 + 400 + 10 runs
    # (ids 1, 3, 4, 5 above) x 100 ns = 246 us, over 10 s x 2 CPUs = 0.00123%.
    assert full["total_run_count"] == 2_460
    w = make_window(track(READS))
    cost = Calibration(cost_ns=100.0, source="measured", on_ns=130.0, run_ns=45.0)
    r = window.build_report(w, HOST, "enable_stats_fd", True, Filters(), "0.1.0", cost)
    assert r["stats"]["run_cost_ns"] == 100.0
    assert r["stats"]["cost_source"] == "measured"
    assert r["stats"]["overhead_ns"] == pytest.approx(246_000)
    assert r["stats"]["overhead_node_cpu_percent"] == pytest.approx(0.00123)
    validator().validate(r)


def test_header_fields(full: dict[str, Any]) -> None:
    assert full["schema_version"] == 1
    assert full["generator"] == "linnix-exporter 0.1.0 snapshot"
    assert full["host"] == {"hostname": "node-a", "kernel_release": "6.18.0-test", "online_cpus": 2}
    assert full["stats"] == {
        "method": "enable_stats_fd",
        "enabled": True,
        "run_cost_ns": None,  # not calibrated: no cost invented
        "cost_source": "",
        "overhead_ns": 0.0,
        "overhead_node_cpu_percent": 0.0,
    }
    # 1,700,000,000 is 2023-11-14T22:13:20Z; the window ends 10 s later.
    assert full["window"]["started_at"] == "2023-11-14T22:13:20.000Z"
    assert full["timestamp"] == full["window"]["ended_at"] == "2023-11-14T22:13:30.000Z"
    assert full["window"]["samples"] == 4
    # id 4 was loaded 8 s before the end of the window.
    assert full["program_stats"]["4"]["load_time"] == "2023-11-14T22:13:22.000Z"


# ---- identity, churn, ours -----------------------------------------------------------


def test_reused_id_is_another_program() -> None:
    # id 9 is unloaded at 3 s and its id handed to a new program (other load time) at 5 s.
    old = p(9, 1_000, 1)
    t = track(
        [
            (0.0, [old]),
            (3.0, [old._replace(run_time_ns=4_000, run_cnt=4)]),
            (5.0, [p(9, 50, 1, load=BOOT0 + 4 * S)]),
            (10.0, [p(9, 70, 2, load=BOOT0 + 4 * S)]),
        ]
    )
    ps = report(t)["program_stats"]
    assert set(ps) == {f"9@{BOOT0 - 60 * S}", "9"}
    assert ps[f"9@{BOOT0 - 60 * S}"]["lifecycle"] == "unloaded"
    assert ps[f"9@{BOOT0 - 60 * S}"]["runtime_ns"] == 3_000
    assert ps["9"]["lifecycle"] == "loaded"
    assert (ps["9"]["runtime_ns"], ps["9"]["run_count"]) == (70, 2)
    validator().validate(report(t))


def test_counters_never_go_negative() -> None:
    t = track([(0.0, [p(1, 500, 5)]), (10.0, [p(1, 100, 1)])])
    assert report(t)["program_stats"]["1"]["runtime_ns"] == 0


def test_tracker_reports_appeared_and_went() -> None:
    t = Tracker()
    appeared, went = t.add([p(1, 0, 0), p(2, 0, 0)], 0.0)
    assert sorted(s.first.id for s in appeared) == [1, 2]
    appeared, went = t.add([p(2, 0, 0), p(3, 0, 0, load=BOOT0)], 1.0)
    assert [s.first.id for s in appeared] == [3]
    assert [s.last.id for s in went] == [1]


def test_ours_needs_both_name_and_linnix_holder() -> None:
    names = frozenset({"linnix_fork", "linnix_progstat"})
    daemon = ["/work/main/.venv/bin/python", "-m", "linnix_exporter", "run"]
    script = ["/usr/bin/python3", "/usr/local/bin/linnix-exporter", "run"]
    loader = ["python3", "-m", "linnix_exporter.kernel._loader", "--sock-fd", "3"]
    bpftrace = ["bpftrace", "-e", "tracepoint:sched:sched_process_fork { }"]
    for argv in (daemon, script, loader):
        assert window.is_linnix_cmdline(argv)
    for argv in (bpftrace, ["python3", "-m", "linnix_exporterx"], ["python3", "linnix.py"], []):
        assert not window.is_linnix_cmdline(argv)
    assert window.is_ours("linnix_fork", [bpftrace, daemon], names)
    assert window.is_ours("linnix_progstat", [script], names)
    assert not window.is_ours("linnix_fork", [bpftrace], names)  # a foreign namesake
    assert not window.is_ours("my_prog", [daemon], names)  # a foreign program we hold


def test_our_program_names_are_the_probes_and_the_iterator() -> None:
    # bpf/probes.c defines these four; the iterators load as linnix_progstat and
    # linnix_owners.
    probes_c = Path(__file__).resolve().parents[1].joinpath("bpf", "probes.c").read_text()
    probes = set(re.findall(r"^int (linnix_\w+)\(", probes_c, re.M))
    assert probes == {"linnix_fork", "linnix_exec", "linnix_exit", "linnix_free"}
    assert window.our_program_names() == frozenset(probes | {"linnix_progstat", "linnix_owners"})


def test_ours_classified_when_owners_seen() -> None:
    holder = Owner(4242, "python3")
    argvs = {4242: ["python3", "-m", "linnix_exporter", "run"]}
    names = frozenset({"linnix_fork"})

    def classify(q: ProgramStat) -> bool:
        return window.is_ours(q.name, [argvs.get(o.pid, []) for o in q.owners], names)

    ours = p(1, 0, 0, name="linnix_fork")._replace(owners=(holder,))
    foreign = p(2, 0, 0, name="linnix_fork")
    t = track(
        [(0.0, [ours, foreign]), (10.0, [ours._replace(owners=()), foreign])], classify=classify
    )
    ps = report(t)["program_stats"]
    assert ps["1"]["ours"] is True
    assert ps["1"]["owners"] == [{"pid": 4242, "comm": "python3"}]  # last non-empty list
    assert ps["2"]["ours"] is False


def test_read_argv_of_this_process() -> None:
    argv = window.read_argv(os.getpid())
    assert argv and os.path.basename(argv[0]).startswith("python")
    assert window.read_argv(2**22 + 12345) == []  # no such pid


# ---- filters -------------------------------------------------------------------------


def test_filters_drop_programs_from_report_and_totals() -> None:
    t = track(
        [
            (0.0, [p(1, 0, 0, name="keep_me"), p(2, 0, 0, name="drop_me", ptype="xdp")]),
            (10.0, [p(1, 100, 1, name="keep_me"), p(2, 900, 9, name="drop_me", ptype="xdp")]),
        ]
    )
    f = Filters(exclude_type=frozenset({"xdp"}))
    r = report(t, f)
    assert set(r["program_stats"]) == {"1"}
    assert (r["total_runtime_ns"], r["total_run_count"], r["num_programs"]) == (100, 1, 1)
    assert r["filters"] == {
        "include_name": None,
        "exclude_name": None,
        "include_type": [],
        "exclude_type": ["xdp"],
    }
    validator().validate(r)
    f2 = Filters(include_name=re.compile("^keep"), include_type=frozenset({"tracepoint", "xdp"}))
    r2 = report(t, f2)
    assert set(r2["program_stats"]) == {"1"}
    assert r2["filters"]["include_name"] == "^keep"
    assert r2["filters"]["include_type"] == ["tracepoint", "xdp"]
    r3 = report(t, Filters(exclude_name=re.compile("keep"), include_type=frozenset({"xdp"})))
    assert set(r3["program_stats"]) == {"2"}
    assert r3["total_run_count"] == 9


# ---- small pure helpers --------------------------------------------------------------


def test_time_helpers() -> None:
    assert window.rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert window.rfc3339(1.2345) == "1970-01-01T00:00:01.234Z"
    # Loaded 10 s (boottime) before a (boottime, wall) pair read at wall time 1,000 s.
    assert window.boottime_to_wall(5 * S, 15 * S, 1000.0) == pytest.approx(990.0)


# ---- the observation loop (scripted reads, real clock and real signals) ---------------


def scripted(reads: list[Callable[[], list[ProgramStat]]]) -> Callable[[], list[ProgramStat]]:
    it = iter(reads)
    last: list[ProgramStat] = []

    def read() -> list[ProgramStat]:
        nonlocal last
        f = next(it, None)
        if f is not None:
            last = f()
        return last

    return read


def test_observe_samples_and_classifies_load_times() -> None:
    old = window.boottime_ns() - 60 * S

    def late() -> list[ProgramStat]:
        # A program loaded now (after the window started): counted in full.
        return [p(1, 10, 1, load=old), p(2, 500, 5, load=window.boottime_ns())]

    read = scripted(
        [lambda: [p(1, 0, 0, load=old), p(3, 0, 0, load=old)], lambda: [p(1, 5, 1, load=old)], late]
    )

    def sleep(s: float) -> bool:
        time.sleep(s)
        return False

    w = window.observe(read, 0.35, 0.1, sleep, Tracker())
    assert 0.35 <= w.measured_seconds < 1.0
    assert not w.interrupted
    assert 4 <= w.samples <= 6  # start, ~3 periodic (0.1, 0.2, 0.3 s), end
    r = window.build_report(w, HOST, "enable_stats_fd", True, Filters(), "0.1.0")
    validator().validate(r)
    ps = r["program_stats"]
    assert {k: v["lifecycle"] for k, v in ps.items()} == {
        "1": "present",
        "2": "loaded",
        "3": "unloaded",
    }
    assert (ps["2"]["runtime_ns"], ps["1"]["runtime_ns"], ps["3"]["runtime_ns"]) == (500, 10, 0)


def test_signal_ends_the_window_at_once() -> None:
    """A real SIGTERM 0.3 s into a 30 s window: the loop ends within a few ms of it."""
    stop = snapshot.SignalStop()
    try:
        sent_at: list[float] = []

        def send() -> None:
            sent_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(0.3, send)
        start = time.monotonic()
        timer.start()
        w = window.observe(scripted([lambda: [p(1, 0, 0)]]), 30.0, 5.0, stop.wait, Tracker())
        timer.join()
    finally:
        stop.restore()
    assert w.interrupted
    assert stop.signum == signal.SIGTERM
    assert w.measured_seconds == pytest.approx(sent_at[0] - start, abs=0.2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


# ---- flags and output ----------------------------------------------------------------


def options(*argv: str) -> tuple[snapshot.Options, Filters]:
    args = build_parser().parse_args(["snapshot", *argv])
    return snapshot.parse_options(args)


def test_flags_parse() -> None:
    o, f = options(
        "--duration",
        "5m",
        "--sample-interval",
        "500ms",
        "--include-type",
        "tracepoint,xdp",
        "--exclude-name",
        "^x",
    )
    assert (o.duration, o.interval, o.output, o.verbose) == (300.0, 0.5, None, False)
    assert f.include_type == {"tracepoint", "xdp"} and f.exclude_name is not None
    o, _ = options()
    assert (o.duration, o.interval, o.stats_method, o.hooks) == (60.0, 1.0, "auto", False)
    assert options("--collector.hooks")[0].hooks is True


@pytest.mark.parametrize(
    ("argv", "method", "deprecated"),
    [
        (["--bpf.stats-method", "sysctl"], "sysctl", []),  # the daemon's spelling
        (["--stats-method", "sysctl"], "sysctl", ["--stats-method"]),  # the old one works
        (["--stats-method=enable_stats_fd"], "enable_stats_fd", ["--stats-method"]),
        # both: the new spelling wins, the old one is still named
        (["--stats-method", "sysctl", "--bpf.stats-method", "auto"], "auto", ["--stats-method"]),
        ([], "auto", []),
    ],
)
def test_stats_method_dotted_and_deprecated_spelling(
    argv: list[str], method: str, deprecated: list[str]
) -> None:
    args = build_parser().parse_args(["snapshot", *argv])
    assert snapshot.parse_options(args)[0].stats_method == method
    lines = snapshot.deprecation_lines(args)
    assert lines == [
        f"linnix-exporter snapshot: warning: {old} is deprecated, use --bpf.stats-method"
        for old in deprecated
    ]


def test_old_stats_method_spelling_hidden_from_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["snapshot", "--help"])
    text = capsys.readouterr().out
    assert "--bpf.stats-method" in text
    assert "--stats-method" not in text.replace("--bpf.stats-method", "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--duration", "soon"], "--duration: invalid duration"),
        (["--duration", "0s"], "--duration: duration must be positive"),
        (["--sample-interval", "0"], "--sample-interval: duration must be positive"),
        (["--sample-interval=-1s"], "--sample-interval: invalid duration"),
        (["--include-name", "("], "--include-name: invalid regular expression"),
        (["--include-type", "tracepont"], "--include-type: unknown program type tracepont"),
        (["--output", "/nonexistent/dir/r.json"], "--output: cannot write in"),
        (["--output", "/tmp"], "--output: '/tmp' is a directory"),
    ],
)
def test_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(snapshot.UsageError, match=re.escape(message)):
        options(*argv)


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("old")
    snapshot.write_atomic(str(out), '{"a": 1}\n')
    assert json.loads(out.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]  # no temp file left behind
    with pytest.raises(TypeError):
        snapshot.write_atomic(str(out), 42)  # type: ignore[arg-type]
    assert out.read_text() == '{"a": 1}\n'  # a failed write leaves the old report
    assert os.listdir(tmp_path) == ["r.json"]


# ---- progress ------------------------------------------------------------------------


def test_progress_plain_lines_when_not_a_tty() -> None:
    buf = io.StringIO()
    pr = Progress(60.0, "snapshot", stream=buf, tty=False, plain_every=10.0)
    for t in (0.0, 1.0, 5.0, 9.9, 10.0, 15.0, 21.0):
        pr.update(t, "3 programs")
    pr.line("snapshot: - program 7 x (xdp) unloaded")
    pr.close(22.5, "interrupted")
    assert buf.getvalue().splitlines() == [
        "snapshot: 0.0/60.0 s  3 programs",
        "snapshot: 10.0/60.0 s  3 programs",
        "snapshot: 21.0/60.0 s  3 programs",
        "snapshot: - program 7 x (xdp) unloaded",
        "snapshot: 22.5/60.0 s  interrupted",
    ]
    assert "\r" not in buf.getvalue()


def test_progress_every_update_when_verbose() -> None:
    buf = io.StringIO()
    pr = Progress(3.0, "x", stream=buf, tty=False, plain_every=0.0)
    for t in (0.0, 1.0, 2.0):
        pr.update(t)
    assert len(buf.getvalue().splitlines()) == 3


def test_progress_bar_on_a_tty() -> None:
    buf = io.StringIO()
    pr = Progress(10.0, "snapshot", stream=buf, tty=True)
    pr.update(5.0, "4 programs")
    pr.line("a log line")
    pr.close(10.0)
    out = buf.getvalue()
    half = f"snapshot {bar(0.5)} 5.0/10.0 s  4 programs"
    assert out.startswith("\r\x1b[K" + half)
    assert "\r\x1b[Ka log line\n" + half in out  # the bar is redrawn after a log line
    assert out.endswith(f"snapshot {bar(1.0)} 10.0/10.0 s\n")
    assert bar(0.5, 10) == "[#####-----]" and bar(2.0, 4) == "[####]"


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    pr = Progress(1.0, "x")
    pr.update(0.0)
    pr.close(1.0)
    out, err = capsys.readouterr()
    assert out == "" and "x: 0.0/1.0 s" in err


def test_seen_identity() -> None:
    s = Seen(first=p(3, 0, 0), last=p(3, 0, 0), first_mono=0.0, last_mono=0.0)
    assert s.identity == (3, f"{3:016x}", BOOT0 - 60 * S)
