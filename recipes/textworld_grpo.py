"""Online RL on TextWorld with GRPO: collect groups of episodes, compute advantages, update, repeat.

This is the reference loop every online recipe shares (the benchmark recipes are this loop with the
papers' defaults). Read it top to bottom:

1. load the policy (a Hugging Face model directory or Hub id) on the rollout backend (``rollout.backend``:
   ``hf`` in this process, ``vllm`` in this process, ``openai`` a server) and wrap it in the LLM agent's
   prompt format;
2. optionally warm up by supervised fine-tuning on expert demonstrations (``sft_episodes > 0``);
3. per iteration: draw ``tasks_per_iteration`` train tasks, play ``group_size`` episodes of each
   with the current weights (one batched generate per turn), write them to the store, and give
   them to the learner (advantages + PPO-clip update, EMPG/EPO when configured); the rollout engine
   then loads the new weights, and the next batch's behaviour log-probs are checked against the
   learner's (``rollout/exact/*`` metrics);
4. every ``eval_every`` iterations, evaluation on the first ``eval_tasks`` of the eval panel (greedy,
   or ``eval_samples`` sampled episodes per task at ``eval_temperature``).

Everything lands in ``output_dir/run_name`` (:mod:`agentrl.training.run`): ``metrics.jsonl`` (one line
per optimizer step and per evaluation), ``evals/`` (each evaluation's report), ``summary.json``, the
final weights (``model/``), the trajectory store and the last checkpoint. An existing run is never
overwritten: ``resume=true`` continues it from its last checkpoint (every ``checkpoint_every``
iterations, and on Ctrl-C/SIGTERM) exactly as if it had not stopped; ``overwrite=true`` starts it over.
Each phase draws from its own seed (:func:`~agentrl.training.run.phase_seed`), which is what makes a
resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agentrl.config import ConfigError, setting
from agentrl.distributed.rollout_engine import RolloutConfig
from agentrl.training.config import LearnerConfig
from agentrl.training.run import RunOptions


@dataclass
class Config(RunOptions):
    """Online RL recipe (TextWorld, GRPO). Every field can be overridden: ``agentrl train textworld_grpo key=value``."""

    model: str = setting("", "Hugging Face model directory or Hub id (required), e.g. Qwen/Qwen2.5-1.5B-Instruct")
    run_name: str = setting("textworld_grpo", "run directory name under output_dir, and the store's run name")
    output_dir: str = setting("runs", "where run directories are created")
    store: str = setting("", "trajectory store URL; empty = sqlite:///<output_dir>/<run_name>/store.db")
    env: str = setting("textworld", "environment id or alias")
    env_args: dict[str, Any] = setting(factory=lambda: {"difficulty": "easy"}, doc="env constructor arguments")
    max_turns: int = setting(8, "turn budget per episode (the env's max_turns)")
    train_split: str = setting("train", "tasks are drawn from this panel")
    train_tasks: int = setting(0, "draw from the first N tasks of the train panel only (0 = all of it)")
    eval_split: str = setting("valid", "evaluation panel")
    eval_tasks: int = setting(50, "evaluate on the first N tasks of the eval panel (0 = no evaluation)")
    eval_every: int = setting(5, "evaluate every N iterations (and after the last)")
    eval_before: bool = setting(True, "also evaluate before the first iteration")
    eval_temperature: float = setting(0.0, "evaluation sampling temperature (0 = greedy)")
    eval_samples: int = setting(1, "episodes per evaluation task (seeds 0..N-1; more than 1 only makes sense with sampling)")
    iterations: int = setting(20, "RL iterations (each is one learner update)")
    tasks_per_iteration: int = setting(8, "distinct train tasks per iteration")
    group_size: int = setting(8, "episodes per task (GRPO group)")
    temperature: float = setting(1.0, "rollout sampling temperature")
    max_new_tokens: int = setting(32, "tokens per turn")
    max_parallel: int = setting(32, "live episodes at once (one batched generate per turn)")
    layout: str = setting("concat", "token layout: concat (whole episode) or per_step (windowed history)")
    history: int | None = setting(None, "per_step layout: turns of history in each prompt (None = all)")
    admissible_only: bool = setting(False, "constrained decoding: sample only the admissible actions listed (HFPolicy)")
    sft_episodes: int = setting(0, "expert demonstrations for a supervised warm-up (0 = none)")
    sft_epochs: int = setting(3, "passes over the demonstrations")
    sft_lr: float = setting(1e-3, "warm-up learning rate")
    sft_batch_tokens: int = setting(2048, "padded tokens per warm-up optimizer step")
    seed: int = setting(0, "seeds task draws, sampling and the learner")
    rollout: RolloutConfig = setting(factory=RolloutConfig, doc="the generating engine: hf, vllm or openai (a server)")
    learner: LearnerConfig = setting(
        factory=lambda: LearnerConfig(lr=1e-5), doc="the update (its schedule spans the run's iterations unless total_steps is set)"
    )


def main(cfg: Config) -> dict[str, Any]:
    from agentrl.training.run import Run, iteration_line, phase_seed

    run = Run.open(cfg)  # an existing run is an error unless resume/overwrite
    cfg = run.config  # on resume: the run's own config
    if not cfg.model:
        raise ConfigError("set model=PATH_OR_HUB_ID (a Hugging Face model directory or Hub id) for this recipe",
                          hint="no download needed: `agentrl model tiny ./tiny` writes a small model to train")  # fmt: skip
    cfg.rollout.validate()  # a misconfigured backend is refused before the run directory exists

    # Refusals above come before torch is imported: a mistyped run answers in a second, not after 3 s of imports.
    import shutil

    import numpy as np
    import torch

    import agentrl
    from agentrl.agents.llm import LLMAgent, prompt_format_for
    from agentrl.distributed.rollout_engine import build_rollout_engine
    from agentrl.evaluation import eval_panel, evaluate_model
    from agentrl.policies import SamplingParams
    from agentrl.provenance import git_sha
    from agentrl.rollout import Collector, ModelActor
    from agentrl.training.exactness import check_behaviour_logprobs
    from agentrl.training.learner import Learner
    from agentrl.training.sft import demonstrations, sft_update

    with run:
        # 1. policy (on the rollout backend), agent, environments, store, metrics, learner (restored on resume)
        torch.manual_seed(cfg.seed)
        lora_rank = cfg.learner.lora.r if cfg.learner.lora is not None else None
        if run.resumed:  # versions published after the checkpoint must not reach the engine
            shutil.rmtree(run.directory / "weights", ignore_errors=True)
        rollout_engine = run.closes(build_rollout_engine(cfg.rollout, cfg.model, weights_dir=run.directory / "weights",
                                                         seed=cfg.seed, lora_rank=lora_rank))  # fmt: skip
        policy = rollout_engine.policy
        agent = LLMAgent(rollout_engine.tokenizer, prompt_format_for(cfg.env), layout=cfg.layout, history=cfg.history,
                         admissible_only=cfg.admissible_only)  # fmt: skip
        entry = agentrl.registry.resolve(cfg.env)

        def make_env(split: str) -> agentrl.TextEnv:
            return agentrl.make(entry.id, split=split, max_turns=cfg.max_turns, **cfg.env_args)

        store, store_runs = run.open_store({"main": cfg.run_name}, env_id=entry.id)
        run_id = store_runs["main"]
        logger = run.metrics_logger()
        learner = Learner(rollout_engine.train_model, cfg.learner.for_run(cfg.iterations), pad_token_id=rollout_engine.pad_id,
                          logger=logger)  # fmt: skip
        resumed = run.restore({"learner": learner})
        train_panel = make_env(cfg.train_split).task_ids(cfg.train_split)[: cfg.train_tasks or None]
        sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  stop=("</action>",), return_entropies=True)  # fmt: skip
        eval_sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.eval_temperature, stop=("</action>",))
        state = run.state  # what the last checkpoint saw: iterations done, evaluations recorded, summary
        if not resumed:
            state.update(iteration=0, evaluated=-1, summary={"run_dir": str(run.directory), "evaluations": []})
        summary = state["summary"]

        def eval_due(iteration: int) -> bool:
            if cfg.eval_tasks <= 0:
                return False
            if iteration == 0:
                return cfg.eval_before or cfg.iterations == 0
            return iteration % cfg.eval_every == 0 or iteration == cfg.iterations

        def evaluate(iteration: int) -> None:
            env = make_env(cfg.eval_split)
            panel = eval_panel(env, cfg.eval_split, cfg.eval_tasks)  # spread over task types (ALFWorld, ScienceWorld)
            env.close()
            rollout_engine.reseed(phase_seed(cfg.seed, iteration, "eval"))
            with run.track(f"evaluation after {iteration} iterations", len(panel) * cfg.eval_samples) as bar:
                report, _ = evaluate_model(lambda: make_env(cfg.eval_split), policy, agent, env_id=entry.id,
                                           split=cfg.eval_split, panel=panel, sampling=eval_sampling,
                                           group_size=cfg.eval_samples, max_parallel=cfg.max_parallel,
                                           max_turns=cfg.max_turns, on_episode=bar.advance)  # fmt: skip
            result = {"iteration": iteration, "policy_version": learner.step, **report.summary()}
            with run.critical():
                run.write_json(f"evals/iteration-{iteration:04d}.json",
                               {**report.to_json(), "iteration": iteration, "policy_version": learner.step})  # fmt: skip
                summary["evaluations"].append(result)
                logger.log(learner.step, {"eval/success_rate": result["success_rate"], "eval/mean_progress": result["mean_progress"],
                                          "eval/mean_return": result["mean_return"], "eval/mean_turns": result["mean_turns"],
                                          "iteration": iteration})  # fmt: skip
                state["evaluated"] = iteration
            run.say(f"[{cfg.run_name}] eval after {iteration} iterations: success {result['success_rate']:.3f} "
                    f"return {result['mean_return']:.3f} progress {result['mean_progress']:.3f} turns {result['mean_turns']:.1f}")

        # 2. supervised warm-up on expert demonstrations (before anything is committed: Ctrl-C here starts over)
        if not resumed and cfg.sft_episodes > 0:
            rng = np.random.default_rng(phase_seed(cfg.seed, 0, "warmup"))
            demo_tasks = [str(t) for t in rng.choice(train_panel, size=cfg.sft_episodes, replace=False)]
            env = make_env(cfg.train_split)
            with run.track("warm-up: expert demonstrations", len(demo_tasks)) as bar:
                demos = [ep for ep in demonstrations(env, agent, demo_tasks, env_id=entry.id, seed=cfg.seed,
                                                     on_episode=bar.advance) if ep.won]  # fmt: skip
            env.close()
            with run.track(f"warm-up: {cfg.sft_epochs} epochs on {len(demos)} demonstrations") as bar:
                history = sft_update(rollout_engine.train_model, demos, lr=cfg.sft_lr, epochs=cfg.sft_epochs,
                                     pad_token_id=rollout_engine.pad_id, micro_batch_tokens=cfg.sft_batch_tokens,
                                     seed=cfg.seed, on_step=bar.update)  # fmt: skip
            summary["sft"] = {"demonstrations": len(demos), "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"]}
            store.write_episodes(run_id, demos)
            run.say(f"[{cfg.run_name}] warm-up on {len(demos)} demonstrations: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
        rollout_engine.sync(learner)  # the engine runs the learner's weights (after the warm-up, or as resumed)
        with run.critical():
            pass  # commit the starting point (after the warm-up)
        if eval_due(state["iteration"]) and state["evaluated"] < state["iteration"]:
            evaluate(state["iteration"])  # before the first iteration, or the one a resumed run had not done yet
        run.maybe_checkpoint(state["iteration"])

        # 3. collect -> store -> check the behaviour log-probs -> update -> sync the rollout engine, one phase seed each
        with Collector(lambda: make_env(cfg.train_split), ModelActor(policy, agent, sampling), env_id=entry.id,
                       max_parallel=cfg.max_parallel, split=cfg.train_split) as collector:
            for iteration in range(state["iteration"] + 1, cfg.iterations + 1):
                started = time.perf_counter()
                rng = np.random.default_rng(phase_seed(cfg.seed, iteration, "tasks"))
                rollout_engine.reseed(phase_seed(cfg.seed, iteration, "rollout"))
                torch.manual_seed(phase_seed(cfg.seed, iteration, "learner"))
                tasks = [str(t) for t in rng.choice(train_panel, size=cfg.tasks_per_iteration, replace=False)]
                generated = collector.stats["tokens_generated"]
                with run.track(f"iteration {iteration}/{cfg.iterations}: rollouts", len(tasks) * cfg.group_size) as bar:
                    collector.on_episode = bar.advance
                    episodes = collector.run(tasks, group_size=cfg.group_size, seed=int(rng.integers(1 << 31)))
                rollout_seconds = time.perf_counter() - started
                rollout = {
                    "rollout/success_rate": float(np.mean([ep.won for ep in episodes])),
                    "rollout/mean_return": float(np.mean([ep.episode_return for ep in episodes])),
                    "rollout/mean_turns": float(np.mean([ep.turns for ep in episodes])),
                    "rollout/seconds": rollout_seconds,
                    "rollout/tokens_per_s": (collector.stats["tokens_generated"] - generated) / max(rollout_seconds, 1e-9),
                }
                if cfg.rollout.check_every and iteration % cfg.rollout.check_every == 0:  # engine log-probs == learner's?
                    exact = check_behaviour_logprobs(learner, episodes, max_tokens=cfg.rollout.check_tokens,
                                                     tolerance=cfg.rollout.tolerance, on_mismatch=cfg.rollout.on_mismatch)
                    rollout.update({f"rollout/{k}": v for k, v in exact.items()})
                with run.critical():  # store, update and metrics: all of it or (after a kill) none of it
                    store.write_episodes(run_id, episodes)
                    rollout_engine.sleep()  # a colocated vLLM engine frees the GPU for the update
                    updates = learner.update(episodes)
                    rollout.update(rollout_engine.sync(learner))  # the engine now runs version learner.step
                    logger.log(learner.step, {"iteration": iteration, **rollout})
                    state["iteration"] = iteration
                run.say(iteration_line(cfg.run_name, iteration, cfg.iterations,
                                       {k.removeprefix("rollout/"): v for k, v in rollout.items()}, updates,
                                       time.perf_counter() - started))  # fmt: skip
                if eval_due(iteration):
                    evaluate(iteration)
                run.maybe_checkpoint(iteration)

        # 4. save
        learner.export_pretrained(run.directory / "model")
        rollout_engine.tokenizer.save_pretrained(run.directory / "model")
        summary.update(model=str(run.directory / "model"), store=run.record["store"], git_sha=git_sha())
        run.write_json("summary.json", summary)
        run.say(f"[{cfg.run_name}] done: model in {run.directory / 'model'}, metrics in {logger.path}, "
                f"episodes in {run.record['store']} (run {run_id})")
    return summary
