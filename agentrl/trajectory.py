"""Plain records of what happened in an episode: the one currency between rollout, store and learner.

These are dataclasses with no behaviour beyond summaries, so every part of agentrl (scripted
evaluation, LLM rollouts, the SQL store, trainers) can produce or consume them without importing
each other. Token fields are ``None`` for agents that do not use a model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """One agent turn: the observation acted on, the action taken, and what the env answered."""

    observation: str  # the observation the agent saw before acting
    action: str  # the action text sent to env.step
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # env info returned by this step
    env_seconds: float = 0.0  # wall time of env.step
    generation_seconds: float = 0.0  # wall time the policy took to produce the action
    # Token bookkeeping (model agents only): exactly what the policy saw and sampled.
    prompt_ids: list[int] | None = None  # the full prompt of this turn
    response_ids: list[int] | None = None  # the sampled ids, verbatim
    loss_mask: list[int] | None = None  # per response id: 1 = sampled and trained on
    logprobs: list[float] | None = None  # behaviour log-probabilities of response_ids
    entropies: list[float] | None = None  # entropy of the sampling distribution per response id
    policy_version: int | None = None  # weights version that produced this turn


@dataclass
class Episode:
    """A whole episode on one task, in turn order."""

    env_id: str
    task_id: str
    split: str | None = None
    seed: int | None = None
    group_id: str | None = None  # episodes of the same task sampled together (GRPO groups)
    agent: str = ""  # agent or model name
    policy_version: int | None = None
    instruction: str | None = None
    first_observation: str = ""
    steps: list[Step] = field(default_factory=list)
    won: bool = False
    progress: float = 0.0
    error: str | None = None  # set when the episode failed for a reason outside the task
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def episode_return(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def turns(self) -> int:
        return len(self.steps)

    @property
    def truncated(self) -> bool:
        return bool(self.steps) and self.steps[-1].truncated

    @property
    def invalid_actions(self) -> int:
        return sum(bool(s.info.get("invalid_action")) for s in self.steps)
