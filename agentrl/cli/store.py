"""``agentrl store ls|show|export|upgrade``: look into and export a trajectory store."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentrl.cli.common import UserError, check_output_path, console, printable, printable_text

app = typer.Typer(help="List, show, export and upgrade trajectory stores.", no_args_is_help=True)

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        "-s",
        envvar="AGENTRL_STORE",
        help="Store URL: sqlite:///path.db (or a path) or postgresql+psycopg://user@host:port/db.",
    ),
]
RunArg = Annotated[str, typer.Argument(help="Run id or name (see `agentrl store ls`).")]
DEFAULT_STORE = "sqlite:///agentrl.db"


@contextlib.contextmanager
def user_errors(url: str | None = None) -> Iterator[None]:
    """A database error met after opening (a page corrupted under a healthy header, a server that
    went away) is a :class:`~agentrl.store.StoreError` line like the errors met while opening."""
    from sqlalchemy.exc import DBAPIError

    from agentrl.store.engine import database_error, parse_url

    try:
        yield
    except DBAPIError as exc:
        if url is None:
            raise
        raise database_error(parse_url(url), exc) from exc


@contextlib.contextmanager
def _open(url: str) -> Iterator[Any]:
    from agentrl.store import open_store

    with user_errors(url):
        store = open_store(url, create=False)
        try:
            yield store
        finally:
            store.close()


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@app.command("ls")
def ls_cmd(store: StoreOpt = DEFAULT_STORE) -> None:
    """List the runs in a store with their episode counts and success rates."""
    with _open(store) as opened:
        runs = opened.runs()
    if not runs:
        console.print(f"no runs in {printable(store)}", highlight=False, markup=False)
        return
    table = Table(title=printable_text(f"runs in {store}"),
                  caption="success and mean return are the runs' own episodes: a training run's expert/oracle "
                          "demonstrations (supervised warm-up) are counted under demos")  # fmt: skip
    numeric = ("id", "episodes", "demos", "steps", "success", "mean return")
    for column in ("id", "name", "kind", "status", "env", "episodes", "demos", "steps", "success", "mean return", "created"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for run in runs:
        success = f"{run.rollout_success:.3f}" if run.rollout_success is not None else "-"
        mean_return = f"{run.rollout_mean_return:.3f}" if run.rollout_mean_return is not None else "-"
        demos = f"{run.demonstrations} ({run.demonstrations_won} won)" if run.demonstrations else "-"
        table.add_row(
            str(run.id), printable_text(run.name), printable_text(run.kind), _status_text(run.status),
            printable_text(run.env_id or "-"), str(run.rollouts), demos, str(run.steps), success, mean_return,
            _when(run.created_at),
        )  # fmt: skip
    console.print(table)


_STATUS_STYLE = {"running": "cyan", "finished": "green", "interrupted": "yellow", "failed": "red"}


def _status_text(status: str | None) -> Any:
    return printable_text(status or "-", _STATUS_STYLE.get(status or "", ""))


@app.command("show")
def show_cmd(
    run: RunArg,
    episode: Annotated[int | None, typer.Option(help="Episode id: print its transcript.")] = None,
    limit: Annotated[int, typer.Option(help="Episodes to list (without --episode).")] = 50,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Show a run's episodes, or with --episode a readable transcript of one episode."""
    with _open(store) as opened:
        info = opened.get_run(run)
        if episode is not None:
            if opened.episode_run(episode) != info.id:
                raise UserError(f"episode {episode} is not in run {info.id} ({info.name})",
                                hint=f"list its episodes with: agentrl store show {info.id}")  # fmt: skip
            _print_transcript(episode, opened.get_episode(episode))
            return
        pairs = list(opened.iter_episodes(info.id, limit=limit, with_ids=True))
    console.print(printable_text(f"run {info.id} {info.name} ({info.kind}, {info.env_id or '-'}), created {_when(info.created_at)}, "
                                 f"status {info.status or '-'}, agentrl {info.agentrl_version} (git {info.git_sha or 'unknown'})"))
    if info.config:
        console.print(printable_text(f"config: {info.config}"))
    table = Table(title=f"{len(pairs)} of {info.episodes} episodes")
    for column in ("episode", "task", "seed", "group", "agent", "turns", "return", "won", "progress", "error"):
        table.add_column(column)
    for episode_id, ep in pairs:
        table.add_row(
            str(episode_id), printable_text(ep.task_id), str(ep.seed), printable_text(ep.group_id or "-"),
            printable_text(ep.agent), str(ep.turns), f"{ep.episode_return:.3f}", "yes" if ep.won else "no",
            f"{ep.progress:.2f}", printable_text(ep.error or ""),
        )  # fmt: skip
    console.print(table)


def _print_transcript(episode_id: int, ep: Any) -> None:
    """One episode as it was played. Every text in it came from an env or an agent, so it goes
    through :func:`printable`: escape sequences in an observation or action show as ``\\x1b[...``."""
    policy = ep.policy_version if ep.policy_version is not None else "-"
    console.print(printable_text(f"episode {episode_id} {ep.env_id} task {ep.task_id} seed {ep.seed} "
                                 f"agent {ep.agent or '-'} policy {policy}"))  # fmt: skip
    if ep.instruction:
        console.print(printable_text(f"instruction: {ep.instruction}"))
    total = 0.0
    tokens = ep.turn_tokens()
    for turn, step in enumerate(ep.steps):
        total += step.reward
        console.print(
            f"[bold cyan]turn {turn}[/] reward {step.reward:+.3f} (total {total:.3f})"
            f" env {step.env_seconds * 1000:.1f} ms, generation {step.generation_seconds * 1000:.1f} ms"
            + (" [red]invalid[/]" if step.info.get("invalid_action") else ""),
            highlight=False,
        )
        console.print(printable_text(step.observation))
        console.print(printable_text(f"> {step.action}", style="bold"))
        if turn in tokens:
            view = tokens[turn]
            console.print(f"[dim]{len(view.prompt_ids)} prompt + {len(view.response_ids)} response tokens[/]")
    outcome = "won" if ep.won else ("out of turns" if ep.truncated else "lost")
    console.print(printable_text(
        f"{outcome}: return {ep.episode_return:.3f}, progress {ep.progress:.2f}, {ep.turns} turns"
        + (f", error: {ep.error}" if ep.error else "")
    ))  # fmt: skip


EXPORT_FORMATS = ("parquet", "jsonl", "hf")
EXPORT_LEVELS = ("step", "episode", "transcript", "sft")


@app.command("export")
def export_cmd(
    run: RunArg,
    output: Annotated[str, typer.Option("--output", "-o", help="File (parquet, jsonl) or directory (hf) to write.")],
    format: Annotated[str, typer.Option("--format", "-f", help="parquet, jsonl or hf (datasets.save_to_disk).")] = "parquet",
    level: Annotated[str | None, typer.Option(help=(
        "Rows: step (a turn's text), episode, transcript (token ids, labels, log-probs: train on exact ids) or sft "
        "(a sampled turn in chat format: prompt, completion, messages). Default: step for parquet, episode for hf, "
        "whole episodes (every field) for jsonl."))] = None,
    tokenizer: Annotated[str | None, typer.Option(help=(
        "Tokenizer for --level sft (a model directory or Hub id); default: the run's `tokenizer` or `model` from its "
        "config."))] = None,
    won: Annotated[bool | None, typer.Option("--won/--lost", help="Only won (or lost) episodes.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only episodes of this agent (e.g. expert).")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:  # fmt: skip
    """Export a run's episodes as Parquet, JSONL or a Hugging Face dataset on disk, at a level (see --level)."""
    if format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {format!r}", hint="choose parquet, jsonl or hf")
    if level is not None and level not in EXPORT_LEVELS:
        raise UserError(f"unknown level {level!r}", hint="choose step, episode, transcript or sft")
    if tokenizer is not None and level != "sft":
        raise UserError("--tokenizer is for --level sft", hint="the other levels export token ids as they are")
    if format == "hf":  # a directory that save_to_disk fills
        if not Path(output).parent.is_dir():
            raise UserError(f"--output {output}: directory {Path(output).parent} does not exist")
    else:
        check_output_path(output)
    from agentrl.store import export

    filters = {"won": won, "agent": agent}
    with _open(store) as opened:
        info = opened.get_run(run)
        decoder = _export_tokenizer(info, tokenizer) if level == "sft" else None
        if format == "jsonl":
            count = export.export_jsonl(opened, output, info.id, level=level, tokenizer=decoder, **filters)
            what = f"{level} rows" if level else "episodes"
        elif format == "parquet":
            count = export.export_parquet(opened, output, info.id, level=level or "step", tokenizer=decoder, **filters)
            what = f"{level or 'step'} rows"
        else:
            dataset = export.to_hf_dataset(opened, info.id, level=level or "episode", tokenizer=decoder, **filters)
            dataset.save_to_disk(output)
            count, what = len(dataset), f"{level or 'episode'} rows"
    console.print(printable_text(f"wrote {count} {what} of run {info.id} ({info.name}) to {output}"))
    if level in ("sft", "transcript") and count == 0:
        console.print("[yellow]no token transcripts in the selected episodes (scripted agents record none)[/]")


def _export_tokenizer(info: Any, explicit: str | None) -> Any:
    """The tokenizer that decodes a run's token ids: ``--tokenizer``, else the run config's ``tokenizer``
    or ``model`` (eval and recipe runs record them); one line with a hint when there is none."""
    from agentrl.policies.base import PolicyError
    from agentrl.policies.sources import load_tokenizer

    config = info.config or {}
    spec = explicit or config.get("tokenizer") or config.get("model")
    hint = "pass --tokenizer MODEL (the directory or Hub id of the model that played the run)"
    if not spec or not isinstance(spec, str):
        raise UserError(f"run {info.id} ({printable(info.name)}) records no model to take a tokenizer from", hint=hint)
    if spec.startswith(("http://", "https://")):
        raise UserError(f"run {info.id}'s model is a server ({printable(spec)}), not a tokenizer", hint=hint)
    spec = spec.removeprefix("vllm:")
    try:
        return load_tokenizer(spec)
    except PolicyError as exc:
        raise UserError(f"--level sft needs the run's tokenizer: {exc}", hint=exc.hint or hint) from exc


@app.command("upgrade")
def upgrade_cmd(store: StoreOpt = DEFAULT_STORE) -> None:
    """Migrate a store to this agentrl's schema (Alembic; one transaction, data kept)."""
    from agentrl.store import upgrade_schema

    with user_errors(store):
        old, new = upgrade_schema(store)
    if old == new:
        console.print(f"store is up to date (schema {new})")
    else:
        console.print(f"upgraded store from schema {old} to {new}")


class EpisodeRecorder:
    """Writes every episode of a command (``agentrl eval --store URL``) into the runs it starts.

    :meth:`close` records how the command ended on each of its runs (``finished``, ``interrupted``
    or ``failed``, see :func:`agentrl.store.runs.status_after`).
    """

    def __init__(self, url: str):
        from agentrl.store import open_store

        self.url = url
        with user_errors(url):
            self.store = open_store(url)
        self.run_id: int | None = None
        self.run_ids: list[int] = []
        self.count = 0

    def start(self, name: str, *, env_id: str, config: dict[str, Any], kind: str = "eval") -> int:
        with user_errors(self.url):
            self.run_id = self.store.start_run(name, env_id=env_id, config=config, kind=kind)
        self.run_ids.append(self.run_id)
        return self.run_id

    def record(self, episode: Any) -> None:
        if self.run_id is None:
            raise RuntimeError("EpisodeRecorder.start must be called before record")
        with user_errors(self.url):
            self.store.write_episode(self.run_id, episode)
        self.count += 1

    def close(self, exc: BaseException | None = None) -> None:
        """Set each run's status from how the command ended (``exc``: the exception it ended with)."""
        from agentrl.store.runs import status_after

        try:
            with user_errors(self.url):
                for run_id in self.run_ids:
                    self.store.set_run_status(run_id, status_after(exc))
        finally:
            self.store.close()
