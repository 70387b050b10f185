"""``agentrl train RECIPE`` and ``agentrl plot RUN``."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from agentrl.cli.common import UserError, check_output_path, console, printable_text


def recipe_names() -> list[str]:
    """Modules of ``agentrl.recipes`` that define ``Config`` and ``main`` (shipped with the package)."""
    import agentrl.recipes

    return sorted(m.name for m in pkgutil.iter_modules(agentrl.recipes.__path__) if not m.name.startswith("_"))


def train(
    recipe: Annotated[str | None, typer.Argument(help="Recipe name (see --list), e.g. textworld_grpo.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides key=value (dotted for nested).")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of config overrides.")] = None,
    list_recipes: Annotated[bool, typer.Option("--list", help="List the recipes and exit.")] = False,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the merged config (after --config and key=value) with every key's meaning, and exit.")] = False,
    ray: Annotated[str | None, typer.Option("--ray", help="Ray cluster for rollout workers: 'local' or an address (recipes with a 'ray' field).")] = None,
) -> None:
    """Run a training recipe: its typed config, overridden by --config FILE then key=value pairs."""
    from agentrl.config import ConfigError, load_config

    names = recipe_names()
    if list_recipes or recipe is None:
        for name in names:
            module = importlib.import_module(f"agentrl.recipes.{name}")
            console.print(f"[bold]{name}[/]  {(module.__doc__ or '').strip().splitlines()[0] if module.__doc__ else ''}")
        return
    if recipe not in names:
        raise UserError(f"unknown recipe {recipe!r}", hint=f"recipes: {', '.join(names)}")
    module = importlib.import_module(f"agentrl.recipes.{recipe}")
    if show_config:
        _show_config(recipe, module.Config, config, overrides)
        return
    if ray is not None:
        import dataclasses

        if "ray" not in {f.name for f in dataclasses.fields(module.Config)}:
            raise UserError(f"recipe {recipe!r} has no Ray mode", hint="--ray works with recipes that have a 'ray' field, e.g. mle_async")
        overrides = [*(overrides or []), f"ray={ray}"]
    try:
        module.main(load_config(module.Config, config, overrides))
    except ConfigError as exc:  # a key, a type, or a value the recipe itself refuses (model=PATH missing)
        raise UserError(str(exc), hint=exc.hint or f"`agentrl train {recipe} --show-config` lists the keys") from exc


def _show_config(recipe: str, cls: type, file: Path | None, overrides: list[str] | None) -> None:
    """The config a run would get (defaults, then --config, then key=value), every key with its description.

    Values that differ from the recipe's defaults are highlighted. Sections that are unset (``learner.lora``)
    show the keys they take; the options of the algorithm plug-ins in use are listed under ``learner.options``.
    """
    from agentrl.algorithms.registry import AlgorithmConfigError
    from agentrl.config import ConfigError, describe, load_config
    from agentrl.training.config import plugin_option_sections

    try:
        merged = load_config(cls, file, overrides)
        rows = describe(merged, sections=plugin_option_sections)
    except (ConfigError, AlgorithmConfigError) as exc:
        raise UserError(str(exc), hint=f"`agentrl train {recipe} --show-config` without overrides lists the keys") from exc
    given = _given_keys(file, overrides)

    def was_set(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in given)

    title = f"{recipe} config" + (f" ({len(given)} keys set by --config or key=value, in bold)" if given else "")
    table = Table(title=title)
    for column in ("key", "value", "meaning"):
        table.add_column(column, overflow="fold")
    for key, value, doc in rows:
        style = "bold yellow" if was_set(key) else ""
        table.add_row(printable_text(key, style), printable_text(value, style), printable_text(doc))
    console.print(table)


def _given_keys(file: Path | None, overrides: list[str] | None) -> set[str]:
    """Dotted keys the YAML file and the ``key=value`` overrides set (leaves of the file's mappings)."""
    import yaml

    def leaves(data: object, prefix: str) -> set[str]:
        if isinstance(data, dict) and data:
            return {k for key, value in data.items() for k in leaves(value, f"{prefix}{key}.")}
        return {prefix.rstrip(".")}

    keys = leaves(yaml.safe_load(file.read_text()) or {}, "") if file is not None else set()
    return {k for k in keys if k} | {pair.partition("=")[0].strip() for pair in overrides or []}


def plot(
    run: Annotated[Path, typer.Argument(help="Run directory (holding metrics.jsonl) or the metrics file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG path (default RUN/curves.png).")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="Metric key to draw (repeatable).")] = None,
) -> None:
    """Draw learning curves (success rate, return, entropy, loss) of a run to PNG."""
    from agentrl.plotting import plot_run

    if output is not None:
        check_output_path(output)
    path = plot_run(run, output, metric)
    console.print(f"curves written to {path}")
