"""Evaluate a model agent on a fixed task panel (``agentrl eval ENV --model ...``).

Same panel and seed rules as scripted evaluation (:mod:`agentrl.evaluation`): the first
``episodes`` tasks of the split, each played ``group_size`` times with seeds ``seed .. seed+G-1``.
Episodes run through the :class:`~agentrl.rollout.collector.Collector`, so they carry exact token
ids and are written to the store like training rollouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agentrl.agents.llm import LLMAgent
from agentrl.core import TextEnv
from agentrl.evaluation import EvalReport
from agentrl.policies.base import Policy, SamplingParams
from agentrl.rollout.collector import Collector
from agentrl.trajectory import Episode


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
    """Run the panel; returns the report and model details (tokens, timings) for the JSON report."""
    start = time.perf_counter()
    with Collector(
        env_fn, policy, agent, env_id=env_id, sampling=sampling, max_parallel=max_parallel, split=split, on_episode=on_episode
    ) as collector:
        episodes = collector.run(panel, group_size=group_size, seed=seed)
        stats = dict(collector.stats)
    order = {task: index for index, task in enumerate(panel)}
    episodes.sort(key=lambda ep: (order.get(ep.task_id, 0), ep.seed or 0))
    report = EvalReport(
        env_id, getattr(policy, "name", "model"), split, seed, group_size, panel, episodes,
        time.perf_counter() - start, dict(env_kwargs or {}),
    )
    details = {
        "model": getattr(policy, "name", None),
        "policy_version": getattr(policy, "version", None),
        "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(sampling).items()},
        "layout": agent.layout,
        "history": agent.history,
        "max_parallel": max_parallel,
        "tokens_generated": stats["tokens_generated"],
        "generate_seconds": stats["generate_seconds"],
        "env_seconds": stats["env_seconds"],
        "truncated_by_context": sum(ep.meta.get("truncated_reason") == "context_length" for ep in episodes),
        "parse_errors": sum(bool(s.info.get("parse_error")) for ep in episodes for s in ep.steps),
    }
    return report, details
