"""Helpers shared by the command-line modules."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console()
console_err = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """A mistake the user can fix; printed as one line (plus a hint), never as a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def parse_kv(pairs: list[str] | None, what: str = "--env-arg") -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (``3`` -> 3, ``true`` -> True)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{what} expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
