"""``agentrl data fetch|check NAME``: benchmark data that cannot ship with agentrl.

Each environment that needs downloaded data provides a module ``agentrl.environments.<name>.data``
with two functions:

* ``fetch(dest: pathlib.Path | None) -> pathlib.Path``: download into ``dest`` (or the env's
  default root) and return the root; raise ``agentrl.errors.UserError`` with what to do
  when the network or a tool is missing;
* ``check(root: pathlib.Path | None) -> dict[str, object]``: what a data root holds (per split).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.common import UserError, console, printable_text

app = typer.Typer(help="Fetch and check benchmark data.", no_args_is_help=True)

DATASETS = ("alfworld", "webshop")

Name = Annotated[str, typer.Argument(help=f"Data set: {', '.join(DATASETS)}.")]


def _module(name: str):
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}", hint=f"choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"agentrl.environments.{name}.data")


@app.command("fetch")
def fetch_cmd(
    name: Name,
    dest: Annotated[Path | None, typer.Option(help="Where to put the data (default: the env's data root).")] = None,
) -> None:
    """Download a benchmark's data (needs a network; says what to do otherwise)."""
    root = _module(name).fetch(dest)
    console.print(f"{name} data is in {root}")


@app.command("check")
def check_cmd(
    name: Name,
    root: Annotated[Path | None, typer.Option(help="Data root to inspect (default: the env's).")] = None,
) -> None:
    """Report what a data root holds, per split."""
    report = _module(name).check(root)
    for key, value in report.items():  # names and counts read from downloaded files: shown, never obeyed
        console.print(printable_text(f"{key}: {value}"))
