"""WebShop with GiGPO (arXiv 2505.10978), verl-agent's published recipe.

Group-in-group advantages: GRPO's episode-level advantage plus a step-level one over the steps of a
group that acted from the same page (``agentrl.algorithms.gigpo``), centred without the division by
the standard deviation as verl-agent's WebShop script (``mode=mean_norm``; the paper's best WebShop
variant, 67.4 % success with Qwen2.5-1.5B-Instruct). Train goals, evaluation on the test goals (the
first 500). Needs the real catalog for paper-comparable numbers (``env_args.data_dir``); verl-agent
trains on the 1,000-item catalog (Y: ``use_small: True``).
The model is yours to supply; verl-agent's default is ``model=Qwen/Qwen2.5-1.5B-Instruct``.
Reward: ours is WebShop's score in [0, 1] at ``click[buy now]``; verl-agent pays 10 only for a score
of 1. ``reward_scale`` 10 gives the same scale, partial credit stays.
Defaults cite verl-agent's ``examples/gigpo_trainer/run_webshop.sh`` (W) and
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
    run_name: str = setting("webshop_gigpo", "run directory name under output_dir")
    env: str = setting("webshop", "environment alias")
    max_turns: int = setting(15, "turn budget per episode (W: env.max_steps=15)")
    iterations: int = setting(150, "RL iterations (W: trainer.total_epochs=150)")
    tasks_per_iteration: int = setting(16, "distinct goals per iteration (W: train_data_size=16)")
    group_size: int = setting(8, "episodes per goal (W: env.rollout.n=8)")
    temperature: float = setting(1.0, "rollout sampling temperature (Y: rollout.temperature 1.0)")
    max_new_tokens: int = setting(512, "tokens per turn (W: data.max_response_length=512)")
    layout: str = setting("per_step", "one prompt per turn with a history window (verl-agent's prompt)")
    history: int | None = setting(2, "(observation, action) pairs of history in each prompt (Y: env.history_length 2)")
    eval_split: str = setting("test", "evaluation panel (the original's first 500 goals; as webshop_empg)")
    eval_tasks: int = setting(500, "evaluate on the first N tasks of the eval panel (W: 128 validation episodes)")
    eval_every: int = setting(5, "evaluate every N iterations (W: trainer.test_freq=5)")
    eval_before: bool = setting(True, "evaluate before training too (W: trainer.val_before_train=True)")
    eval_temperature: float = setting(0.4, "sampled evaluation (W: val_kwargs.temperature=0.4, do_sample=True)")
    learner: LearnerConfig = setting(factory=lambda: gigpo_learner(scale_by_std=False), doc="verl-agent's GiGPO learner (W: gigpo.mode=mean_norm)")
