"""``agentrl eval ENV --agent reflexion --model ACTOR [--reflector MODEL] [--trials N]``: success after each trial.

The actor retries each failed task up to ``trials`` times with the reflector's reflections in its
prompt (:func:`agentrl.retroformer.run_trials`); the table shows success@1..N as the Retroformer and
Reflexion papers do. With ``--store`` the trials and the rated reflections are recorded as two runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from agentrl.cli.common import UserError, console, printable_text, write_json
from agentrl.cli.env_setup import default_eval_split, make_env, resolve_env
from agentrl.cli.model import check_chat_tokenizer, load_model_for_eval

if TYPE_CHECKING:
    from agentrl.cli.eval_options import EvalOptions


def reflexion_eval(opts: EvalOptions) -> dict[str, Any]:
    """Run the reflective evaluation and print success@1..N; returns the JSON report.

    Ctrl-C stops it like any command (exit 130); a partial report is not written, because
    success@k needs every trial of every task.
    """
    import agentrl
    from agentrl.agents.llm import prompt_format_for
    from agentrl.evaluation import eval_panel
    from agentrl.retroformer import Reflector, ReflexionAgent, run_trials
    from agentrl.rollout import Collector, ModelActor

    assert opts.model is not None  # EvalOptions refuses --agent reflexion without --model
    entry, env_kwargs = resolve_env(opts.env, opts.env_args, opts.env_overrides)
    actor, actor_tokenizer = load_model_for_eval(opts.model, tokenizer=opts.tokenizer, api_key=opts.api_key, seed=opts.seed)
    reflector_policy, reflector_tokenizer = load_model_for_eval(
        opts.reflector or opts.model, tokenizer=opts.tokenizer, api_key=opts.api_key, seed=opts.seed + 1
    )
    if actor_tokenizer is None or reflector_tokenizer is None:
        raise UserError("--agent reflexion needs token ids", hint="for a URL model pass --tokenizer DIR")
    check_chat_tokenizer(actor_tokenizer, "actor")
    check_chat_tokenizer(reflector_tokenizer, "reflector")
    instance = make_env(entry, env_kwargs)
    try:
        split = opts.split or default_eval_split(instance)
        if split not in instance.splits:
            raise UserError(f"{entry.id} has no split {split!r}", hint=f"choose one of {', '.join(instance.splits)}")
        panel = eval_panel(instance, split, opts.episodes)
    finally:
        instance.close()
    agent = ReflexionAgent(actor_tokenizer, prompt_format_for(entry.id), memory_size=opts.memory_size,
                           layout=opts.layout, history=opts.history)  # type: ignore[arg-type]  # fmt: skip
    writer = Reflector(reflector_policy, reflector_tokenizer)
    recorder = runs = None
    if opts.store:
        from agentrl.cli.store import EpisodeRecorder

        recorder = EpisodeRecorder(opts.store)
        config = {"agent": "reflexion", "model": opts.model, "reflector": opts.reflector or opts.model,
                  "trials": opts.trials, "memory_size": opts.memory_size, "split": split, "seed": opts.seed,
                  "env_kwargs": env_kwargs}  # fmt: skip
        runs = (recorder.start(f"eval reflexion {entry.id} {split} trials", env_id=entry.id, config=config),
                recorder.start(f"eval reflexion {entry.id} {split} reflections", env_id=entry.id, config=config))  # fmt: skip
    ended: BaseException | None = None
    try:
        with Collector(lambda: agentrl.make(entry.id, split=split, **env_kwargs), ModelActor(actor, agent, opts.sampling()),
                       env_id=entry.id, max_parallel=opts.parallel, split=split) as collector:
            report = run_trials(collector, agent, writer, panel, trials=opts.trials, seed=opts.seed,
                                store=recorder.store if recorder else None,
                                trial_run=runs[0] if runs else None, reflection_run=runs[1] if runs else None)  # fmt: skip
    except BaseException as exc:
        ended = exc
        raise
    finally:
        if recorder is not None:
            recorder.close(ended)
    summary = report.summary()
    title = f"reflexion on {entry.id} ({split}, {len(panel)} tasks, {opts.trials} trials, seed {opts.seed})"
    table = Table(title=printable_text(title))
    for j in range(1, opts.trials + 1):
        table.add_column(f"success@{j}", justify="right")
    table.add_column("reflections (usable)", justify="right")
    table.add_column("mean rating", justify="right")
    mean_rating = summary["mean_rating"]
    table.add_row(*(f"{s:.3f}" for s in summary["success_at"]), f"{summary['reflections']} ({summary['usable_reflections']})",
                  "-" if mean_rating is None else f"{mean_rating:+.3f}")  # fmt: skip
    console.print(table)
    result = {"env_id": entry.id, "split": split, "panel": panel, "model": opts.model,
              "reflector": opts.reflector or opts.model, "returns": report.returns, "won": report.won, **summary}  # fmt: skip
    if opts.output is not None:
        write_json(opts.output, result)
        console.print(f"report written to {opts.output}", highlight=False, markup=False)
    return result
