"""Retroformer on ALFWorld: a frozen actor retries tasks with reflections; the reflector learns from ratings.

Retroformer (Yao et al., arXiv 2308.02151, ICLR 2024). Read it top to bottom:

1. load the **actor** (frozen: never given to a learner) and the **reflector** (the retrospective LM;
   a second copy of the same base model is allowed) from local Hugging Face model directories;
2. evaluate before training: up to ``trials`` trials per eval task with reflections in between,
   reporting success@1..N (the paper's tables);
3. per iteration: draw ``tasks_per_iteration`` train tasks and run the trial loop
   (:func:`agentrl.retroformer.run_trials`): failed trial -> reflection -> next trial -> rating
   ``G_{k,i+1} - G_{k,i}``. Trials and rated reflections are written to the store (two runs);
4. the learner reads this iteration's rated reflections back **from the store** and takes a PPO-clip
   update of the reflector with the ratings as rewards, normalised within the batch (or per task,
   ``normalize=task``), KL to the frozen reference and LoRA adapters as configured;
5. evaluate again; save the reflector (adapters merged) and ``summary.json``.

Paper defaults: 4 trials, memory of the last 3 reflections (Reflexion), LoRA r=1, 4 epochs over the
batch, batch size 8, lr 1.4e-5 (the paper also quantises the base model to 4 bits: not done here).
The paper fine-tunes offline on data collected with the initial reflector; ``iterations=1`` is that
setting, more iterations make it online. ``iterations=0`` only evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrl.config import ConfigError, setting
from agentrl.training.config import LearnerConfig, LoRAConfig
from agentrl.training.run import RunOptions


def _paper_learner() -> LearnerConfig:
    # lr 1.4e-5 and 4 epochs from the paper; kl 0.2 is trl's PPO initial KL coefficient, which the
    # paper's code used; LoRA r=1 from the paper with llama-recipes' alpha 32 and dropout 0.05.
    return LearnerConfig(
        lr=1.4e-5, epochs=4, terms=["kl"], options={"kl": {"coef": 0.2}}, micro_batch_tokens=16384,
        lora=LoRAConfig(r=1, alpha=32, dropout=0.05),
    )  # fmt: skip


@dataclass
class Config(RunOptions):
    """Retroformer (ALFWorld). Override any field: ``agentrl train alfworld_retroformer key=value``."""

    actor_model: str = setting("", "frozen actor: a Hugging Face model directory or Hub id (required)")
    reflector_model: str = setting("", "retrospective LM directory (empty = a second copy of actor_model)")
    run_name: str = setting("alfworld_retroformer", "run directory name under output_dir, and the store's run names")
    output_dir: str = setting("runs", "where run directories are created")
    store: str = setting("", "trajectory store URL; empty = sqlite:///<output_dir>/<run_name>/store.db")
    env: str = setting("alfworld", "environment id or alias")
    env_args: dict[str, Any] = setting(factory=dict, doc="env constructor arguments")
    max_turns: int = setting(50, "turn budget per trial (Reflexion's ALFWorld setting)")
    train_split: str = setting("train", "tasks the reflector is trained on")
    train_tasks: int = setting(0, "draw from the first N tasks of the train panel only (0 = all of it)")
    eval_split: str = setting("valid_unseen", "evaluation panel (the 134 games of the paper)")
    eval_tasks: int = setting(134, "evaluate on the first N tasks of the eval panel (0 = no evaluation)")
    trials: int = setting(4, "trials per task (paper: 4)")
    memory_size: int = setting(3, "reflections kept in the actor's prompt (Reflexion: the last 3)")
    iterations: int = setting(10, "collect -> update rounds (1 = the paper's offline setting; 0 = evaluate only)")
    tasks_per_iteration: int = setting(8, "train tasks per iteration (the paper's batch size)")
    normalize: str = setting("batch", "rating normalisation for the advantage: batch or task")
    actor_temperature: float = setting(0.0, "actor sampling temperature (greedy, as in Reflexion)")
    actor_max_new_tokens: int = setting(128, "actor tokens per turn")
    reflector_temperature: float = setting(1.0, "reflector sampling temperature (recorded with each reflection; the learner uses it)")
    reflector_max_new_tokens: int = setting(256, "tokens per reflection")
    max_parallel: int = setting(16, "live episodes at once (one batched generate per turn)")
    layout: str = setting("concat", "actor token layout: concat or per_step")
    history: int | None = setting(None, "per_step layout: turns of history in each actor prompt")
    seed: int = setting(0, "seeds task draws, sampling and the learner")
    learner: LearnerConfig = setting(factory=_paper_learner, doc="the reflector's PPO update")


def main(cfg: Config) -> dict[str, Any]:
    import time

    import numpy as np
    import torch

    import agentrl
    from agentrl.agents.llm import ACTION_STOP, prompt_format_for
    from agentrl.evaluation import eval_panel
    from agentrl.policies import HFPolicy, SamplingParams
    from agentrl.provenance import git_sha
    from agentrl.retroformer import Reflector, ReflexionAgent, retrospective_batch, run_trials
    from agentrl.rollout import Collector, ModelActor
    from agentrl.training.learner import Learner
    from agentrl.training.run import Run, iteration_line, phase_seed

    run = Run.open(cfg)  # an existing run is an error unless resume/overwrite
    cfg = run.config  # on resume: the run's own config
    if not cfg.actor_model:
        raise ConfigError("set actor_model=PATH_OR_HUB_ID (a Hugging Face model directory or Hub id) for this recipe",
                          hint="no download needed: `agentrl model tiny ./tiny` writes a small model")  # fmt: skip
    if cfg.normalize not in ("batch", "task"):
        raise ConfigError(f"normalize must be batch or task, got {cfg.normalize!r}")
    with run:
        torch.manual_seed(cfg.seed)

        # 1. actor (frozen), reflector (trained), agent, environments, store, learner
        actor = HFPolicy(cfg.actor_model, seed=cfg.seed, name="actor")
        actor.model.requires_grad_(False)
        reflector_policy = HFPolicy(cfg.reflector_model or cfg.actor_model, seed=cfg.seed + 1, name="reflector")
        agent = ReflexionAgent(actor.tokenizer, prompt_format_for(cfg.env), memory_size=cfg.memory_size,
                               layout=cfg.layout, history=cfg.history)  # type: ignore[arg-type]
        reflector = Reflector(reflector_policy, reflector_policy.tokenizer, sampling=SamplingParams(
            max_new_tokens=cfg.reflector_max_new_tokens, temperature=cfg.reflector_temperature))
        actor_sampling = SamplingParams(max_new_tokens=cfg.actor_max_new_tokens, temperature=cfg.actor_temperature,
                                        stop=(ACTION_STOP,))
        entry = agentrl.registry.resolve(cfg.env)

        def make_env(split: str) -> agentrl.TextEnv:
            return agentrl.make(entry.id, split=split, max_turns=cfg.max_turns, **cfg.env_args)

        store, runs = run.open_store({"trials": f"{cfg.run_name}/trials", "reflections": f"{cfg.run_name}/reflections"},
                                     env_id=entry.id)  # fmt: skip
        trial_run, reflection_run = runs["trials"], runs["reflections"]
        logger = run.metrics_logger()
        learner_config = cfg.learner.for_run(cfg.iterations)  # the reflections carry their sampling temperature
        learner = Learner(reflector_policy.model, learner_config, pad_token_id=reflector_policy.pad_id, logger=logger)
        resumed = run.restore({"reflector": learner})
        reflector_policy.version = learner.step
        panel_env = make_env(cfg.train_split)
        train_panel = panel_env.task_ids(cfg.train_split)[: cfg.train_tasks or None]
        eval_tasks = eval_panel(panel_env, cfg.eval_split, cfg.eval_tasks) if cfg.eval_tasks > 0 else []
        panel_env.close()
        state = run.state  # iterations done, evaluations recorded, the last reflection read, summary
        if not resumed:
            state.update(iteration=0, evaluated=-1, last_id=None,
                         summary={"run_dir": str(run.directory), "evaluations": [], "iterations": []})  # fmt: skip
        summary = state["summary"]

        def reseed(iteration: int, phase: str) -> np.random.Generator:
            actor.reseed(phase_seed(cfg.seed, iteration, f"{phase}/a"))
            reflector_policy.reseed(phase_seed(cfg.seed, iteration, f"{phase}/r"))
            return np.random.default_rng(phase_seed(cfg.seed, iteration, phase))

        def evaluate(iteration: int) -> None:
            if eval_tasks:
                reseed(iteration, "eval")
                with Collector(lambda: make_env(cfg.eval_split), ModelActor(actor, agent, actor_sampling), env_id=entry.id,
                               max_parallel=cfg.max_parallel, split=cfg.eval_split) as collector, \
                        run.track(f"evaluation after {iteration} iterations (trials)", len(eval_tasks) * cfg.trials) as bar:
                    collector.on_episode = bar.advance
                    report = run_trials(collector, agent, reflector, eval_tasks, trials=cfg.trials, seed=cfg.seed,
                                        chain_prefix=f"eval{iteration}/")
                result = {"iteration": iteration, "reflector_version": learner.step, **report.summary()}
                with run.critical():
                    summary["evaluations"].append(result)
                    logger.log(learner.step, {"iteration": iteration,
                                              **{f"eval/success@{j + 1}": s for j, s in enumerate(result["success_at"])}})
                    state["evaluated"] = iteration
                run.say(f"[{cfg.run_name}] eval after {iteration} iterations: success@1..{cfg.trials} "
                        + " ".join(f"{s:.3f}" for s in result["success_at"]))

        # 2. evaluation of the initial reflector (or the one a resumed run had not recorded yet)
        with run.critical():
            pass  # commit the starting point
        due = {0} | ({cfg.iterations} if cfg.iterations > 0 else set())
        if state["iteration"] in due and state["evaluated"] < state["iteration"]:
            evaluate(state["iteration"])
        run.maybe_checkpoint(state["iteration"])

        # 3-4. trials -> store -> rated reflections read back from the store -> PPO update of the reflector
        with Collector(lambda: make_env(cfg.train_split), ModelActor(actor, agent, actor_sampling), env_id=entry.id,
                       max_parallel=cfg.max_parallel, split=cfg.train_split) as collector:
            for iteration in range(state["iteration"] + 1, cfg.iterations + 1):
                started = time.perf_counter()
                rng = reseed(iteration, "trials")
                torch.manual_seed(phase_seed(cfg.seed, iteration, "learner"))
                size = min(cfg.tasks_per_iteration, len(train_panel))
                tasks = [str(t) for t in rng.choice(train_panel, size=size, replace=False)]
                with run.track(f"iteration {iteration}/{cfg.iterations}: trials", size * cfg.trials) as bar:
                    collector.on_episode = bar.advance
                    report = run_trials(collector, agent, reflector, tasks, trials=cfg.trials, seed=int(rng.integers(1 << 31)),
                                        store=store, trial_run=trial_run, reflection_run=reflection_run,
                                        chain_prefix=f"it{iteration}/")  # fmt: skip
                with run.critical():  # the trials above are in the store; a kill before this block drops them on resume
                    written = list(store.iter_episodes(reflection_run, with_ids=True, since_id=state["last_id"]))
                    state["last_id"] = written[-1][0] if written else state["last_id"]
                    fresh = [episode for _, episode in written]
                    batch = retrospective_batch(fresh, batch_id=str(iteration), normalize=cfg.normalize)  # type: ignore[arg-type]
                    stats = {"iteration": iteration, **report.summary(), "trained_reflections": len(batch)}
                    updates: list[dict[str, Any]] = []
                    if batch and len({r.steps[0].reward for r in batch}) > 1:  # equal ratings carry no signal
                        updates = learner.update(batch)
                        reflector_policy.version = learner.step
                    summary["iterations"].append(stats)
                    logger.log(learner.step, {"iteration": iteration, "rollout/success_at_last": stats["success_at"][-1],
                                              "rollout/mean_rating": stats["mean_rating"] or 0.0})
                    state["iteration"] = iteration
                rating = "-" if stats["mean_rating"] is None else f"{stats['mean_rating']:+.3f}"
                finals = [r[-1] for r in report.returns.values() if r]  # each task's last trial
                rollout = {"success_rate": stats["success_at"][-1], "mean_return": float(np.mean(finals)) if finals else 0.0}
                run.say(iteration_line(cfg.run_name, iteration, cfg.iterations, rollout, updates, time.perf_counter() - started)
                        + f" | success@1..{cfg.trials} " + " ".join(f"{x:.3f}" for x in stats["success_at"])
                        + f", {len(batch)} rated reflections, mean rating {rating}")  # fmt: skip
                if iteration == cfg.iterations:
                    evaluate(iteration)
                run.maybe_checkpoint(iteration)

        # 5. save
        if cfg.iterations > 0:
            learner.export_pretrained(run.directory / "reflector")
            reflector_policy.tokenizer.save_pretrained(run.directory / "reflector")
        summary.update(store=run.record["store"], git_sha=git_sha())
        run.write_json("summary.json", summary)
        run.say(f"[{cfg.run_name}] done: reflector in {run.directory / 'reflector'}, metrics in {logger.path}")
    return summary
