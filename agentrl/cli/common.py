"""Helpers shared by the command-line modules: consoles, ``key=value`` parsing, output files, and
:func:`printable`, which every command uses before it shows text an agent or an env produced."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from agentrl.errors import AgentrlError, UserError

__all__ = [
    "AgentrlError",
    "UserError",
    "check_output_path",
    "console",
    "console_err",
    "parse_kv",
    "printable",
    "printable_text",
    "write_json",
]


def _live_width(made: Console) -> Console:
    """``made``, sizing itself at every print. Rich fixes a console's width when COLUMNS is set at
    construction, and these consoles are built at import: the width would depend on what happened to be
    in the environment then (one process can run many commands: tests, ``CliRunner``, notebooks)."""
    made._width = None
    return made


console = _live_width(Console())
console_err = _live_width(Console(stderr=True, soft_wrap=True))

# C0 controls but newline and tab, DEL, C1 controls (CSI, OSC ... in their 8-bit forms), and the
# Unicode marks that reorder what a terminal shows (bidi embeddings, overrides and isolates).
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x0b": "\\v", "\x0c": "\\f", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: control characters shown as escapes, layout kept.

    Agent programs and env engines can emit escape sequences (clear the screen, set the window
    title, hide text, move the cursor) or bidi overrides that make a terminal show something other
    than what is there. This returns the same text with every such character written out the way
    Python would (``\\x1b[2J``, ``\\r``, ``\\u202e``); newlines and tabs are kept, so a transcript
    still reads as one. Print the result with Rich markup off (or as :func:`printable_text`).
    """
    return _TERMINAL_CONTROLS.sub(_escape, text)


def printable_text(value: Any, style: str = "") -> Text:
    """``str(value)`` as a Rich ``Text`` (markup is not interpreted) with :func:`printable` applied:
    what a table cell or a line built from env or agent output should be."""
    return Text(printable(str(value)), style=style)


def parse_kv(pairs: list[str] | None, what: str = "--env-arg") -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (``3`` -> 3, ``true`` -> True)."""
    return {key: value for key, (value, _) in parse_kv_raw(pairs, what).items()}


def parse_kv_raw(pairs: list[str] | None, what: str = "--env-arg") -> dict[str, tuple[Any, str]]:
    """Like :func:`parse_kv`, keeping the text as given next to its YAML reading: ``{key: (value, raw)}``.

    The raw text lets a caller that knows the expected type take ``data_dir=2024`` as the string it
    was meant to be although YAML reads a number.
    """
    import yaml

    out: dict[str, tuple[Any, str]] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{what} expects key=value, got {pair!r}", hint=f"for example {what} max_turns=20")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw  # not YAML (an unbalanced quote or bracket): the text itself
        out[key] = (value, raw)
    return out


def check_output_path(path: str | os.PathLike[str], option: str = "--output") -> Path:
    """Refuse an output file that cannot be written, before any work is done; returns it as a Path."""
    target = Path(path).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UserError(f"{option} {target} is a directory", hint=f"give a file name, e.g. {target / 'report.json'}")
    if not parent.is_dir():
        raise UserError(f"{option} {target}: directory {parent} does not exist", hint=f"create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"{option} {target} cannot be written (no permission, or a read-only file system)")
    return target


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON; the file appears complete or not at all (temporary file + rename)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what open(path, "w") would have given; mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
