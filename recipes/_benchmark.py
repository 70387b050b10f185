"""Defaults shared by the benchmark recipes (ALFWorld, ScienceWorld, WebShop).

They follow verl-agent's GiGPO scripts, which EMPG and EPO build on, where those state a value; the
loop itself is ``textworld_grpo``'s. The model is yours to supply (``model=PATH_OR_HUB_ID``, a Hugging Face
directory or Hub id; the papers use Qwen2.5-1.5B/3B/7B-Instruct).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrl.config import setting
from agentrl.recipes.textworld_grpo import Config as OnlineConfig
from agentrl.training.config import LearnerConfig


@dataclass
class BenchmarkConfig(OnlineConfig):
    env_args: dict[str, Any] = setting(factory=dict, doc="env constructor arguments")
    train_split: str = setting("train", "tasks are drawn from this panel")
    eval_every: int = setting(10, "evaluate every N iterations (ours)")
    iterations: int = setting(150, "RL iterations (verl-agent: 150 training steps)")
    tasks_per_iteration: int = setting(16, "distinct tasks per iteration (verl-agent: train batch 16)")
    group_size: int = setting(8, "episodes per task (verl-agent: group_n 8)")
    temperature: float = setting(1.0, "rollout sampling temperature")
    max_new_tokens: int = setting(512, "tokens per turn (verl-agent: max response length 512)")
    max_parallel: int = setting(128, "live episodes at once")
    layout: str = setting("per_step", "one row per turn with a history window, as verl-agent")
    history: int | None = setting(2, "turns of history in each prompt (verl-agent: history_length 2)")
    learner: LearnerConfig = setting(factory=lambda: learner(), doc="lr 1e-6, KL 0.01 as verl-agent")


def learner(shaping: list[str] | None = None, terms: list[str] | None = None, options: dict[str, Any] | None = None) -> LearnerConfig:
    """The benchmark learner defaults (lr 1e-6, k3 KL 0.01 as verl-agent) plus an algorithm's plug-ins."""
    return LearnerConfig(
        lr=1e-6, shaping=list(shaping or []), terms=["kl", *(terms or [])],
        options={"kl": {"coef": 0.01}, **(options or {})},
    )  # fmt: skip


def gigpo_learner(scale_by_std: bool) -> LearnerConfig:
    """verl-agent's GiGPO learner; ``scale_by_std`` is its ``mode`` (True: mean_std_norm, False: mean_norm).

    Sources (verl-agent at 2716b30, the same values at the paper-era 54df099):
    ``examples/gigpo_trainer/run_{alfworld,webshop}.sh`` and ``verl/trainer/config/ppo_trainer.yaml``.
    What this learner cannot express: PPO mini-batches of 256 (ALFWorld) / 64 (WebShop) rows per
    optimizer step (here one optimizer step per iteration), verl's dual-clip (c = 3) and the clamp of
    its low_var_kl to [-10, 10].
    """
    return LearnerConfig(
        lr=1e-6,  # actor.optim.lr=1e-6 (run_alfworld.sh, run_webshop.sh)
        weight_decay=0.01,  # actor.optim.weight_decay 0.01 (ppo_trainer.yaml)
        min_lr_ratio=1.0,  # constant learning rate: no warm-up, no decay (ppo_trainer.yaml)
        max_grad_norm=1.0,  # actor.grad_clip 1.0 (ppo_trainer.yaml)
        epochs=1,  # actor.ppo_epochs 1 (ppo_trainer.yaml)
        eps_low=0.2, eps_high=0.2,  # actor.clip_ratio_low / clip_ratio_high 0.2 (ppo_trainer.yaml)
        agg="token-mean",  # actor.loss_agg_mode token-mean (ppo_trainer.yaml)
        advantage="gigpo",  # algorithm.adv_estimator=gigpo
        terms=["kl", "entropy"],  # actor.use_kl_loss=True (k3, as kl_loss_type=low_var_kl); entropy bonus
        options={
            "gigpo": {
                "gamma": 0.95,  # algorithm.gamma=0.95
                "omega": 1.0,  # algorithm.gigpo.step_advantage_w=1.0
                "scale_by_std": scale_by_std,  # algorithm.gigpo.mode
                "episode_weighting": "step",  # core_gigpo.py: episode statistics over rows (the code that made the paper's numbers)
                "similarity_threshold": None,  # enable_similarity False (ppo_trainer.yaml): exact observation match
                "invalid_penalty": 0.1,  # actor.use_invalid_action_penalty=True, invalid_action_penalty_coef=0.1
                "invalid_key": "parse_error",  # verl-agent's "invalid" is a format error (no <action> tag), not an inadmissible command
                "reward_scale": 10.0,  # verl-agent's envs pay 10 per success (ours pay 1), so the penalty keeps its weight
            },
            "kl": {"coef": 0.01},  # actor.kl_loss_coef=0.01
            "entropy": {"coef": 1e-3},  # actor.entropy_coeff 0.001 (ppo_trainer.yaml)
        },
    )  # fmt: skip
