"""Command-line usage errors (unknown command or option, missing argument, bad value) as one line + hint.

Typer raises click's exception classes, and which click depends on its version: up to 0.2x it
raises those of the ``click`` package, newer releases (0.29 and on) vendor click as ``typer._click``
with classes of the same names that are *not* ``click``'s. This module looks the classes up in
both places, so the CLI reports a usage error the same way whichever typer is installed.
"""

from __future__ import annotations

import difflib
import importlib
import re
from types import ModuleType
from typing import Any

_CLICK_MODULES = ("typer._click.exceptions", "click.exceptions")


def _modules() -> list[ModuleType]:
    found = []
    for name in _CLICK_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:  # that typer does not vendor click, or plain click is not installed
            continue
    return found


def click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Every class called ``name`` (``ClickException``, ``Abort``, ...) in the clicks typer may raise."""
    return tuple(getattr(module, name) for module in _modules() if hasattr(module, name))


def describe_usage_error(exc: BaseException, command_path: str = "agentrl") -> tuple[str, str]:
    """``(message, hint)`` for a click exception: one line each, the hint with a did-you-mean when one fits.

    ``command_path`` (``agentrl eval``) names the command for the hint when click did not attach its
    context to the exception (it does not for an option missing its value).
    """
    ctx = getattr(exc, "ctx", None)
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    # click and typer append their own suggestions in version-dependent words; ours go in the hint
    text = re.split(r"\.?\s*(?:Did you mean\b|\(Possible options:)", " ".join(text.split()), maxsplit=1)[0]
    message = (text[:1].lower() + text[1:]).rstrip(".") or type(exc).__name__
    given = _rejected_input(exc)
    if given is not None and repr(given) not in message:
        message += f" (got {given!r})"
    suggestion = None
    if isinstance(exc, click_classes("NoSuchOption")):
        possible = list(getattr(exc, "possibilities", None) or [])
        suggestion = possible[0] if len(possible) == 1 else _closest(exc.option_name, _option_names(ctx))  # type: ignore[attr-defined]
    elif (unknown := re.match(r"no such command '(.+)'", message)) and ctx is not None:
        suggestion = _closest(unknown.group(1), ctx.command.list_commands(ctx))
    where = ctx.command_path if ctx is not None else command_path
    return message, (f"did you mean {suggestion!r}? " if suggestion else "") + f"see `{where} --help`"


def command_path(root: Any, args: list[str], name: str = "agentrl") -> str:
    """The command ``args`` invoke under the click group ``root``: ``agentrl store show`` for ``store show 1``."""
    path, command = [name], root
    for arg in args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            if arg.startswith("-"):
                continue
            break
        path.append(arg)
        command = sub
    return " ".join(path)


def _closest(word: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _option_names(ctx: Any) -> list[str]:
    if ctx is None:
        return []
    return [opt for param in ctx.command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")]


def _rejected_input(exc: BaseException) -> Any:
    """The value a bad-parameter error rejected, where newer typer's message leaves it out: typer
    validates values with pydantic and keeps its ``ValidationError`` as the cause."""
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors):
        return None
    try:
        first = errors()[0]
    except (TypeError, IndexError, KeyError):
        return None
    return first.get("input") if isinstance(first, dict) else None
