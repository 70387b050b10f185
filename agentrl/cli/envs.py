"""``agentrl envs list|info|check`` and ``agentrl play``."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from rich.table import Table

from agentrl.cli.common import console, parse_kv_raw, printable, printable_text
from agentrl.cli.env_setup import env_parameters, make_env, reset_on_task, resolve_env

app = typer.Typer(help="List, describe and check environments.", no_args_is_help=True)

EnvArg = Annotated[str, typer.Argument(help="Environment id or alias (see `agentrl envs list`).")]
EnvArgs = Annotated[
    list[str] | None,
    typer.Option("--env-arg", "-e", help="Constructor argument key=value (repeatable), e.g. -e difficulty=medium."),
]


@app.command("list")
def list_cmd() -> None:
    """List registered environments and whether their dependencies are installed."""
    import agentrl

    table = Table(title="agentrl environments")
    for column in ("id", "alias", "installed", "description"):
        table.add_column(column)
    for entry in agentrl.list_envs():
        missing = entry.missing()
        status = "[green]yes[/]" if not missing else f"[red]no[/] (pip install 'agentrl[{entry.extra}]')"
        table.add_row(printable_text(entry.id), printable_text(entry.alias or ""), status, printable_text(entry.description))
    console.print(table)


@app.command("info")
def info_cmd(env: EnvArg, env_arg: EnvArgs = None) -> None:
    """Describe an environment: constructor arguments, splits and panel sizes."""
    entry, kwargs = resolve_env(env, parse_kv_raw(env_arg))
    instance = make_env(entry, kwargs)
    try:
        console.print(f"{entry.id} (alias {entry.alias}) - {printable(entry.description)}", highlight=False, markup=False)
        console.print(f"entry point: {printable(str(entry.entry_point))}", highlight=False, markup=False)
        console.print(f"max_turns: {instance.max_turns}", highlight=False)
        for name, param in (env_parameters(entry) or {}).items():
            annotation = "" if param.annotation is inspect.Parameter.empty else f": {param.annotation}"
            default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
            console.print(f"argument -e {name}{annotation}{default}", highlight=False, markup=False)
        for split in instance.splits:
            panel = instance.task_ids(split)
            preview = ", ".join(panel[:3]) + (", ..." if len(panel) > 3 else "")
            console.print(f"split {split}: {len(panel)} tasks ({printable(preview)})", highlight=False, markup=False)
    finally:
        instance.close()


@app.command("check")
def check_cmd(
    env: EnvArg,
    task: Annotated[str | None, typer.Option(help="Task id to check on (default: first of the panel).")] = None,
    env_arg: EnvArgs = None,
) -> None:
    """Run the environment checker (Gymnasium's plus the agentrl text contract)."""
    import agentrl
    from agentrl.progress import progress_bar

    entry, kwargs = resolve_env(env, parse_kv_raw(env_arg))
    instance = make_env(entry, kwargs)
    try:
        if task is not None:
            reset_on_task(instance, task, seed=0)  # an id the env does not know is the user's mistake, not a FAIL
        with progress_bar(console) as bar:
            job = bar.add_task(f"checking {entry.id}", total=None)
            agentrl.check_env(instance, task=task, on_progress=lambda done, total: bar.update(job, completed=done, total=total))
    except agentrl.EnvCheckError as exc:
        console.print(printable_text(f"FAIL {entry.id}: {exc}", style="bold red"))
        raise typer.Exit(1) from None
    finally:
        instance.close()
    console.print(f"[bold green]OK[/] {entry.id} passes the agentrl environment checker")


def play(
    env: EnvArg,
    task: Annotated[str | None, typer.Option(help="Task id (default: random from the split).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to draw the task from.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the task draw.")] = 0,
    env_arg: EnvArgs = None,
) -> None:
    """Play an environment in the terminal. Type `quit` to stop, `help` for the admissible actions."""
    entry, kwargs = resolve_env(env, parse_kv_raw(env_arg))
    instance = make_env(entry, kwargs, split=split)
    try:
        obs, info = reset_on_task(instance, task, seed)
        # Env text is never Rich markup: `click[buy now]` must print its brackets (Text is not parsed).
        console.print(printable_text(f"task {info['task_id']}", style="dim"))
        total = 0.0
        while True:
            console.print(printable_text(obs), highlight=False)
            if info.get("admissible_actions"):
                console.print(printable_text("actions: " + " | ".join(info["admissible_actions"]), style="dim"), highlight=False)
            try:
                action = console.input("[bold]> [/]")
            except EOFError:
                action = "quit"
            if action.strip().lower() == "quit":
                break
            obs, reward, terminated, truncated, info = instance.step(action)
            total += reward
            console.print(
                f"[dim]reward {reward:+.2f} (total {total:.2f}) progress {info['progress']:.2f} turn {info['turn']}[/]"
            )
            if terminated or truncated:
                console.print(printable_text(obs), highlight=False)
                outcome = "won" if info["won"] else ("out of turns" if truncated else "over")
                console.print(f"[bold]episode {outcome}[/]: return {total:.2f}, progress {info['progress']:.2f}")
                break
    finally:
        instance.close()

