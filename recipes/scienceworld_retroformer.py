"""Retroformer on ScienceWorld: the ALFWorld recipe's loop with ScienceWorld's panels and turn budget.

The loop is :func:`agentrl.recipes.alfworld_retroformer.main` (read it there). Retroformer did not
report ScienceWorld; the trial settings are the paper's (4 trials, the last 3 reflections in memory,
LoRA r=1, lr 1.4e-5, 4 epochs, batch 8) and the episode settings are those of our other ScienceWorld
recipes (50 turns, the ``test`` variations for evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.config import setting
from agentrl.recipes.alfworld_retroformer import Config as _AlfworldConfig
from agentrl.recipes.alfworld_retroformer import main as _main


@dataclass
class Config(_AlfworldConfig):
    """Retroformer (ScienceWorld). Override any field: ``agentrl train scienceworld_retroformer key=value``."""

    run_name: str = setting("scienceworld_retroformer", "run directory name under output_dir, and the store's run names")
    env: str = setting("scienceworld", "environment id or alias")
    max_turns: int = setting(50, "turn budget per trial (some gold paths are longer; see PLATFORM.md)")
    eval_split: str = setting("test", "evaluation panel (ScienceWorld's own test variations)")
    eval_tasks: int = setting(100, "evaluate on the first N tasks of the eval panel (0 = no evaluation)")


def main(cfg: Config) -> dict:
    return _main(cfg)
