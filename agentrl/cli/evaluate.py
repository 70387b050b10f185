"""``agentrl eval ENV``: a scripted agent, a model, or a reflective model on a fixed task panel.

The command line's options become one :class:`~agentrl.cli.eval_options.EvalOptions`, checked once
when it is built (before any env, model or store is touched), and passed whole to the scripted,
model (:mod:`agentrl.cli.model`) and reflexion (:mod:`agentrl.cli.reflexion`) paths.

Ctrl-C stops an evaluation at once: the episodes already finished are kept (and are all in the
store with ``--store``; the one in flight is dropped), the command says how many of the panel's
episodes it finished, writes the partial report (``"partial": true``) to ``--output`` and exits 130.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentrl.cli.common import UserError, console, console_err, parse_kv_raw, printable_text, write_json
from agentrl.cli.env_setup import default_eval_split, make_env, resolve_env
from agentrl.cli.eval_options import EvalOptions
from agentrl.interrupts import InterruptGuard

INTERRUPTED_EXIT = 130


class EpisodeSink:
    """``on_episode`` of an evaluation: records each finished episode, keeps it, advances the bar.

    An episode that ends after a Ctrl-C was cut short by it (py4j, for one, turns the interrupt into
    an ordinary error inside the episode): it is dropped and the evaluation stops.
    """

    def __init__(self, guard: InterruptGuard, recorder: Any, advance: Callable[[], Any]):
        self.guard, self.recorder, self.advance = guard, recorder, advance
        self.episodes: list[Any] = []

    def __call__(self, episode: Any) -> None:
        self.guard.check()
        with self.guard.shielded():
            if self.recorder is not None:
                self.recorder.record(episode)
            self.episodes.append(episode)
            self.advance()


def eval_cmd(
    env: Annotated[str, typer.Argument(help="Environment id or alias (see `agentrl envs list`).")],
    agent: Annotated[str | None, typer.Option(help="Scripted agent (random, expert, oracle where the env has one; default random), or reflexion: --model retries with reflections.")] = None,
    split: Annotated[str | None, typer.Option(help="Task panel to evaluate on (default: the env's eval split).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Number of tasks from the start of the panel (default: all).")] = None,
    group_size: Annotated[int, typer.Option(help="Episodes per task (seeds seed..seed+G-1).")] = 1,
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    max_turns: Annotated[int | None, typer.Option(help="Turn budget per episode (default: the env's).")] = None,
    output: Annotated[Path | None, typer.Option(help="Write a JSON report here (a partial one on Ctrl-C).")] = None,
    env_arg: Annotated[list[str] | None, typer.Option("--env-arg", "-e", help="Constructor argument key=value (repeatable), e.g. -e difficulty=medium.")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Record every episode in this trajectory store (URL or SQLite path).")] = None,
    model: Annotated[str | None, typer.Option(help="Model agent: a local HF model directory, a Hub id (ORG/NAME), vllm:MODEL, or an OpenAI-compatible URL (replaces --agent).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Local tokenizer directory for a URL model (token-exact); without it the chat API is used.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for a URL model (default: $OPENAI_API_KEY).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Model: tokens per turn at most.")] = 128,
    temperature: Annotated[float, typer.Option(help="Model: sampling temperature (0 = greedy).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Model: nucleus sampling mass.")] = 1.0,
    parallel: Annotated[int, typer.Option(help="Model: episodes run at once (one batched generate per turn).")] = 8,
    layout: Annotated[str, typer.Option(help="Model: token layout, concat or per_step.")] = "concat",
    history: Annotated[int | None, typer.Option(help="Model, per_step layout: turns of history in the prompt.")] = None,
    admissible_only: Annotated[bool, typer.Option(help="Model: decode only the admissible actions listed in the prompt (local HF models).")] = False,
    reflector: Annotated[str | None, typer.Option(help="Reflexion: the reflector model (default: a copy of --model).")] = None,
    trials: Annotated[int, typer.Option(help="Reflexion: trials per task; reports success@1..N.")] = 4,
    memory_size: Annotated[int, typer.Option(help="Reflexion: reflections kept in the actor's prompt.")] = 3,
) -> None:  # fmt: skip
    """Evaluate an agent on a fixed task panel: success rate, progress, turns; optional JSON report."""
    opts = EvalOptions(
        env=env, agent=agent, split=split, episodes=episodes, group_size=group_size, seed=seed, max_turns=max_turns,
        output=output, env_args=parse_kv_raw(env_arg), store=store, model=model, tokenizer=tokenizer, api_key=api_key,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, parallel=parallel, layout=layout,
        history=history, admissible_only=admissible_only, reflector=reflector, trials=trials, memory_size=memory_size,
    )  # fmt: skip
    if opts.agent_kind == "reflexion":
        from agentrl.cli.reflexion import reflexion_eval

        reflexion_eval(opts)
    else:
        run_eval(opts)


def run_eval(opts: EvalOptions) -> None:
    """A scripted or model agent on the panel: progress bar, summary table, report, store run."""
    from agentrl.agents import make_scripted_agent
    from agentrl.cli.store import EpisodeRecorder
    from agentrl.evaluation import EvalReport, eval_panel, evaluate
    from agentrl.progress import progress_bar

    entry, env_kwargs = resolve_env(opts.env, opts.env_args, opts.env_overrides)
    scripted = make_scripted_agent(opts.agent or "random") if opts.model is None else None
    policy = model_tokenizer = None
    if opts.model is not None:
        from agentrl.cli.model import load_model_for_eval

        policy, model_tokenizer = load_model_for_eval(opts.model, tokenizer=opts.tokenizer, api_key=opts.api_key, seed=opts.seed)
    agent_name = scripted.name if scripted is not None else getattr(policy, "name", opts.model)
    recorder = EpisodeRecorder(opts.store) if opts.store else None  # opened first: a bad store URL fails fast
    instance = None
    ended: BaseException | None = None
    try:
        instance = make_env(entry, env_kwargs)
        split = opts.split or default_eval_split(instance)
        if split not in instance.splits:
            raise UserError(f"{entry.id} has no split {split!r}", hint=f"choose one of {', '.join(instance.splits)}")
        panel = eval_panel(instance, split, opts.episodes)
        _say_what_the_panel_covers(instance, split, panel)
        if recorder is not None:
            config = {"agent": agent_name, "model": opts.model, "tokenizer": opts.tokenizer, "split": split,
                      "episodes": opts.episodes, "group_size": opts.group_size, "seed": opts.seed,
                      "env_kwargs": env_kwargs}  # fmt: skip
            recorder.start(f"eval {agent_name} {entry.id} {split}", env_id=entry.id, config=config)
        planned = len(panel) * opts.group_size
        start = time.perf_counter()
        model_details = None
        guard = InterruptGuard()
        sink = EpisodeSink(guard, recorder, lambda: None)
        try:
            with guard, progress_bar(console, transient=False) as bar:
                job = bar.add_task(f"{entry.id} {split}", total=planned)
                sink.advance = lambda: bar.advance(job)
                if policy is not None:
                    from agentrl.cli.model import run_model_eval

                    report, model_details = run_model_eval(opts, entry.id, instance, policy, model_tokenizer, split=split,
                                                           panel=panel, env_kwargs=env_kwargs, on_episode=sink)  # fmt: skip
                else:
                    report = evaluate(instance, scripted, env_id=entry.id, split=split, episodes=opts.episodes,
                                      group_size=opts.group_size, seed=opts.seed, env_kwargs=env_kwargs, on_episode=sink)  # fmt: skip
        except KeyboardInterrupt:
            order = {task: index for index, task in enumerate(panel)}
            done = sorted(sink.episodes, key=lambda ep: (order.get(ep.task_id, 0), ep.seed or 0))
            report = EvalReport(env_id=entry.id, agent=agent_name, split=split, seed=opts.seed, group_size=opts.group_size,
                                panel=panel, episodes=done, seconds=time.perf_counter() - start, env_kwargs=dict(env_kwargs),
                                max_turns=instance.max_turns)  # fmt: skip
            _finish(opts, report, agent_name, None, recorder, planned=planned)
            raise SystemExit(INTERRUPTED_EXIT) from None
    except BaseException as exc:
        ended = exc
        raise
    finally:
        if instance is not None:
            instance.close()
        if recorder is not None:
            recorder.close(ended)
    _finish(opts, report, agent_name, model_details, recorder, planned=None)


def _say_what_the_panel_covers(instance: Any, split: str, panel: list[str]) -> None:
    """One line: how much of the split the panel is and, where the env has task types, which of them it covers."""
    full = instance.task_ids(split)
    types = [instance.task_type(task) for task in full]
    kinds = list(dict.fromkeys(t for t in types if t is not None))
    line = f"panel: {len(panel)} of the {len(full)} tasks of {split}"
    if kinds:
        covered = {instance.task_type(task) for task in panel}
        spread = " (taken round-robin over the task types)" if len(panel) < len(full) else ""
        line += f", {len(covered & set(kinds))} of its {len(kinds)} task types{spread}"
    console.print(printable_text(line))


def _finish(opts: EvalOptions, report: Any, agent_name: str, model_details: dict[str, Any] | None, recorder: Any,
            *, planned: int | None) -> None:
    """Print the summary, write the report; ``planned`` is set when the evaluation was interrupted."""
    summary = report.summary()
    partial = planned is not None
    done = f", interrupted after {summary['episodes']} of {planned} episodes" if partial else ""
    title = f"{agent_name} on {report.env_id} ({report.split}, {len(report.panel)} tasks x {opts.group_size}, seed {opts.seed}{done})"
    not_benchmark = report.benchmark is False
    caption = "NOT the benchmark: the env ran on data other than the benchmark's (e.g. WebShop's built-in catalog)" if not_benchmark else None
    if summary["episodes"]:
        # no padding inside the cells: the ten columns fit an 80-column terminal unabridged
        table = Table(title=printable_text(title), caption=caption, caption_style="bold red", padding=(0, 0))
        # success, return, progress and turns are means over episodes; invalid: the share of turns with an invalid action
        columns = ("tasks", "episodes", "success", f"pass@{opts.group_size}", "return", "progress", "turns", "invalid",
                   "errors", "seconds")  # fmt: skip
        for column in columns:  # long task types fold; numbers and headers are never cut
            table.add_column(column, justify="left" if column == "tasks" else "right", no_wrap=column != "tasks",
                             overflow="fold", min_width=5 if column == "tasks" else None)  # fmt: skip
        table.add_row(
            "all", str(summary["episodes"]), f"{summary['success_rate']:.3f}", f"{summary['pass_at_group']:.3f}",
            f"{summary['mean_return']:.3f}", f"{summary['mean_progress']:.3f}", f"{summary['mean_turns']:.1f}",
            f"{summary['invalid_action_rate']:.3f}", str(summary["errors"]), f"{summary['wall_seconds']:.1f}",
        )  # fmt: skip
        for kind, rates in report.by_task_type().items():
            table.add_row(
                printable_text(kind), str(rates["episodes"]), f"{rates['success_rate']:.3f}", "", f"{rates['mean_return']:.3f}",
                f"{rates['mean_progress']:.3f}", f"{rates['mean_turns']:.1f}", f"{rates['invalid_action_rate']:.3f}", "", "",
            )  # fmt: skip
        console.print(table)
    if model_details is not None:
        console.print(
            f"tokens generated {model_details['tokens_generated']}, generation {model_details['generate_seconds']:.1f} s, "
            f"env {model_details['env_seconds']:.1f} s, unparsable replies {model_details['parse_errors']} "
            "(counted as invalid actions)"
        )
    if recorder is not None and recorder.run_id is not None:
        console.print(f"recorded {recorder.count} episodes as run {recorder.run_id} in {opts.store}", highlight=False, markup=False)
    if opts.output is not None:
        data = report.to_json() | {"partial": partial}
        if partial:
            data["episodes_planned"] = planned
        if model_details is not None:
            data["model"] = model_details
        write_json(opts.output, data)
        console.print(f"{'partial ' if partial else ''}report written to {opts.output}", highlight=False, markup=False)
    if partial:
        where = f"; partial report in {opts.output}" if opts.output is not None else ""
        console_err.print(f"interrupted after {summary['episodes']} of {planned} episodes{where}", highlight=False, markup=False)
