"""`linnix-exporter prove` (placeholder: being written)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("prove", help="(not yet available)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    print("linnix-exporter prove: not yet available")
    return 2
