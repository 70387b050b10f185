"""Evaluate an agent (scripted or a model) on a fixed task panel and summarise the outcome.

The panel is the first ``episodes`` task ids of ``env.task_ids(split)`` (:func:`eval_panel`: taken
round-robin over the split's task types where the env has them, so ``--episodes 30`` on ScienceWorld
is one variation of each of its 30 tasks rather than 30 variations of ``boil``); each task is run
``group_size`` times with seeds ``seed, seed + 1, ...`` so a report can be reproduced exactly.

A report (:meth:`EvalReport.to_json`) carries what is needed to read and reproduce it: every
episode's observations and actions, ``max_turns``, the agentrl git SHA, results per task type, and
whether the env ran its real benchmark data (WebShop's built-in catalog is not the benchmark:
``info["benchmark"]`` is False there, and the report says so).
Episodes are played by the one episode runner (:class:`~agentrl.rollout.collector.Collector`), so
model episodes carry their exact transcripts and go to the store like training rollouts. An episode
that fails (the env or the agent raises) is recorded with its error and counts as lost; it never
stops the evaluation.
"""

from __future__ import annotations

import copy
import itertools
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


def eval_panel(env: TextEnv, split: str, episodes: int | None = None) -> list[str]:
    """The first ``episodes`` tasks of ``split`` (all when ``None``), spread over the env's task types.

    Benchmarks list their panels grouped by task type (ALFWorld's folders, ScienceWorld's tasks), so
    the first N tasks would be N of one type. Where :meth:`TextEnv.task_type` knows the types, the
    panel is taken round-robin over them (first task of each type, then the second, ...), each type's
    tasks in their panel order; otherwise it is the panel's own order.
    """
    panel = env.task_ids(split)
    if episodes is None or episodes >= len(panel):
        return panel
    by_type: dict[str | None, list[str]] = {}
    for task in panel:
        by_type.setdefault(env.task_type(task), []).append(task)
    if len(by_type) <= 1:
        return panel[:episodes]
    spread = [task for round_ in itertools.zip_longest(*by_type.values()) for task in round_ if task is not None]
    return spread[:episodes]


def _rates(episodes: list[Episode]) -> dict[str, Any]:
    n = len(episodes) or 1
    turns = sum(ep.turns for ep in episodes)
    return {
        "episodes": len(episodes),
        "success_rate": sum(ep.won for ep in episodes) / n,
        "mean_progress": sum(ep.progress for ep in episodes) / n,
        "mean_return": sum(ep.episode_return for ep in episodes) / n,
        "mean_turns": turns / n,
        "invalid_action_rate": sum(ep.invalid_actions for ep in episodes) / max(1, turns),
    }


def task_type(episode: Episode) -> str | None:
    """The task type an episode's env reported at reset (``info["task_type"]``), if any."""
    value = episode.meta.get("reset_info", {}).get("task_type")
    return None if value is None else str(value)


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
    max_turns: int | None = None  # the turn budget of every episode

    @property
    def benchmark(self) -> bool | None:
        """False when an episode ran on data that is not the benchmark's (``info["benchmark"]``), else
        True when the env says so, None when it says nothing."""
        flags = [ep.meta.get("reset_info", {}).get("benchmark") for ep in self.episodes]
        flags = [bool(f) for f in flags if f is not None]
        return None if not flags else all(flags)

    def by_task_type(self) -> dict[str, dict[str, Any]]:
        """The summary rates per task type (empty when the env reports none), types in panel order."""
        groups: dict[str, list[Episode]] = {}
        for ep in self.episodes:
            kind = task_type(ep)
            if kind is not None:
                groups.setdefault(kind, []).append(ep)
        return {kind: _rates(group) for kind, group in groups.items()}

    def summary(self) -> dict[str, Any]:
        by_task: dict[str, list[bool]] = {}
        for ep in self.episodes:
            by_task.setdefault(ep.task_id, []).append(ep.won)
        rates = _rates(self.episodes)
        return {
            "episodes": rates["episodes"],
            "success_rate": rates["success_rate"],
            "pass_at_group": sum(any(w) for w in by_task.values()) / (len(by_task) or 1),
            "mean_progress": rates["mean_progress"],
            "mean_turns": rates["mean_turns"],
            "mean_return": rates["mean_return"],
            "invalid_action_rate": rates["invalid_action_rate"],
            "errors": sum(ep.error is not None for ep in self.episodes),
            "wall_seconds": self.seconds,
        }

    def to_json(self) -> dict[str, Any]:
        from agentrl import __version__
        from agentrl.provenance import git_sha

        return {
            "env_id": self.env_id,
            "agent": self.agent,
            "split": self.split,
            "seed": self.seed,
            "group_size": self.group_size,
            "max_turns": self.max_turns,
            "panel": self.panel,
            "env_kwargs": self.env_kwargs,
            "benchmark": self.benchmark,
            "agentrl_version": __version__,
            "git_sha": git_sha(),
            "python": platform.python_version(),
            "summary": self.summary(),
            "by_task_type": self.by_task_type(),
            "episodes": [
                {
                    "task_id": ep.task_id,
                    "task_type": task_type(ep),
                    "seed": ep.seed,
                    "won": ep.won,
                    "progress": ep.progress,
                    "turns": ep.turns,
                    "return": ep.episode_return,
                    "truncated": ep.truncated,
                    "error": ep.error,
                    "instruction": ep.instruction,
                    "actions": [s.action for s in ep.steps],
                    "steps": [
                        {"observation": s.observation, "action": s.action, "reward": s.reward,
                         "invalid_action": bool(s.info.get("invalid_action"))}
                        for s in ep.steps
                    ],  # fmt: skip
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
    max_turns: int | None = None,
) -> EvalReport:
    """Play ``group_size`` episodes of every task of ``panel`` with ``collector``; episodes are
    reported in panel order, then seed. ``max_turns`` is the episodes' turn budget, for the report."""
    start = time.perf_counter()
    episodes = collector.run(panel, group_size=group_size, seed=seed)
    order = {task: index for index, task in enumerate(panel)}
    episodes.sort(key=lambda ep: (order.get(ep.task_id, 0), ep.seed or 0))
    return EvalReport(
        collector.env_id, collector.actor.name, split, seed, group_size, panel, episodes,
        time.perf_counter() - start, dict(env_kwargs or {}), max_turns,
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

    Episodes run one after another on ``env`` (which stays open: it is the caller's). The panel is
    :func:`eval_panel`'s (spread over task types when cut short).
    """
    panel = eval_panel(env, split, episodes)
    runner = Collector(lambda: env, scripted_actor(agent), env_id=env_id, max_parallel=1, split=split, on_episode=on_episode)
    return run_panel(runner, split=split, panel=panel, group_size=group_size, seed=seed, env_kwargs=env_kwargs,
                     max_turns=env.max_turns)  # fmt: skip


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
    max_turns: int | None = None,
) -> tuple[EvalReport, dict[str, Any]]:
    """Run a model on the panel; returns the report and model details (tokens, timings) for the JSON report.

    ``max_turns`` is the turn budget the envs from ``env_fn`` were made with (recorded in the report).
    """
    actor = ModelActor(policy, agent, sampling)
    with Collector(env_fn, actor, env_id=env_id, max_parallel=max_parallel, split=split, on_episode=on_episode) as runner:
        report = run_panel(runner, split=split, panel=panel, group_size=group_size, seed=seed, env_kwargs=env_kwargs,
                           max_turns=max_turns)  # fmt: skip
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
