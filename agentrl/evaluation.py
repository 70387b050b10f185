"""Evaluate a scripted agent on a fixed task panel and summarise the outcome.

The panel is the first ``episodes`` task ids of ``env.task_ids(split)``, in order; each task is run
``group_size`` times with seeds ``seed, seed + 1, ...`` so a report can be reproduced exactly.
An episode that fails (the env or the agent raises) is recorded with its error and counts as lost;
it never stops the evaluation.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrl.agents.scripted import ScriptedAgent
from agentrl.core import TextEnv
from agentrl.trajectory import Episode, Step


def run_episode(
    env: TextEnv,
    agent: ScriptedAgent,
    *,
    env_id: str,
    task_id: str,
    seed: int,
    group_id: str | None = None,
    split: str | None = None,
) -> Episode:
    """Play one episode to its end; exceptions become ``episode.error``, never propagate."""
    episode = Episode(env_id=env_id, task_id=task_id, split=split, seed=seed, group_id=group_id, agent=agent.name)
    try:
        obs, info = env.reset(seed=seed, options={"task": task_id})
        episode.instruction = info.get("instruction")
        episode.first_observation = obs
        episode.meta["reset_info"] = _jsonable(info)
        agent.reset(env, seed=seed)
        done = False
        while not done:
            t0 = time.perf_counter()
            action = agent.act(obs, info)
            t1 = time.perf_counter()
            next_obs, reward, terminated, truncated, info = env.step(action)
            t2 = time.perf_counter()
            episode.steps.append(
                Step(obs, action, reward, terminated, truncated, _jsonable(info), t2 - t1, t1 - t0)
            )
            obs, done = next_obs, terminated or truncated
            episode.won, episode.progress = info["won"], info["progress"]
    except Exception as exc:  # a failing episode never kills a run
        episode.error = f"{type(exc).__name__}: {exc}"
        episode.won = False
    episode.finished_at = time.time()
    return episode


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, str | int | float | bool | type(None)):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = [v if isinstance(v, str | int | float | bool | type(None)) else str(v) for v in value]
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        else:
            out[key] = str(value)
    return out


@dataclass
class EvalReport:
    env_id: str
    agent: str
    split: str
    seed: int
    group_size: int
    panel: list[str]
    episodes: list[Episode]
    seconds: float
    env_kwargs: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        n = len(self.episodes) or 1
        by_task: dict[str, list[bool]] = {}
        for ep in self.episodes:
            by_task.setdefault(ep.task_id, []).append(ep.won)
        return {
            "episodes": len(self.episodes),
            "success_rate": sum(ep.won for ep in self.episodes) / n,
            "pass_at_group": sum(any(w) for w in by_task.values()) / (len(by_task) or 1),
            "mean_progress": sum(ep.progress for ep in self.episodes) / n,
            "mean_turns": sum(ep.turns for ep in self.episodes) / n,
            "mean_return": sum(ep.episode_return for ep in self.episodes) / n,
            "invalid_action_rate": sum(ep.invalid_actions for ep in self.episodes)
            / max(1, sum(ep.turns for ep in self.episodes)),
            "errors": sum(ep.error is not None for ep in self.episodes),
            "wall_seconds": self.seconds,
        }

    def to_json(self) -> dict[str, Any]:
        from agentrl import __version__

        return {
            "env_id": self.env_id,
            "agent": self.agent,
            "split": self.split,
            "seed": self.seed,
            "group_size": self.group_size,
            "panel": self.panel,
            "env_kwargs": self.env_kwargs,
            "agentrl_version": __version__,
            "python": platform.python_version(),
            "summary": self.summary(),
            "episodes": [
                {
                    "task_id": ep.task_id,
                    "seed": ep.seed,
                    "won": ep.won,
                    "progress": ep.progress,
                    "turns": ep.turns,
                    "return": ep.episode_return,
                    "error": ep.error,
                    "actions": [s.action for s in ep.steps],
                }
                for ep in self.episodes
            ],
        }


def evaluate(
    env: TextEnv,
    agent: ScriptedAgent,
    *,
    env_id: str,
    split: str,
    episodes: int | None = None,
    group_size: int = 1,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    on_episode: Callable[[Episode], None] | None = None,
) -> EvalReport:
    """Run ``agent`` on the first ``episodes`` tasks of the ``split`` panel (all of it when ``None``)."""
    panel = env.task_ids(split)
    if episodes is not None:
        panel = panel[:episodes]
    start = time.perf_counter()
    results: list[Episode] = []
    for index, task_id in enumerate(panel):
        for member in range(group_size):
            episode = run_episode(
                env,
                agent,
                env_id=env_id,
                task_id=task_id,
                seed=seed + member,
                group_id=f"{task_id}#{index}",
                split=split,
            )
            results.append(episode)
            if on_episode is not None:
                on_episode(episode)
    return EvalReport(
        env_id, agent.name, split, seed, group_size, panel, results, time.perf_counter() - start, dict(env_kwargs or {})
    )
