"""Asynchronous, duration-aware RL on ML-engineering tasks (arXiv 2509.01684), Ray rollout workers.

The paper's setting: an action is a whole program that trains a model, and programs take from a
second (a crash) to minutes (real training), so rollout workers run asynchronously. The paper
weights each action's policy-gradient term by ``dt / mean_batch(dt)`` against fast actions flooding
the batches; that weight is right only for its arrival model, which agentrl's workers do not have
(:mod:`agentrl.algorithms.duration`). Here every worker plays whole groups and, with the default
``batching=group``, every fresh group is used whatever it cost: no arrival bias, no weight.
``batching=window`` takes whatever finished within each ``window_s`` seconds instead and drops
groups that started too long ago; set ``learner.shaping=[inclusion]`` with it to weight each used
group by the inverse of its chance of being used (README, "Duration-aware updates"). Rewards are
the MLE env's partial credit (+0.1 per progress milestone the instrumented program prints, the
normalized score of a valid submission, a penalty for a failed run).

Read it top to bottom:

1. the learner's model, the trajectory store (PostgreSQL for workers on several machines) and a
   Ray cluster (``ray=local`` starts a private one on loopback; ``ray=ADDRESS`` joins one);
2. half the groups "solve from scratch" (one attempt), half "improve the previous solution" (a
   second attempt that sees the first one's outcome and whose workspace keeps ``solution.py``);
3. the actor-learner loop (:mod:`agentrl.distributed.actor_learner`): workers play groups with the
   newest weights they have and write them to the store; the learner takes whole groups at most
   ``max_staleness`` versions old (or, with ``batching=window``, what finished within each window),
   updates (PPO-clip against the behaviour log-probs = clipped importance ratio, GRPO advantages)
   and publishes the new weights;
4. the final weights go to ``output_dir/run_name/model`` (LoRA merged).

With ``learner.lora`` set the learner trains adapters and publishes only them (PEFT's format, a few
MB per version); workers apply them to their copy of the base model.

Paper defaults where they apply: 128 episodes per update (16 groups of 8), lr 1e-5.
``agentrl train mle_async model=PATH_OR_HUB_ID`` (``--ray ADDRESS`` sets ``ray``). Under
``torchrun --nproc-per-node N $(which agentrl) train mle_async ...`` the learner is FSDP2 over the N
ranks (:mod:`agentrl.distributed.fsdp`): rank 0 drives the workers and broadcasts each batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agentrl.config import ConfigError, setting
from agentrl.distributed.batching import check_shaping
from agentrl.distributed.rollout_engine import RolloutConfig
from agentrl.training.config import LearnerConfig
from agentrl.training.run import RunOptions


@dataclass
class Config(RunOptions):
    """Asynchronous MLE recipe. Every field can be overridden: ``agentrl train mle_async key=value``."""

    model: str = setting("", "Hugging Face model directory or Hub id, e.g. Qwen/Qwen2.5-1.5B-Instruct (required)")
    run_name: str = setting("mle_async", "run directory name under output_dir, and the store's run name")
    output_dir: str = setting("runs", "where run directories are created")
    store: str = setting("", "trajectory store URL; empty = sqlite:///<output_dir>/<run_name>/store.db (one machine)")
    ray: str = setting("local", 'Ray cluster: "local" starts a private one on 127.0.0.1, else an address to join')
    env: str = setting("mle", "environment id or alias")
    env_args: dict[str, Any] = setting(factory=dict, doc="env constructor arguments (MLE: time_budget_s=300 by default)")
    split: str = setting("train", "task panel the groups are drawn from")
    train_tasks: int = setting(0, "draw from the first N tasks of the panel only (0 = all of it)")
    improve_fraction: float = setting(0.5, 'share of groups that "improve the previous solution" (2 attempts), rest 1 attempt')
    workers: int = setting(2, "rollout workers (Ray actors)")
    worker_cpus: float = setting(1.0, "CPUs Ray reserves per worker")
    worker_gpus: float = setting(0.0, "GPUs per worker (a fraction shares one; 0 = workers generate on the CPU)")
    max_parallel: int = setting(8, "live episodes per worker")
    updates: int = setting(50, "learner updates")
    group_size: int = setting(8, "episodes per task (GRPO group)")
    groups_per_update: int = setting(16, "groups per update: 16 x 8 = the paper's batch of 128")
    max_staleness: int = setting(
        2, 'oldest usable version = current - max_staleness (0 = synchronous); in windows for "window"'
    )
    batching: str = setting("group", '"group": every fresh whole group is used; "window": what finished within each window_s')
    window_s: float = setting(900.0, "batching=window: window length; keep (max_staleness + 1) * window_s > the slowest group")
    wait_timeout_s: float = setting(1800.0, "stop with a clear error when no fresh episode arrives for this long")
    max_worker_restarts: int = setting(5, "dead workers replaced at most this many times per run")
    temperature: float = setting(1.0, "rollout sampling temperature")
    max_new_tokens: int = setting(1024, "tokens per attempt (a whole program)")
    seed: int = setting(0, "seeds task draws, sampling and the learner")
    rollout: RolloutConfig = setting(
        factory=RolloutConfig, doc="workers' engine: hf, vllm (worker_gpus > 0) or openai (url: one server per worker)"
    )
    learner: LearnerConfig = setting(factory=lambda: LearnerConfig(lr=1e-5), doc="the update")


def main(cfg: Config) -> dict[str, Any]:
    import contextlib
    import shutil
    from collections.abc import Iterator

    import numpy as np
    import torch

    import agentrl
    from agentrl.distributed.actor_learner import ActorLearner
    from agentrl.distributed.ray_local import init_ray, shutdown_ray
    from agentrl.distributed.worker import WorkerSpec
    from agentrl.policies.hf import load_model_and_tokenizer
    from agentrl.policies.sources import hub_revision, load_pretrained
    from agentrl.provenance import git_sha
    from agentrl.training.exactness import check_behaviour_logprobs
    from agentrl.training.learner import Learner
    from agentrl.training.run import Run, iteration_line

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    run = Run.open(cfg) if rank == 0 else None  # rank 0 keeps the run directory; an existing run needs resume/overwrite
    cfg = run.config if run is not None else cfg
    if not cfg.model:
        raise ConfigError("set model=PATH_OR_HUB_ID (a Hugging Face model directory or Hub id) for this recipe",
                          hint="no download needed: `agentrl model tiny ./tiny` writes a small model")  # fmt: skip
    if not 0 <= cfg.improve_fraction <= 1:
        raise ConfigError(f"improve_fraction must be in [0, 1], got {cfg.improve_fraction}")
    cfg.rollout.validate()
    if cfg.rollout.backend == "vllm" and cfg.worker_gpus <= 0:
        raise ConfigError("rollout.backend=vllm runs a vLLM engine in every worker: set worker_gpus > 0")
    if cfg.rollout.backend == "openai" and len([u for u in cfg.rollout.url.split(",") if u.strip()]) < cfg.workers:
        raise ConfigError(f"rollout.backend=openai needs one server per worker: rollout.url lists fewer than {cfg.workers}")
    try:
        check_shaping(cfg.batching, cfg.learner.shaping)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.batching == "window" and not cfg.window_s > 0:
        raise ConfigError(f"window_s must be > 0 seconds with batching=window, got {cfg.window_s}")
    if world > 1 and cfg.resume:
        raise ConfigError("resume is not supported under torchrun yet (the FSDP learner has no checkpoint)",
                          hint="resume it in one process, or start a new run_name")  # fmt: skip
    torch.manual_seed(cfg.seed)

    # 1. learner (one process, or FSDP2 over the ranks of `torchrun --nproc-per-node N`), store, Ray
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if run is None:  # a follower rank: mirror rank 0's updates, keep nothing
        return _follow(cfg, device)
    with run:
        model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
        revision = hub_revision(cfg.model)  # a Hub id's commit: workers and the final export load these very weights
        pad_id = tokenizer.pad_token_id or 0
        logger = run.metrics_logger()
        learner: Any
        if world > 1:
            import torch.distributed as dist

            from agentrl.distributed.fsdp import FSDPLearner, RankZeroLearner

            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            learner = RankZeroLearner(FSDPLearner(model, cfg.learner.for_run(cfg.updates), pad_token_id=pad_id, logger=logger))
            run.no_checkpoints = "the FSDP learner has no checkpoint yet"
        else:
            learner = Learner(model, cfg.learner.for_run(cfg.updates), pad_token_id=pad_id, logger=logger)
            run.restore({"learner": learner})
        entry = agentrl.registry.resolve(cfg.env)
        store, runs = run.open_store({"main": cfg.run_name}, env_id=entry.id)
        run_id = runs["main"]
        weights_dir = run.directory / "weights"
        if run.resumed:  # versions newer than the checkpoint must not reach the workers
            shutil.rmtree(weights_dir, ignore_errors=True)
        started_ray = init_ray(cfg.ray, num_cpus=None)

        # 2. what each group plays: a train task, from scratch or improving a first attempt
        spec = WorkerSpec(
            model=cfg.model, env=entry.id, store=run.record["store"], run_id=run_id, weights_dir=str(weights_dir.resolve()),
            env_args=dict(cfg.env_args), variants={"scratch": {"max_turns": 1}, "improve": {"max_turns": 2}},
            split=cfg.split, max_turns=2, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            max_parallel=cfg.max_parallel, seed=cfg.seed, revision=revision, rollout=cfg.rollout,
            lora_rank=cfg.learner.lora.r if cfg.learner.lora is not None else None,
        )  # fmt: skip
        probe = agentrl.make(entry.id, split=cfg.split, **cfg.env_args)
        panel = probe.task_ids(cfg.split)[: cfg.train_tasks or None]
        probe.close()

        def sample_task(rng: np.random.Generator) -> tuple[str, str]:
            return str(rng.choice(panel)), "improve" if rng.random() < cfg.improve_fraction else "scratch"

        state = run.state  # updates done, the driver's position in the store, summary
        if "updates" not in state:
            state.update(updates=0, driver=None, summary={"run_dir": str(run.directory), "store": run.record["store"],
                                                          "run_id": run_id, "updates": []})  # fmt: skip
        summary = state["summary"]

        # 3. the actor-learner loop; each update (with its publish and this callback) is one commit of the run
        def check_batch(batch: list) -> dict[str, Any]:  # fresh episodes' engine log-probs == the learner's?
            rollout = cfg.rollout
            if not rollout.check_every or learner.step % rollout.check_every:
                return {}
            return check_behaviour_logprobs(learner, batch, max_tokens=rollout.check_tokens, tolerance=rollout.tolerance,
                                            on_mismatch=rollout.on_mismatch)  # fmt: skip

        def on_update(result: dict[str, Any]) -> None:
            flat = {k: v for k, v in result.items() if k != "learner"}
            logger.log(learner.step, flat)
            summary["updates"].append(flat)
            state.update(updates=state["updates"] + 1, driver=driver.state_dict())
            rollout = {"success_rate": flat["rollout/success_rate"], "mean_return": flat["rollout/mean_return"]}
            seconds = flat["async/wait_seconds"] + flat["async/update_seconds"]
            run.say(iteration_line(cfg.run_name, state["updates"], cfg.updates, rollout, result["learner"], seconds)
                    + f" | v{result['policy_version']}, staleness {flat['async/mean_staleness']:.2f}, "
                    f"waited {flat['async/wait_seconds']:.1f} s")  # fmt: skip

        @contextlib.contextmanager
        def commit_update() -> Iterator[None]:
            with run.critical():  # update, publish, on_update: SIGINT/SIGTERM wait for it
                yield
            run.maybe_checkpoint(state["updates"])

        try:
            driver = ActorLearner(
                learner, store, spec, workers=cfg.workers, group_size=cfg.group_size,
                groups_per_update=cfg.groups_per_update, sample_task=sample_task, max_staleness=cfg.max_staleness,
                batching=cfg.batching, window_s=cfg.window_s,
                wait_timeout_s=cfg.wait_timeout_s, max_worker_restarts=cfg.max_worker_restarts,
                worker_cpus=cfg.worker_cpus, worker_gpus=cfg.worker_gpus, seed=cfg.seed, on_update=on_update,
                check_batch=check_batch, around_update=commit_update,
            )  # fmt: skip
            if state["driver"] is not None:
                driver.load_state_dict(state["driver"])
            with run.critical():
                pass  # commit the starting point
            summary["failures"] = driver.run(cfg.updates - state["updates"])
            # 4. save
            if world > 1:
                from transformers import AutoModelForCausalLM

                base = load_pretrained(AutoModelForCausalLM, cfg.model, revision=revision)
                learner.export_pretrained(run.directory / "model", base)  # gathered on rank 0, LoRA merged
            else:
                learner.export_pretrained(run.directory / "model")
            tokenizer.save_pretrained(run.directory / "model")
        finally:
            if world > 1:
                learner.close()  # releases the follower ranks
                dist.destroy_process_group()
            shutdown_ray(started_ray)
        summary.update(git_sha=git_sha())
        run.write_json("summary.json", summary)
        run.say(f"[{cfg.run_name}] done: model in {run.directory / 'model'}, metrics in {logger.path}")
    return summary


def _follow(cfg: Config, device: str) -> dict[str, Any]:
    """A follower rank of ``torchrun``: build its FSDP shard and mirror rank 0's updates until released."""
    import torch.distributed as dist

    from agentrl.distributed.fsdp import FSDPLearner, follow_updates
    from agentrl.policies.hf import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    fsdp = FSDPLearner(model, cfg.learner.for_run(cfg.updates), pad_token_id=tokenizer.pad_token_id or 0, logger=None)
    try:
        return {"rank": dist.get_rank(), "updates": follow_updates(fsdp)}
    finally:
        dist.destroy_process_group()
