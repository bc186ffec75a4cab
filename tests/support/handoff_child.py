"""A stand-in for the bcc loaders (kernel/_loader.py, kernel/iter_loader.py): sends the
header given as JSON in --header with --fds fds of /dev/null, or fails with --fail."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from linnix_exporter.kernel import handoff


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sock-fd", type=int, required=True)
    p.add_argument("--header", default="{}")
    p.add_argument("--fds", type=int, default=0)
    p.add_argument("--fail", default="")
    args = p.parse_args()

    def load() -> tuple[dict[str, Any], list[int]]:
        if args.fail:
            raise ValueError(args.fail)
        return json.loads(args.header), [os.open(os.devnull, os.O_RDONLY) for _ in range(args.fds)]

    handoff.child_main(args.sock_fd, load, ValueError)


if __name__ == "__main__":
    main()
