"""Runs as the store reports them: status, provenance and totals, demonstrations counted apart.

The query behind :meth:`Store.runs <agentrl.store.store.Store.runs>` and ``agentrl store ls``: one row
per run with its episode totals, and the same totals over the run's demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, func, select

from agentrl.store import codec
from agentrl.store.models import episodes_table, runs_table

#: Run statuses (``runs.status``); NULL is a run written before schema 0004.
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
#: Scripted agents whose episodes in a training run are demonstrations (supervised warm-up), not rollouts.
DEMONSTRATION_AGENTS = ("expert", "oracle")


@dataclass
class RunInfo:
    """A run and the totals of what was written to it.

    ``episodes``/``won``/``mean_return`` count every episode. In a training run, the episodes of a
    scripted expert or oracle (:data:`DEMONSTRATION_AGENTS`) are demonstrations for a supervised
    warm-up; ``rollout_success`` and ``rollout_mean_return`` leave them out.
    """

    id: int
    name: str
    kind: str
    env_id: str | None
    config: dict[str, Any] | None
    agentrl_version: str
    created_at: float
    episodes: int
    steps: int
    won: int
    mean_return: float | None
    status: str | None = None
    git_sha: str | None = None
    finished_at: float | None = None
    demonstrations: int = 0
    demonstrations_won: int = 0
    demonstrations_return: float = 0.0  # summed

    @property
    def rollouts(self) -> int:
        return self.episodes - self.demonstrations

    @property
    def rollout_success(self) -> float | None:
        return (self.won - self.demonstrations_won) / self.rollouts if self.rollouts else None

    @property
    def rollout_mean_return(self) -> float | None:
        if not self.rollouts or self.mean_return is None:
            return None
        return (self.mean_return * self.episodes - self.demonstrations_return) / self.rollouts


def check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")


def run_totals_query() -> Select[Any]:
    """Every run (oldest first) with its totals: all episodes, and its demonstrations apart."""
    e = episodes_table.c
    demo = (runs_table.c.kind != "eval") & e.agent.in_(DEMONSTRATION_AGENTS)
    return (
        select(
            runs_table,
            func.count(e.id).label("n_episodes"),
            func.coalesce(func.sum(e.turns), 0).label("n_steps"),
            func.coalesce(func.sum(case((e.won, 1), else_=0)), 0).label("n_won"),
            func.avg(e.episode_return).label("mean_return"),
            func.coalesce(func.sum(case((demo, 1), else_=0)), 0).label("n_demo"),
            func.coalesce(func.sum(case((demo & e.won, 1), else_=0)), 0).label("n_demo_won"),
            func.coalesce(func.sum(case((demo, e.episode_return), else_=0.0)), 0.0).label("demo_return"),
        )
        .select_from(runs_table.outerjoin(episodes_table, e.run_id == runs_table.c.id))
        .group_by(*runs_table.c)
        .order_by(runs_table.c.id)
    )


def run_info(r: Any) -> RunInfo:
    """A :func:`run_totals_query` row as a :class:`RunInfo`."""
    return RunInfo(
        id=r.id, name=r.name, kind=r.kind, env_id=r.env_id, config=codec.load_json(r.config),
        agentrl_version=r.agentrl_version, created_at=r.created_at, episodes=int(r.n_episodes),
        steps=int(r.n_steps), won=int(r.n_won), mean_return=None if r.mean_return is None else float(r.mean_return),
        status=r.status, git_sha=r.git_sha, finished_at=r.finished_at, demonstrations=int(r.n_demo),
        demonstrations_won=int(r.n_demo_won), demonstrations_return=float(r.demo_return),
    )  # fmt: skip


def status_after(exc: BaseException | None) -> str:
    """The status a run ends with when its code exited with ``exc`` (``None``: normally).

    Ctrl-C, SIGTERM turned into ``KeyboardInterrupt`` and the CLI's exit 130 are ``interrupted`` (the
    run can be resumed); any other exception is ``failed``.
    """
    if exc is None:
        return "finished"
    if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 130):
        return "interrupted"
    return "failed"
