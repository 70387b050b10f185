"""ALFWorld with EPO (arXiv 2509.22576).

Entropy-regularised policy optimisation on GRPO groups, on ALFWorld's train games; evaluation on valid_unseen.
Shared benchmark defaults (verl-agent's) are in ``recipes/_benchmark.py``; the loop is ``textworld_grpo``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.config import setting
from agentrl.recipes._benchmark import BenchmarkConfig, learner
from agentrl.recipes.textworld_grpo import main
from agentrl.training.config import LearnerConfig

__all__ = ["Config", "main"]


@dataclass
class Config(BenchmarkConfig):
    run_name: str = setting("alfworld_epo", "run directory name under output_dir")
    env: str = setting("alfworld", "environment alias")
    max_turns: int = setting(50, "turn budget per episode (verl-agent: 50 steps)")
    eval_split: str = setting("valid_unseen", "evaluation panel (out-of-distribution games)")
    eval_tasks: int = setting(134, "evaluate on the first N tasks of the eval panel")
    learner: LearnerConfig = setting(factory=lambda: learner(terms=["epo"], options={"epo": {"alpha": 0.1}}), doc="EPO lambda 1e-3, kappa 0/2, gamma 3, alpha 0.1 (ALFWorld) as the paper")
