"""ScienceWorld with EPO (arXiv 2509.22576).

Entropy-regularised policy optimisation on ScienceWorld's train variations (simplification "easy");
evaluation on the test panel.
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
    run_name: str = setting("scienceworld_epo", "run directory name under output_dir")
    env: str = setting("scienceworld", "environment alias")
    max_turns: int = setting(50, "turn budget per episode (ours; some gold paths are longer)")
    eval_split: str = setting("test", "evaluation panel (ScienceWorld's own test variations)")
    eval_tasks: int = setting(200, "evaluate on the first N tasks of the eval panel")
    learner: LearnerConfig = setting(factory=lambda: learner(terms=["epo"], options={"epo": {"alpha": 0.05}}), doc="EPO alpha 0.05 for ScienceWorld as the paper")
