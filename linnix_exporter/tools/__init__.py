"""Tools people run by hand and in CI, as subcommands of the same program.

- snapshot: every BPF program's kernel statistics over one window, as a JSON report;
- compare: two snapshot reports side by side, with a regression gate and a chart;
- prove: the overhead proof: a process workload with and without the exporter running.

They share the daemon's kernel readers (linnix_exporter.kernel) and math (rates.py).
Each module keeps its import cheap (stdlib + argparse at top level; bcc, matplotlib and
jsonschema only inside the functions that need them) because `linnix-exporter run` builds
every subcommand's parser and must not pay for them in resident memory.

A tool module exposes:
    add_parser(sub) -> None   registers its subcommand and sets `handler` on it
    (handler: Callable[[argparse.Namespace], int], the process exit code)
"""

from __future__ import annotations

TOOLS = ("snapshot", "compare", "prove", "top")
