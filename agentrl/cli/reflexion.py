"""``agentrl eval ENV --agent reflexion --model ACTOR [--reflector MODEL] [--trials N]``: success after each trial.

The actor retries each failed task up to ``trials`` times with the reflector's reflections in its
prompt (:func:`agentrl.retroformer.run_trials`); the table shows success@1..N as the Retroformer and
Reflexion papers do. With ``--store`` the trials and the rated reflections are recorded as two runs.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from agentrl.cli.common import UserError, console, parse_kv, write_json


def reflexion_eval(
    env: str,
    *,
    model: str | None,
    reflector: str | None,
    tokenizer: str | None,
    api_key: str | None,
    trials: int,
    memory_size: int,
    split: str | None,
    episodes: int | None,
    seed: int,
    max_turns: int | None,
    output: str | None,
    env_arg: list[str] | None,
    store: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    parallel: int,
    layout: str,
    history: int | None,
) -> dict[str, Any]:
    """Run the reflective evaluation and print success@1..N; returns the JSON report."""
    import agentrl
    from agentrl.agents.llm import ACTION_STOP, prompt_format_for
    from agentrl.cli.envs import _default_eval_split, _make
    from agentrl.cli.model import load_model_for_eval
    from agentrl.policies.base import SamplingParams
    from agentrl.retroformer import Reflector, ReflexionAgent, run_trials
    from agentrl.rollout import Collector, ModelActor

    if model is None:
        raise UserError("--agent reflexion needs an actor model", hint="add --model PATH (and optionally --reflector PATH)")
    if trials < 1 or memory_size < 0:
        raise UserError(f"--trials must be >= 1 and --memory-size >= 0 (got {trials}, {memory_size})")
    actor, actor_tokenizer = load_model_for_eval(model, tokenizer=tokenizer, api_key=api_key, seed=seed)
    reflector_policy, reflector_tokenizer = load_model_for_eval(
        reflector or model, tokenizer=tokenizer, api_key=api_key, seed=seed + 1
    )
    if actor_tokenizer is None or reflector_tokenizer is None:
        raise UserError("--agent reflexion needs token ids", hint="for a URL model pass --tokenizer DIR")
    env_kwargs = parse_kv(env_arg)
    if max_turns is not None:
        env_kwargs["max_turns"] = max_turns
    entry, instance = _make(env, env_args=env_kwargs)
    try:
        split = split or _default_eval_split(instance)
        if split not in instance.splits:
            raise UserError(f"{entry.id} has no split {split!r}", hint=f"choose one of {', '.join(instance.splits)}")
        panel = instance.task_ids(split)[:episodes] if episodes else instance.task_ids(split)
    finally:
        instance.close()
    try:
        agent = ReflexionAgent(actor_tokenizer, prompt_format_for(entry.id), memory_size=memory_size,
                               layout=layout, history=history)  # type: ignore[arg-type]
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=(ACTION_STOP,))
        writer = Reflector(reflector_policy, reflector_tokenizer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    recorder = runs = None
    if store:
        from agentrl.cli.store import EpisodeRecorder

        recorder = EpisodeRecorder(store)
        config = {"agent": "reflexion", "model": model, "reflector": reflector or model, "trials": trials,
                  "memory_size": memory_size, "split": split, "seed": seed, "env_kwargs": env_kwargs}  # fmt: skip
        runs = (recorder.start(f"eval reflexion {entry.id} {split} trials", env_id=entry.id, config=config),
                recorder.start(f"eval reflexion {entry.id} {split} reflections", env_id=entry.id, config=config))
    try:
        with Collector(lambda: agentrl.make(entry.id, split=split, **env_kwargs), ModelActor(actor, agent, sampling),
                       env_id=entry.id, max_parallel=parallel, split=split) as collector:
            report = run_trials(collector, agent, writer, panel, trials=trials, seed=seed,
                                store=recorder.store if recorder else None,
                                trial_run=runs[0] if runs else None, reflection_run=runs[1] if runs else None)
    finally:
        if recorder is not None:
            recorder.close()
    summary = report.summary()
    table = Table(title=f"reflexion on {entry.id} ({split}, {len(panel)} tasks, {trials} trials, seed {seed})")
    for j in range(1, trials + 1):
        table.add_column(f"success@{j}", justify="right")
    table.add_column("reflections (usable)", justify="right")
    table.add_column("mean rating", justify="right")
    mean_rating = summary["mean_rating"]
    table.add_row(*(f"{s:.3f}" for s in summary["success_at"]), f"{summary['reflections']} ({summary['usable_reflections']})",
                  "-" if mean_rating is None else f"{mean_rating:+.3f}")
    console.print(table)
    result = {"env_id": entry.id, "split": split, "panel": panel, "model": model, "reflector": reflector or model,
              "returns": report.returns, "won": report.won, **summary}  # fmt: skip
    if output:
        write_json(output, result)
        console.print(f"report written to {output}")
    return result
