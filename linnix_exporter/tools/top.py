"""`linnix-exporter top`: a live terminal view of what eBPF costs this node now.

Two feeds, one model (tools/top_model.py):
- the kernel, directly (default): no daemon needed. Statistics go on the way the daemon
  turns them on (kernel/stats_switch.StatsSwitch: an enable fd, else the sysctl, put
  back as found on every exit path; the cost per run calibrated as the daemon does),
  and every refresh is one tick of the daemon's own Ticker (wiring.py) with the
  daemon's readers: every program's statistics from one read of the BPF iterator and
  owners from the owners iterator (compiled in a short-lived child, as the daemon
  does; bpf() and a /proc walk where the kernel cannot), no probes. top's overhead is
  its own CPU and, when it turned statistics on, what they cost every program run.
- `--from URL`: a running exporter's /metrics, parsed with prometheus_client.

The terminal library (rich) is imported only inside main(): `linnix-exporter run`
builds this module's parser and must not pay for it in resident memory.

Exit codes: 0 quit (q, Ctrl-C, SIGTERM, SIGHUP), 1 the host or the exporter cannot be
read at start, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from linnix_exporter import log
from linnix_exporter.errors import EXIT_HOST, EXIT_OK, tool_error
from linnix_exporter.tools.snapshot import UsageError
from linnix_exporter.tools.top_model import KEYS_HELP, SORTS

if TYPE_CHECKING:
    from rich.console import RenderableType

    from linnix_exporter.config import RunConfig
    from linnix_exporter.schedule import Ticker
    from linnix_exporter.tools.snapshot import SignalStop
    from linnix_exporter.tools.top_model import Row, Samples, View

PROG = "linnix-exporter top"
MIN_INTERVAL, MAX_INTERVAL = 0.5, 60.0
SORT_COLUMNS = {column: key for key, (column, _) in SORTS.items()}


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_parser(sub: Any) -> None:
    keys = "\n".join(f"  {k}  sort by {what}" for k, (_, what) in SORTS.items())
    p: argparse.ArgumentParser = sub.add_parser(
        "top",
        help="live terminal view of what eBPF costs this node",
        description="A live view of every BPF program's cost, refreshed every --interval:\n"
        "run time share (CPU% of one core, and of the node), runs/s, ns/run, owner and pod;\n"
        "the node's BPF total; our own overhead against the budget; how statistics are on\n"
        "and what they cost every run. Reads the kernel directly (turns BPF statistics on as\n"
        "the daemon does and puts them back as found on exit), or a running exporter's\n"
        "/metrics with --from.",
        epilog=f"keys:\n{keys}\n  /  filter: type text (id, name, type, owner or pod), "
        "Enter applies, Esc cancels\n  Esc  clear the filter\n  q  quit (also Ctrl-C, SIGTERM)",
        formatter_class=_Help,
    )
    p.add_argument(
        "--from",
        dest="from_url",
        metavar="URL",
        default="",
        help="read a running exporter's /metrics (http://host:10924, https://user:pass@host:"
        "10924 behind basic auth) instead of the kernel",
    )
    p.add_argument("--interval", metavar="DURATION", default="1s", help="refresh every (0.5s-60s)")
    p.add_argument("--sort", choices=tuple(SORT_COLUMNS), default="cpu", help="initial sort")
    p.add_argument("--filter", metavar="TEXT", default="", help="initial filter (as the / key)")
    p.add_argument(
        "--bpf.stats-method",
        dest="stats_method",
        default="auto",
        choices=("auto", "enable_stats_fd", "sysctl"),
        help="kernel feed: how to turn statistics on (auto: BPF_ENABLE_STATS, else the sysctl)",
    )
    p.add_argument(
        "--bpf.read-method",
        dest="read_method",
        default="auto",
        choices=("auto", "iterator", "syscall"),
        help="kernel feed: how programs are read, as the daemon's flag (auto: the BPF "
        "iterator, else bpf() syscalls; syscall starts faster, no compile)",
    )
    p.add_argument(
        "--overhead.budget",
        dest="overhead_budget",
        metavar="RATIO",
        default="1%",
        help="kernel feed: budget for top's own overhead, a share of the node (--from shows "
        "the exporter's)",
    )
    p.add_argument(
        "--collector.hooks",
        dest="hooks",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="kernel feed: price each program's hooks as the daemon's flag does, filling "
        "WHOLE%% (run time + hook cost); off by default: calibrating the hook costs takes "
        "~0.9 s of CPU at start (--from: WHOLE%% is filled when the exporter runs with it)",
    )
    p.set_defaults(handler=main)


class FeedError(Exception):
    """A feed cannot be read; str() is the one line for the user."""


@dataclass(frozen=True)
class Options:
    url: str | None
    interval: float
    sort: str
    filter: str
    stats_method: str
    budget: float
    read_method: str = "auto"
    hooks: bool = False  # kernel feed: the hooks collector (WHOLE%)


def metrics_url(text: str) -> str:
    """http(s)://host:port[/path]; a bare host:port gets http://, an empty path /metrics."""
    from urllib.parse import urlsplit, urlunsplit

    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--from: not an http(s) URL: {text!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"--from: bad port in {text!r}") from None
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def parse_options(args: argparse.Namespace) -> Options:
    from linnix_exporter.config import parse_duration, parse_ratio

    try:
        interval = parse_duration(args.interval)
    except ValueError as e:
        raise UsageError(f"--interval: {e}") from None
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise UsageError(f"--interval: must be within 0.5s-60s, got {args.interval!r}")
    try:
        budget = parse_ratio(args.overhead_budget)
    except ValueError as e:
        raise UsageError(f"--overhead.budget: {e}") from None
    url = metrics_url(args.from_url) if args.from_url else None
    return Options(
        url,
        interval,
        args.sort,
        args.filter,
        args.stats_method,
        budget,
        args.read_method,
        getattr(args, "hooks", False),
    )


# ---- feeds --------------------------------------------------------------------------


class HttpFeed:
    """A running exporter's /metrics. The exporter ticks at its own pace: the model keeps
    the rates of the newest distinct tick."""

    def __init__(self, url: str) -> None:
        import base64
        from urllib.parse import unquote, urlsplit, urlunsplit

        from linnix_exporter.tools.top_model import Model

        parts = urlsplit(url)
        self.headers = {"Accept": "text/plain"}
        if parts.username is not None:
            # An exporter behind --web.config.file basic auth: user:password@host. The
            # password goes in the header, never on the screen.
            user, password = unquote(parts.username), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = self.label = urlunsplit(parts)
        self._model = Model()

    def view(self) -> View:
        return self._model.update(self.samples())

    def samples(self) -> Samples:
        import urllib.error
        import urllib.request

        from linnix_exporter.tools.top_model import samples_from_text

        req = urllib.request.Request(self.url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                body = r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise FeedError(f"{self.url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise FeedError(f"{self.url}: {reason}") from None
        try:
            samples = samples_from_text(body)
        except ValueError as e:
            raise FeedError(f"{self.url}: not Prometheus text: {e}") from None
        if "linnix_node_cpus" not in samples:
            raise FeedError(f"{self.url}: no linnix_* metrics there (not a linnix-exporter?)")
        return samples

    def close(self) -> None:
        pass


class KernelFeed:
    """The kernel, read by the daemon's own parts (wiring.py): one tick per refresh."""

    label = "kernel"

    def __init__(self, opts: Options) -> None:
        from linnix_exporter.kernel.stats_switch import StatsSwitch

        cfg = self.config(opts)
        self.stats = StatsSwitch()
        self._ticker: Ticker | None = None
        self.notes: list[str] = []
        try:
            self._start(cfg)
        except BaseException:
            self.close()  # statistics back as found when start-up fails half-way
            raise

    @staticmethod
    def config(opts: Options) -> RunConfig:
        """The daemon's defaults (no env), with top's choices."""
        from linnix_exporter.config import run_config
        from linnix_exporter.tick import HOOKS, PROBES

        base = run_config(argparse.Namespace(), {})
        return replace(
            base,
            collect_interval=opts.interval,
            overhead_budget=opts.budget,
            probes_enabled=False,
            collectors=(base.collectors - {PROBES, HOOKS}) | ({HOOKS} if opts.hooks else set()),
            bpf_stats_method=opts.stats_method,
            bpf_read_method=opts.read_method,
            bpf_top_programs=1_000_000,  # every program its own row: no "[other]"
            # Statistics stay on while top runs: a view that sampled them would show
            # nothing between windows.
            bpf_stats_mode="always",
        )

    def _start(self, cfg: RunConfig) -> None:
        from linnix_exporter import wiring

        # The daemon's choice of readers, loaded before statistics go on (a compile in a
        # child, ~1 s); a warning (iterator unavailable: bpf() then) becomes a note, as
        # do the statistics' (held elsewhere, restored after a crash, off).
        iters = wiring.open_iterators(cfg)
        ctl = wiring.start_stats(cfg, self.stats, time.monotonic())
        self._ticker = wiring.make_ticker(cfg, wiring.kernel_sources(cfg, ctl, iters=iters), ctl)

    def view(self) -> View:
        from linnix_exporter.tools.top_model import view_of_tick

        assert self._ticker is not None
        # The Ticker's tick: the exporter's, then the statistics controller's turn.
        return view_of_tick(self._ticker.tick())

    def close(self) -> None:
        """Statistics back as found first: nothing after this may fail before it."""
        self.stats.close()
        if self._ticker is not None:
            self._ticker.exporter.close()
            self._ticker.close()


# ---- the screen ---------------------------------------------------------------------


@dataclass
class Screen:
    """What the keys change: the sort column, the filter and its editing."""

    sort: str = "cpu"
    filter: str = ""
    editing: str | None = None  # the filter being typed, None when not editing
    _before_edit: str = ""

    def key(self, k: str) -> bool:
        """Apply one key; False when it asks to quit."""
        if self.editing is not None:
            if k in ("\r", "\n"):
                self.editing = None
            elif k == "\x1b":
                self.filter, self.editing = self._before_edit, None
            elif k in ("\x7f", "\x08"):
                self.editing = self.editing[:-1]
                self.filter = self.editing
            elif k.isprintable():
                self.editing += k
                self.filter = self.editing
            return True
        if k in ("q", "Q", "\x03"):
            return False
        if k in SORTS:
            self.sort = SORTS[k][0]
        elif k == "/":
            self._before_edit, self.editing = self.filter, self.filter
        elif k == "\x1b":
            self.filter = ""
        return True


def keys_from(data: bytes) -> list[str]:
    """Keys in one read from the terminal: a lone ESC is Esc; escape sequences (arrows,
    function keys) are dropped whole."""
    text = data.decode("utf-8", "replace")
    if text.startswith(("\x1b[", "\x1bO")):
        return []
    return list(text)


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}"


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _budget(v: float | None, budget: float | None) -> str:
    if v is None:
        return "-"
    text = f"{v * 100:.3f}% of the node"
    if budget:
        text += f" ({v / budget * 100:.0f}% of its {budget * 100:g}% budget)"
    return text


def header_lines(view: View | None, feed_label: str, interval: float, error: str) -> list[str]:
    clock = time.strftime("%H:%M:%S")
    if view is None:
        return [f"linnix-exporter top  {feed_label}  {clock}", "reading..."]
    h = view.header
    kernel = feed_label == "kernel"
    switched = h.stats_method in ("enable_stats_fd", "sysctl")  # not already_on, off
    source = feed_label + (" (statistics switched by top)" if kernel and switched else "")
    over = f"over {h.interval_seconds:.1f}s" if h.interval_seconds else "collecting..."
    lines = [
        f"linnix-exporter top  {source}  refresh {interval:g}s  {clock}",
        f"node: {h.online_cpus} CPUs, {h.programs} BPF programs; all BPF: "
        f"{_budget(h.bpf_cpu_ratio, h.bpf_budget_ratio)}  {over}",
    ]
    who, cpu = ("top's own overhead", "top CPU") if kernel else ("exporter overhead", "exporter")
    comp = h.components
    parts = ", ".join(
        f"{label} {_pct(comp.get(key), 3)}%"
        for key, label in (("probes", "probes"), ("exporter", cpu), ("stats", "stats"))
        if key in comp
    )
    lines.append(
        f"{who}: {_budget(h.overhead_ratio, h.overhead_budget_ratio)}"
        + (f": {parts}" if parts else "")
    )
    cost = (
        f"{h.stats_cost_ns:.1f} ns more ({h.stats_cost_source})"
        if h.stats_cost_ns is not None
        else "? (not calibrated)"
    )
    mode = "sampled" if h.stats_method == "sampled" else "always"
    duty = f" (on {_pct(h.duty_ratio, 0)}% of the time)" if h.duty_ratio is not None else ""
    lines.append(
        f"statistics: {'on' if h.stats_on else 'OFF'} ({h.stats_method}), mode {mode}{duty}; "
        f"every program run pays {cost}"
    )
    if error:
        lines.append(f"error: {error} (showing the last good reading)")
    return lines


COLUMNS = (
    # (title, sort column or "", right-justified)
    ("ID", "id", True),
    ("TYPE", "", False),
    ("NAME", "", False),
    ("OWNER", "owner", False),
    ("POD", "", False),
    ("CPU%", "cpu", True),
    ("NODE%", "", True),
    ("RUNS/S", "runs", True),
    ("NS/RUN", "ns", True),
    ("WHOLE%", "", True),  # run time + hook cost, a share of one core like CPU%
)
MAX_WIDTH = 40  # NAME, OWNER and POD are cut with "~" past it


def row_cells(r: Row, unlisted: int) -> tuple[str, ...]:
    owner = r.owner if r.owner_pid is None else f"{r.owner}[{r.owner_pid}]"
    name = r.name if r.prog_id is not None else f"[other] ({unlisted} programs)"
    return (
        "" if r.prog_id is None else str(r.prog_id),
        r.type,
        name + (" *" if r.ours else ""),
        owner,
        r.pod,
        _pct(r.core_ratio),
        _pct(r.node_ratio, 3),
        _num(r.runs_per_second),
        _num(r.ns_per_run),
        _pct(r.whole_ratio),
    )


def table_lines(rows: list[Row], sort: str, unlisted: int) -> list[str]:
    """The program table as fixed-width lines, the title line first. Laid out here, not
    by rich's Table: that took ~1.5 ms per row of CPU on these VMs, 60 ms a refresh
    for a screenful, where a line of text costs a few microseconds."""
    titles = [f"[{t}]" if c and c == sort else t for t, c, _ in COLUMNS]
    cells = [row_cells(r, unlisted) for r in rows]
    widths = [
        min(MAX_WIDTH, max([len(t)] + [len(c[i]) for c in cells])) for i, t in enumerate(titles)
    ]

    def line(values: list[str] | tuple[str, ...]) -> str:
        out = []
        for v, w, (_, _, right) in zip(values, widths, COLUMNS, strict=True):
            v = v if len(v) <= w else v[: w - 1] + "~"
            out.append(v.rjust(w) if right else v.ljust(w))
        return "  ".join(out).rstrip()

    return [line(titles)] + [line(c) for c in cells]


WHOLE_HELP = (
    "WHOLE%: run time + hook cost, of one core (empty: hooks not priced; --collector.hooks)"
    "   * ours"
)


def render(
    view: View | None,
    screen: Screen,
    feed_label: str,
    interval: float,
    error: str,
    height: int,
    notes: list[str],
) -> RenderableType:
    from rich.text import Text

    from linnix_exporter.tools.top_model import arrange

    head = header_lines(view, feed_label, interval, error)
    rows = arrange(view.rows, screen.sort, screen.filter) if view is not None else []
    footer = [
        f"filter: {screen.editing}_" if screen.editing is not None else "",
        WHOLE_HELP,
        f"keys: {KEYS_HELP}",
    ]
    if screen.filter and screen.editing is None:
        footer[0] = f"filter: {screen.filter!r} ({len(rows)} programs match; Esc clears)"
    if notes:
        footer.insert(0, f"note: {notes[-1]}")
    footer = [f for f in footer if f]
    room = max(1, height - len(head) - len(footer) - 2)
    shown = rows[:room]
    unlisted = view.header.unlisted if view is not None else 0
    title, *lines = table_lines(shown, screen.sort, unlisted)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("\n".join(head) + "\n")
    text.append(title + "\n", style="bold reverse")
    for r, ln in zip(shown, lines, strict=True):
        text.append(ln + "\n", style="cyan" if r.ours else None)
    if len(rows) > room:
        text.append(f"... {len(rows) - room} more (filter with /)\n", style="dim")
    text.append("\n".join(footer), style="dim")
    return text


# ---- the loop -----------------------------------------------------------------------


class Keys:
    """The terminal's keys, one at a time (cbreak: no echo, no line buffering); the
    terminal's modes are put back on close. Not a terminal: no keys."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: list[Any] | None = None
        if sys.stdin.isatty():
            import termios
            import tty

            self.fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def read(self) -> list[str]:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 256)
        except OSError:
            return []
        return keys_from(data)

    def close(self) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


def _capture_logs(notes: list[str]) -> None:
    """The readers' warnings become the screen's note line: a line written to stderr
    would tear the screen."""

    def keep(fields: dict[str, Any]) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in list(fields.items())[3:])
        notes.append(f"{fields['event']}" + (f" ({extra})" if extra else ""))

    log.configure("warn", sink=keep)


def main(args: argparse.Namespace) -> int:
    try:
        opts = parse_options(args)
    except UsageError as e:
        return tool_error(PROG, e)
    if not sys.stdout.isatty():
        return tool_error(
            PROG,
            "needs a terminal; for figures to keep use `linnix-exporter snapshot` (JSON) "
            "or the exporter's /metrics",
        )
    notes: list[str] = []
    _capture_logs(notes)
    if opts.url is None:
        from linnix_exporter.kernel import host

        missing = host.missing_caps((host.CAP_SYS_ADMIN,))
        if missing:
            return tool_error(
                PROG,
                f"missing capability {', '.join(missing)}: needed to list all BPF programs "
                "and turn on their statistics; run as root, or read a running exporter "
                "with --from URL",
                EXIT_HOST,
            )
    from linnix_exporter.errors import Fatal
    from linnix_exporter.tools.snapshot import SignalStop

    # Installed before statistics go on: a SIGTERM at any point ends in the same clean-up.
    stop = SignalStop((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    feed: HttpFeed | KernelFeed | None = None
    try:
        try:
            feed = HttpFeed(opts.url) if opts.url else KernelFeed(opts)
            first = feed.view()
        except (FeedError, OSError, Fatal) as e:  # BpfError is an OSError
            return tool_error(PROG, e, EXIT_HOST)
        if isinstance(feed, KernelFeed):
            notes.extend(feed.notes)
        return _loop(feed, first, opts, stop, notes)
    finally:
        if feed is not None:
            feed.close()  # statistics back as found before the screen goes
        stop.restore()


def _loop(
    feed: HttpFeed | KernelFeed, first: View, opts: Options, stop: SignalStop, notes: list[str]
) -> int:
    import select

    from rich.console import Console
    from rich.live import Live

    from linnix_exporter.schedule import next_deadline

    view = first
    screen = Screen(sort=opts.sort, filter=opts.filter)
    console = Console()
    keys = Keys()
    error = ""
    due = time.monotonic() + opts.interval
    try:
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                live.update(
                    render(
                        view,
                        screen,
                        feed.label,
                        opts.interval,
                        error,
                        console.size.height,
                        notes,
                    ),
                    refresh=True,
                )
                fds = [stop.fileno()] + ([keys.fd] if keys.fd is not None else [])
                ready, _, _ = select.select(fds, [], [], max(0.0, due - time.monotonic()))
                if stop.wait(0):
                    return EXIT_OK
                if keys.fd in ready and not all(screen.key(k) for k in keys.read()):
                    return EXIT_OK
                now = time.monotonic()
                if now >= due:
                    due = next_deadline(due, opts.interval, now)
                    try:
                        view = feed.view()
                        error = ""
                    except (FeedError, OSError) as e:
                        error = str(e)
    finally:
        keys.close()
