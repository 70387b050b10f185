"""Online RL on TextWorld with EPO (entropy-regularized policy optimization, arXiv 2509.22576).

The textworld_grpo loop with EPO's entropy terms (lambda 1e-3, kappa_l 0, kappa_r 2, gamma 3,
alpha 0.1: the paper's ALFWorld values).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.config import setting
from agentrl.recipes.textworld_grpo import Config as GRPOConfig
from agentrl.recipes.textworld_grpo import main
from agentrl.training.config import LearnerConfig

__all__ = ["Config", "main"]


@dataclass
class Config(GRPOConfig):
    run_name: str = setting("textworld_epo", "run directory name under output_dir")
    learner: LearnerConfig = setting(factory=lambda: LearnerConfig(lr=1e-5, terms=["epo"]), doc="the update, with EPO")
