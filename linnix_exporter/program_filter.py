"""Which programs may have series of their own: --bpf.include-name/-exclude-name/
-include-type/-exclude-type for the daemon, the same options for `snapshot`. Filters
only move a program into the "[other]" row: node totals always count every program."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgramFilter:
    include_name: re.Pattern[str] | None = None
    exclude_name: re.Pattern[str] | None = None
    include_type: frozenset[str] = frozenset()
    exclude_type: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(
            self.include_name or self.exclude_name or self.include_type or self.exclude_type
        )

    def keep(self, name: str, ptype: str) -> bool:
        if self.include_name is not None and not self.include_name.search(name):
            return False
        if self.exclude_name is not None and self.exclude_name.search(name):
            return False
        if self.include_type and ptype not in self.include_type:
            return False
        return ptype not in self.exclude_type

    def as_json(self) -> dict[str, Any]:
        return {
            "include_name": self.include_name.pattern if self.include_name else None,
            "exclude_name": self.exclude_name.pattern if self.exclude_name else None,
            "include_type": sorted(self.include_type),
            "exclude_type": sorted(self.exclude_type),
        }
