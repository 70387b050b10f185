"""WebShop with EMPG (arXiv 2509.09265).

Entropy-modulated advantages on GRPO groups, on WebShop's train goals; evaluation on the test goals
(the first 500). Needs the real catalog for paper-comparable numbers (``env_args.data_dir``).
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
    run_name: str = setting("webshop_empg", "run directory name under output_dir")
    env: str = setting("webshop", "environment alias")
    max_turns: int = setting(15, "turn budget per episode (verl-agent: 15 steps)")
    eval_split: str = setting("test", "evaluation panel (the original's first 500 goals)")
    eval_tasks: int = setting(500, "evaluate on the first N tasks of the eval panel")
    learner: LearnerConfig = setting(factory=lambda: learner(shaping=["empg"]), doc="EMPG k = k' = 1, zeta = 0.1 as the paper")
