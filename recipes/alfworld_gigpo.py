"""ALFWorld with GiGPO (arXiv 2505.10978), verl-agent's published recipe.

Group-in-group advantages: GRPO's episode-level advantage plus a step-level one over the steps of a
group that acted from the same observation (``agentrl.algorithms.gigpo``), normalised with the
standard deviation as verl-agent's ALFWorld script (``mode=mean_std_norm``; the paper's best ALFWorld
variant, 86.7 % with Qwen2.5-1.5B-Instruct). Train games, evaluation on valid_unseen.
The model is yours to supply; verl-agent's default is ``model=Qwen/Qwen2.5-1.5B-Instruct``.
Defaults cite verl-agent's ``examples/gigpo_trainer/run_alfworld.sh`` (A) and
``verl/trainer/config/ppo_trainer.yaml`` (Y); the learner's are in ``recipes/_benchmark.py``
(``gigpo_learner``); the loop is ``textworld_grpo``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.config import setting
from agentrl.recipes._benchmark import BenchmarkConfig, gigpo_learner
from agentrl.recipes.textworld_grpo import main
from agentrl.training.config import LearnerConfig

__all__ = ["Config", "main"]


@dataclass
class Config(BenchmarkConfig):
    run_name: str = setting("alfworld_gigpo", "run directory name under output_dir")
    env: str = setting("alfworld", "environment alias")
    max_turns: int = setting(50, "turn budget per episode (A: env.max_steps=50)")
    iterations: int = setting(150, "RL iterations (A: trainer.total_epochs=150)")
    tasks_per_iteration: int = setting(16, "distinct games per iteration (A: train_data_size=16)")
    group_size: int = setting(8, "episodes per game (A: env.rollout.n=8)")
    temperature: float = setting(1.0, "rollout sampling temperature (Y: rollout.temperature 1.0)")
    max_new_tokens: int = setting(512, "tokens per turn (A: data.max_response_length=512)")
    layout: str = setting("per_step", "one prompt per turn with a history window (verl-agent's prompt)")
    history: int | None = setting(2, "(observation, action) pairs of history in each prompt (Y: env.history_length 2)")
    eval_split: str = setting("valid_unseen", "evaluation panel (out-of-distribution games; as alfworld_empg)")
    eval_tasks: int = setting(134, "evaluate on the first N tasks of the eval panel (A: 128 validation episodes)")
    eval_every: int = setting(5, "evaluate every N iterations (A: trainer.test_freq=5)")
    eval_before: bool = setting(True, "evaluate before training too (A: trainer.val_before_train=True)")
    eval_temperature: float = setting(0.4, "sampled evaluation (A: val_kwargs.temperature=0.4, do_sample=True)")
    learner: LearnerConfig = setting(factory=lambda: gigpo_learner(scale_by_std=True), doc="verl-agent's GiGPO learner (A: gigpo.mode=mean_std_norm)")
