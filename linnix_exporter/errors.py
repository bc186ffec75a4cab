"""What goes wrong in a way the user must read, and the exit codes that say so: one
place for every module that fails start-up or a tool (a leaf: imports nothing of ours).

Exit codes: 0 clean, 1 the host cannot run us (capability, kernel, port) or a tool's
check failed, 2 bad configuration (flags, env), 3 a tool could not decide.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_HOST = 1  # the daemon: this host cannot run us
EXIT_FAIL = 1  # a tool: the check ran and failed (compare: a regression; prove: fail)
EXIT_USAGE = 2
EXIT_CANNOT = 3  # prove: no verdict possible


class ConfigError(ValueError):
    """A bad option value; str() is the one line shown to the user."""


class Fatal(Exception):
    """Start-up cannot go on; str() is the one line for the user."""


def tool_error(prog: str, message: object, code: int = EXIT_USAGE) -> int:
    """The one line a user reads on stderr, "PROG: error: message"; returns `code`, the
    exit code that goes with it (`return tool_error(...)` from a tool's main)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code
