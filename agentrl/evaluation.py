"""Evaluate an agent (scripted or a model) on a fixed task panel and summarise the outcome.

The panel is the first ``episodes`` task ids of ``env.task_ids(split)``, in order; each task is run
``group_size`` times with seeds ``seed, seed + 1, ...`` so a report can be reproduced exactly.
Episodes are played by the one episode runner (:class:`~agentrl.rollout.collector.Collector`), so
model episodes carry their exact transcripts and go to the store like training rollouts. An episode
that fails (the env or the agent raises) is recorded with its error and counts as lost; it never
stops the evaluation.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrl.agents.llm import LLMAgent
from agentrl.agents.scripted import ScriptedAgent
from agentrl.core import TextEnv
from agentrl.policies.base import Policy, SamplingParams
from agentrl.rollout.actors import ModelActor, ScriptedActor
from agentrl.rollout.collector import Collector
from agentrl.trajectory import Episode


def scripted_actor(agent: ScriptedAgent) -> ScriptedActor:
    """An actor playing a copy of ``agent`` per episode (scripted agents keep per-episode state)."""
    return ScriptedActor(lambda: copy.copy(agent), name=agent.name)


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
    episode = Collector(lambda: env, scripted_actor(agent), env_id=env_id, max_parallel=1, split=split).run([task_id], seed=seed)[0]
    if group_id is not None:
        episode.group_id = group_id
    return episode


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


def run_panel(
    collector: Collector,
    *,
    split: str,
    panel: list[str],
    group_size: int = 1,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalReport:
    """Play ``group_size`` episodes of every task of ``panel`` with ``collector``; episodes are
    reported in panel order, then seed."""
    start = time.perf_counter()
    episodes = collector.run(panel, group_size=group_size, seed=seed)
    order = {task: index for index, task in enumerate(panel)}
    episodes.sort(key=lambda ep: (order.get(ep.task_id, 0), ep.seed or 0))
    return EvalReport(
        collector.env_id, collector.actor.name, split, seed, group_size, panel, episodes,
        time.perf_counter() - start, dict(env_kwargs or {}),
    )  # fmt: skip


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
    """Run a scripted ``agent`` on the first ``episodes`` tasks of the ``split`` panel (all of it when ``None``).

    Episodes run one after another on ``env`` (which stays open: it is the caller's).
    """
    panel = env.task_ids(split)
    if episodes is not None:
        panel = panel[:episodes]
    runner = Collector(lambda: env, scripted_actor(agent), env_id=env_id, max_parallel=1, split=split, on_episode=on_episode)
    return run_panel(runner, split=split, panel=panel, group_size=group_size, seed=seed, env_kwargs=env_kwargs)


def evaluate_model(
    env_fn: Callable[[], TextEnv],
    policy: Policy,
    agent: LLMAgent,
    *,
    env_id: str,
    split: str,
    panel: list[str],
    sampling: SamplingParams,
    group_size: int = 1,
    seed: int = 0,
    max_parallel: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    on_episode: Callable[[Episode], None] | None = None,
) -> tuple[EvalReport, dict[str, Any]]:
    """Run a model on the panel; returns the report and model details (tokens, timings) for the JSON report."""
    actor = ModelActor(policy, agent, sampling)
    with Collector(env_fn, actor, env_id=env_id, max_parallel=max_parallel, split=split, on_episode=on_episode) as runner:
        report = run_panel(runner, split=split, panel=panel, group_size=group_size, seed=seed, env_kwargs=env_kwargs)
        env_seconds = runner.stats["env_seconds"]
    episodes = report.episodes
    details = {
        "model": policy.name,
        "policy_version": policy.version,
        "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(sampling).items()},
        "layout": agent.layout,
        "history": agent.history,
        "max_parallel": max_parallel,
        "tokens_generated": actor.stats["tokens_generated"],
        "generate_seconds": actor.stats["generate_seconds"],
        "env_seconds": env_seconds,
        "truncated_by_context": sum(ep.meta.get("truncated_reason") == "context_length" for ep in episodes),
        "parse_errors": sum(bool(s.info.get("parse_error")) for ep in episodes for s in ep.steps),
    }
    return report, details
