"""Log lines: one JSON object a line for machines, a readable line on a terminal.

    _log = log.get("hooks")
    _log.warning("hook calibration failed", hook="uprobe", reason=why)

JSON: {"timestamp": "2026-12-07T05:51:21.799844Z", "level": "warning", "event": "hook
calibration failed", "hook": "uprobe", "reason": "..."}; console: the timestamp, the
level in brackets, the event, then key=value pairs. Loggers made at import follow the
configure() that comes later (the daemon configures once its flags are read).

Our own rather than structlog's: the daemon uses four methods and two renderers, and
structlog's imports (asyncio among them) held ~8 MB of the daemon's resident memory
(measured with VmRSS before and after the import, beside the daemon's other imports).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}

# Takes a finished line's fields (timestamp, level, event, then the caller's).
Sink = Callable[[dict[str, Any]], None]


def _stamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def json_line(fields: dict[str, Any]) -> str:
    return json.dumps(fields, default=repr)


def console_line(fields: dict[str, Any]) -> str:
    head = f"{fields['timestamp']} [{fields['level']:<9}] {fields['event']:<30}"
    rest = " ".join(f"{k}={v}" for k, v in list(fields.items())[3:])
    return f"{head} {rest}".rstrip()


def _writer(render: Callable[[dict[str, Any]], str]) -> Sink:
    def write(fields: dict[str, Any]) -> None:
        stream = sys.stderr  # as it is at the call (tests swap it)
        stream.write(render(fields) + "\n")
        stream.flush()

    return write


class _Config:
    level = _LEVELS["info"]
    sink: Sink = _writer(json_line)


def configure(level: str = "info", fmt: str = "auto", sink: Sink | None = None) -> None:
    """Lines at `level` and above on stderr, as JSON (`fmt` json, or auto off a
    terminal) or console text; or every such line's fields handed to `sink`."""
    _Config.level = _LEVELS[level]
    if sink is None:
        use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
        sink = _writer(json_line if use_json else console_line)
    _Config.sink = sink


class Logger:
    """What log.get() returns: a method per level, each taking the event and fields."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # whose lines these are (not printed: the event says it)

    def _emit(self, level: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if _LEVELS[level] < _Config.level:
            return
        if args:
            event = event % args
        if kw.pop("exc_info", False):
            kw["exception"] = traceback.format_exc()
        _Config.sink({"timestamp": _stamp(), "level": level, "event": event, **kw})

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("warning", event, args, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit("error", event, args, kw)


def get(name: str) -> Logger:
    return Logger(name)
