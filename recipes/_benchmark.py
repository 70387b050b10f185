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
        lr=1e-6, total_steps=150, shaping=list(shaping or []), terms=["kl", *(terms or [])],
        options={"kl": {"coef": 0.01}, **(options or {})},
    )  # fmt: skip
