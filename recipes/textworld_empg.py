"""Online RL on TextWorld with EMPG (entropy-modulated policy gradients, arXiv 2509.09265).

The textworld_grpo loop with EMPG's advantage modulation (k = k' = 1, zeta = 0.1, the paper's values).
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
    run_name: str = setting("textworld_empg", "run directory name under output_dir")
    learner: LearnerConfig = setting(factory=lambda: LearnerConfig(lr=1e-5, shaping=["empg"]), doc="the update, with EMPG")
