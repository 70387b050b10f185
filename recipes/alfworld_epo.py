"""ALFWorld with EPO (arXiv 2509.22576).

Entropy-regularised policy optimisation on GRPO groups, on ALFWorld's train games; evaluation on valid_unseen.

The model is yours to supply (``model=PATH``, a local Hugging Face directory; the papers use
Qwen2.5-1.5B/3B/7B-Instruct). Defaults follow the papers and verl-agent's GiGPO scripts where they
state a value; the comments say where a value is ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentrl.recipes.textworld_grpo import Config as OnlineConfig
from agentrl.recipes.textworld_grpo import main
from agentrl.training.config import EPOConfig, LearnerConfig

__all__ = ["Config", "main"]


@dataclass
class Config(OnlineConfig):
    run_name: str = "alfworld_epo"  # run directory name under output_dir
    env: str = "alfworld"  # environment alias
    env_args: dict[str, Any] = field(default_factory=dict)  # env constructor arguments
    max_turns: int = 50  # turn budget per episode (verl-agent: 50 steps)
    train_split: str = "train"  # tasks are drawn from this panel
    eval_split: str = "valid_unseen"  # evaluation panel (out-of-distribution games)
    eval_tasks: int = 134  # evaluate on the first N tasks of the eval panel
    eval_every: int = 10  # evaluate every N iterations (ours)
    iterations: int = 150  # RL iterations (verl-agent: 150 training steps)
    tasks_per_iteration: int = 16  # distinct tasks per iteration (verl-agent: train batch 16)
    group_size: int = 8  # episodes per task (verl-agent: group_n 8)
    temperature: float = 1.0  # rollout sampling temperature
    max_new_tokens: int = 512  # tokens per turn (verl-agent: max response length 512)
    max_parallel: int = 128  # live episodes at once
    layout: str = "per_step"  # one row per turn with a history window, as verl-agent
    history: int | None = 2  # turns of history in each prompt (verl-agent: history_length 2)
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=1e-6, total_steps=150, kl_coef=0.01, epo=EPOConfig(alpha=0.1)))  # lr 1e-6 and KL 0.01 as verl-agent; EPO lambda 1e-3, kappa 0/2, gamma 3, alpha 0.1 (ALFWorld) as the paper
