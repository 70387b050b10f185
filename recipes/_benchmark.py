"""Defaults shared by the benchmark recipes (ALFWorld, ScienceWorld, WebShop).

They follow verl-agent's GiGPO scripts, which EMPG and EPO build on, where those state a value; the
loop itself is ``textworld_grpo``'s. The model is yours to supply (``model=PATH_OR_HUB_ID``, a Hugging Face
directory or Hub id; the papers use Qwen2.5-1.5B/3B/7B-Instruct).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentrl.recipes.textworld_grpo import Config as OnlineConfig
from agentrl.training.config import LearnerConfig


@dataclass
class BenchmarkConfig(OnlineConfig):
    env_args: dict[str, Any] = field(default_factory=dict)  # env constructor arguments
    train_split: str = "train"  # tasks are drawn from this panel
    eval_every: int = 10  # evaluate every N iterations (ours)
    iterations: int = 150  # RL iterations (verl-agent: 150 training steps)
    tasks_per_iteration: int = 16  # distinct tasks per iteration (verl-agent: train batch 16)
    group_size: int = 8  # episodes per task (verl-agent: group_n 8)
    temperature: float = 1.0  # rollout sampling temperature
    max_new_tokens: int = 512  # tokens per turn (verl-agent: max response length 512)
    max_parallel: int = 128  # live episodes at once
    layout: str = "per_step"  # one row per turn with a history window, as verl-agent
    history: int | None = 2  # turns of history in each prompt (verl-agent: history_length 2)
    learner: LearnerConfig = field(default_factory=lambda: learner())  # lr 1e-6, KL 0.01 as verl-agent


def learner(shaping: list[str] | None = None, terms: list[str] | None = None, options: dict[str, Any] | None = None) -> LearnerConfig:
    """The benchmark learner defaults (lr 1e-6, k3 KL 0.01 as verl-agent) plus an algorithm's plug-ins."""
    return LearnerConfig(
        lr=1e-6, shaping=list(shaping or []), terms=["kl", *(terms or [])],
        options={"kl": {"coef": 0.01}, **(options or {})},
    )  # fmt: skip
