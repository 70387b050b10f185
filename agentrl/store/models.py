"""SQLAlchemy 2.x models: runs, episodes, steps (one row per agent turn).

The Alembic migrations in ``migrations/versions`` are the schema's history; these models are its
current state, and a test checks that the two agree. A new store is created from these models and
stamped with :data:`SCHEMA_HEAD`; an existing one must carry a revision in :data:`SCHEMA_REVISIONS`.

Column conventions: times are POSIX seconds (``Double``, exact round trip of ``time.time()``);
token arrays are binary blobs (see :mod:`agentrl.store.codec`); ``info``/``meta``/``config`` are
JSON text; free text goes through :class:`SafeText` so that any Python string round-trips.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from agentrl.store.codec import escape_text, unescape_text

#: Alembic revisions this version of agentrl knows, oldest first; the last one is the current schema.
SCHEMA_REVISIONS = ("0001", "0002", "0003", "0004")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]


class SafeText(TypeDecorator[str]):
    """Text that stores any Python string, NUL and lone surrogates included (escaped when present)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return escape_text(value)

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        return unescape_text(value)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """A training or evaluation run: the unit readers select by and the CLI lists.

    ``config`` is the run's resolved configuration (every default and override applied).
    """

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="eval")  # eval | train | rollout | sft ...
    env_id: Mapped[str | None] = mapped_column(String(200))
    config: Mapped[str | None] = mapped_column(Text)  # JSON
    agentrl_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Double)
    # Added in 0004: where the run stands and the code that made it. NULL status: a run from before 0004.
    status: Mapped[str | None] = mapped_column(String(16))  # running | finished | interrupted | failed
    git_sha: Mapped[str | None] = mapped_column(String(64))  # agentrl's commit (``-dirty`` when changed), if known
    finished_at: Mapped[float | None] = mapped_column(Double)  # when it last stopped (finished, interrupted, failed)


class EpisodeRow(Base):
    """One episode; written in the same transaction as all of its steps."""

    __tablename__ = "episodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    env_id: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str] = mapped_column(SafeText)
    split: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    group_id: Mapped[str | None] = mapped_column(SafeText)
    agent: Mapped[str] = mapped_column(SafeText)
    policy_version: Mapped[int | None] = mapped_column(Integer)  # as given by the producer
    instruction: Mapped[str | None] = mapped_column(SafeText)
    first_observation: Mapped[str] = mapped_column(SafeText)
    won: Mapped[bool] = mapped_column(Boolean)
    progress: Mapped[float] = mapped_column(Double)
    episode_return: Mapped[float] = mapped_column(Double)
    turns: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(SafeText)
    started_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    meta: Mapped[str | None] = mapped_column(Text)  # JSON
    # Added in 0002: the range of weight versions over the episode and its turns (staleness
    # filters select on it), and when the store received the episode.
    policy_version_min: Mapped[int | None] = mapped_column(Integer)
    policy_version_max: Mapped[int | None] = mapped_column(Integer)
    written_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        Index("ix_episodes_run_id", "run_id"),
        Index("ix_episodes_run_policy", "run_id", "policy_version_min", "policy_version_max"),
    )


class StepRow(Base):
    """One agent turn (its text side); ``(episode_id, turn)`` is the key, turns are numbered 0..turns-1."""

    __tablename__ = "steps"

    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    turn: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation: Mapped[str] = mapped_column(SafeText)
    action: Mapped[str] = mapped_column(SafeText)
    reward: Mapped[float] = mapped_column(Double)
    terminated: Mapped[bool] = mapped_column(Boolean)
    truncated: Mapped[bool] = mapped_column(Boolean)
    info: Mapped[str | None] = mapped_column(Text)  # JSON
    env_seconds: Mapped[float] = mapped_column(Double)
    generation_seconds: Mapped[float] = mapped_column(Double)
    policy_version: Mapped[int | None] = mapped_column(Integer)


class TranscriptRow(Base):
    """One token transcript of an episode (added in 0003); ``(episode_id, position)`` is the key.

    Per-token arrays are blobs (:mod:`agentrl.store.codec`). ``ids``, ``turns`` and ``sampled`` hold
    every token; ``loss_mask``, ``logprobs``, ``entropies`` and ``versions`` hold the *sampled* tokens
    only (at prompt tokens they are 0, 0.0, 0.0 and -1 by definition), so prompt text costs no float
    columns. ``extras`` (JSON, positions as keys) and ``sampling`` (JSON) as in the transcript.
    """

    __tablename__ = "transcripts"

    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    ids: Mapped[bytes] = mapped_column(LargeBinary)
    turns: Mapped[bytes] = mapped_column(LargeBinary)
    sampled: Mapped[bytes] = mapped_column(LargeBinary)
    loss_mask: Mapped[bytes] = mapped_column(LargeBinary)
    logprobs: Mapped[bytes | None] = mapped_column(LargeBinary)
    entropies: Mapped[bytes | None] = mapped_column(LargeBinary)
    versions: Mapped[bytes] = mapped_column(LargeBinary)
    extras: Mapped[str | None] = mapped_column(Text)  # JSON
    sampling: Mapped[str | None] = mapped_column(Text)  # JSON


runs_table = Run.__table__
episodes_table = EpisodeRow.__table__
steps_table = StepRow.__table__
transcripts_table = TranscriptRow.__table__
