"""``agentrl sandbox check``, ``agentrl sandbox run`` and ``agentrl sandbox cleanup``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.common import UserError, console, printable
from agentrl.sandboxes.base import Limits

_DEFAULTS = Limits()

app = typer.Typer(
    help="Code-execution sandboxes: which backends work here, run a command in one.", no_args_is_help=True
)

DockerUrl = Annotated[
    str | None,
    typer.Option("--docker-url", help="Docker daemon address (default: DOCKER_HOST or the local socket)."),
]


@app.command("check")
def check_cmd(docker_url: DockerUrl = None) -> None:
    """Print which sandbox backends work on this machine, and why the others do not."""
    from agentrl.sandboxes import check_backends

    report = check_backends(docker_url)
    for name, (works, why) in report.items():
        mark = "[green]ok[/]  " if works else "[red]no[/]  "
        console.print(f"{mark}{name:<11} {why}", highlight=False, soft_wrap=True)
    chosen = next((name for name, (works, _) in report.items() if works), None)
    console.print(f"auto -> {chosen or 'none'}")
    if chosen is None:
        raise SystemExit(1)


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": False},
)
def run_cmd(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    backend: Annotated[str, typer.Option(help="auto, docker or bubblewrap.")] = "auto",
    timeout: Annotated[float, typer.Option(help="Wall-clock limit in seconds.")] = _DEFAULTS.timeout_s,
    memory: Annotated[
        int, typer.Option(help="Memory limit in MB (files written count too).")
    ] = _DEFAULTS.memory_mb,
    pids: Annotated[int, typer.Option(help="Process limit.")] = _DEFAULTS.pids,
    disk_mb: Annotated[int, typer.Option(help="Size limit of workspace + /tmp in MB.")] = _DEFAULTS.disk_mb,
    inodes: Annotated[
        int, typer.Option(help="Files + directories limit of workspace + /tmp.")
    ] = _DEFAULTS.inodes,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Directory mounted read-write at /workspace (default: a temporary one)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    docker_url: DockerUrl = None,
) -> None:
    """Run one command in a sandbox and print its result; exits with the command's exit code."""
    from agentrl.sandboxes import BACKENDS, Limits, SandboxUnavailable, get_sandbox

    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown sandbox backend {backend!r}", hint=f"choose one of auto, {', '.join(BACKENDS)}")
    if not command:
        raise UserError("no command given", hint="agentrl sandbox run -- python -c 'print(1)'")
    try:
        limits = Limits(timeout_s=timeout, memory_mb=memory, pids=pids, disk_mb=disk_mb, inodes=inodes)  # checks the user's values
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        sandbox = get_sandbox(backend, limits, docker_url=docker_url)
    except SandboxUnavailable as exc:
        raise UserError(
            str(exc), hint="run `agentrl sandbox check` to see which backends work here"
        ) from None
    try:
        result = sandbox.run(command, workspace=workspace)
    finally:
        sandbox.close()
    if json_out:
        data = {
            k: getattr(result, k)
            for k in ("exit_code", "stdout", "stderr", "duration_s", "reason", "backend")
        }
        print(json.dumps(data))
    else:
        if result.stdout:
            console.out(printable(result.stdout), end="", highlight=False)
        if result.stderr:
            console.out(printable(result.stderr), end="", style="red", highlight=False)
        console.print(
            f"[dim]{result.backend}: {result.reason}, exit code {result.exit_code}, {result.duration_s:.2f} s[/]",
            highlight=False,
        )
    if result.exit_code != 0:  # SystemExit, not typer.Exit: click swallows Exit codes when not standalone
        raise SystemExit(result.exit_code if result.exit_code is not None else 124)


@app.command("cleanup")
def cleanup_cmd(docker_url: DockerUrl = None) -> None:
    """Repair what a killed `sandbox run` or training process left: containers, mounted workspaces, cgroups.

    Every sandbox does this when it starts; sandboxes of processes that still run are left alone.
    """
    from agentrl.sandboxes import cleanup_stale

    done = cleanup_stale(docker_url)
    for line in done:
        console.print(printable(line), highlight=False, markup=False, soft_wrap=True)
    console.print(f"{len(done)} repaired" if done else "nothing to repair", highlight=False)
