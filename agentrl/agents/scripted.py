"""Scripted agents: baselines and data sources that need no model."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from agentrl.core import TextEnv

#: What the random agent says when an env lists no admissible actions.
FALLBACK_ACTIONS = ("look", "inventory", "wait")


class ScriptedAgent(abc.ABC):
    """An agent that acts one episode at a time: ``reset`` once per episode, then ``act`` per turn."""

    name: ClassVar[str]

    def reset(self, env: TextEnv, *, seed: int | None = None) -> None:
        self.env = env

    @abc.abstractmethod
    def act(self, obs: str, info: dict[str, Any]) -> str: ...


class RandomAgent(ScriptedAgent):
    """Uniform over the admissible actions of the current turn, seeded per episode."""

    name = "random"

    def reset(self, env: TextEnv, *, seed: int | None = None) -> None:
        super().reset(env, seed=seed)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: str, info: dict[str, Any]) -> str:
        choices = info.get("admissible_actions") or FALLBACK_ACTIONS
        return str(choices[int(self.rng.integers(len(choices)))])


class ExpertAgent(ScriptedAgent):
    """Follows the env's own expert (``env.expert_action()``)."""

    name = "expert"

    def act(self, obs: str, info: dict[str, Any]) -> str:
        action = self.env.expert_action()
        if action is None:
            raise ValueError(f"{type(self.env).__name__} has no expert action for task {info.get('task_id')!r}")
        return action


class OracleAgent(ScriptedAgent):
    """Follows the env's oracle (``env.oracle_action()``): a plan on the full state, where an env has one."""

    name = "oracle"

    def act(self, obs: str, info: dict[str, Any]) -> str:
        oracle = getattr(self.env, "oracle_action", None)
        if oracle is None:
            raise ValueError(f"{type(self.env).__name__} has no oracle; use the 'expert' agent")
        action = oracle()
        if action is None:
            raise ValueError(f"{type(self.env).__name__} found no plan for task {info.get('task_id')!r}")
        return action


SCRIPTED_AGENTS: dict[str, type[ScriptedAgent]] = {
    cls.name: cls for cls in (RandomAgent, ExpertAgent, OracleAgent)
}


def make_scripted_agent(name: str) -> ScriptedAgent:
    try:
        return SCRIPTED_AGENTS[name]()
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; choose one of {', '.join(SCRIPTED_AGENTS)}") from None
