"""Progress of a timed run on stderr, for the by-hand tools (snapshot, prove).

On a terminal: one line redrawn in place (a bar, elapsed/total seconds and a short
text). Otherwise (CI logs, pipes): plain lines, one at the first update, then at most
one every `plain_every` seconds (0 = every update), and one at close, so a log shows
the run advancing without a flood of carriage returns.

Never writes to stdout: the tools may write their report there.
"""

from __future__ import annotations

import sys
from typing import TextIO

_BAR_WIDTH = 30
_CLEAR_LINE = "\r\x1b[K"


def bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    """'[#####-----]' for a fraction in [0, 1] (clamped)."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Progress:
    """Progress(total_seconds, label).update(elapsed, extra) ... .close(extra)."""

    def __init__(
        self,
        total_seconds: float,
        label: str,
        stream: TextIO | None = None,
        tty: bool | None = None,
        plain_every: float = 10.0,
    ) -> None:
        self.total = total_seconds
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every = plain_every
        self._last_plain: float | None = None  # elapsed at the last plain line
        self._drawn = ""  # what the bar line shows now (TTY), to redraw after line()
        self._closed = False

    def _text(self, elapsed: float, extra: str) -> str:
        tail = f"  {extra}" if extra else ""
        return f"{self.label}: {elapsed:.1f}/{self.total:.1f} s{tail}"

    def update(self, elapsed: float, extra: str = "") -> None:
        if self._closed:
            return
        if self.tty:
            frac = elapsed / self.total if self.total > 0 else 1.0
            self._drawn = f"{self.label} {bar(frac)} {elapsed:.1f}/{self.total:.1f} s"
            if extra:
                self._drawn += f"  {extra}"
            self._write(_CLEAR_LINE + self._drawn)
            return
        if self._last_plain is None or elapsed - self._last_plain >= self.plain_every:
            self._last_plain = elapsed
            self._write(self._text(elapsed, extra) + "\n")

    def line(self, text: str) -> None:
        """A log line that does not break the bar: cleared, printed, bar redrawn."""
        if self.tty and self._drawn and not self._closed:
            self._write(_CLEAR_LINE + text + "\n" + self._drawn)
        else:
            self._write(text + "\n")

    def close(self, elapsed: float | None = None, extra: str = "") -> None:
        """Final state: the bar is left on its own line (TTY) or one last plain line."""
        if self._closed:
            return
        if elapsed is not None:
            if self.tty:
                self.update(elapsed, extra)
            else:
                self._write(self._text(elapsed, extra) + "\n")
        if self.tty and self._drawn:
            self._write("\n")
        self._closed = True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
