"""Retroformer (arXiv 2308.02151): a frozen actor, reflections as memory, a retrospective LM trained by PPO.

* :mod:`agentrl.retroformer.prompts`: every prompt (the actor's memory block, the reflector's input)
  and the check that rejects empty or garbage reflections;
* :mod:`agentrl.retroformer.agent`: :class:`ReflexionAgent` (an LLM agent that reads its memory) and
  :class:`Reflector` (any policy that writes reflections as one-step, token-exact episodes);
* :mod:`agentrl.retroformer.trials`: the trial loop with ratings ``G_{k,i+1} - G_{k,i}``, success@1..N,
  and :func:`retrospective_batch` (how ratings are normalised for the learner).

Training uses the ordinary :class:`~agentrl.training.learner.Learner` (PPO-clip, optional KL to the
frozen reference and LoRA through its config) on the reflector's model only; the recipes
``alfworld_retroformer`` and ``scienceworld_retroformer`` put it together. Importing this package
imports no model library.
"""

from agentrl.retroformer.agent import Reflector, ReflexionAgent
from agentrl.retroformer.trials import TrialReport, ratings, retrospective_batch, run_trials

__all__ = ["Reflector", "ReflexionAgent", "TrialReport", "ratings", "retrospective_batch", "run_trials"]
