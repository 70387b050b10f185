"""The :class:`Store`: write episodes atomically, read them back exactly, select them for training.

Writes go through SQLAlchemy Core (one ``INSERT`` for the episode row, one ``executemany`` each for
its steps and its transcripts, in one transaction), which is what lets a store keep up with plain
JSONL appends; the ORM classes in :mod:`agentrl.store.models` define the schema. Everything a write
needs (token blobs, JSON, checks) is computed before the transaction opens, so a bad episode never
leaves half a row. Transcripts are stored as they are: storage is linear in the number of turns.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, and_, bindparam, func, insert, select, text, true
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from agentrl.store import codec
from agentrl.store.engine import (
    claim_new_sqlite_file,
    database_error,
    describe,
    discard_new_sqlite_file,
    ensure_schema,
    make_engine,
    parse_url,
    sqlite_path,
)
from agentrl.store.errors import StoreError
from agentrl.store.models import episodes_table, runs_table, steps_table, transcripts_table
from agentrl.store.runs import RunInfo, check_status, run_info, run_totals_query
from agentrl.trajectory import Episode, Step, Transcript

DEFAULT_URL = "sqlite:///agentrl.db"
_PG_WRITE_ORDER_LOCK = 0x61677772  # advisory lock key ordering episode commits on PostgreSQL ("agwr")
_LOCK_RETRIES = 8  # SQLite: attempts per write when another writer holds the lock past the busy timeout


def open_store(url: str = DEFAULT_URL, *, create: bool = True) -> Store:
    """Open (and, with ``create``, make) the store at ``url``.

    ``url`` is ``sqlite:///path.db`` (or a bare path), ``sqlite://`` for a private in-memory store, or
    ``postgresql+psycopg://user@host:port/db``. Raises :class:`StoreError` (one line, with a hint)
    for an unreachable or corrupt database or a schema this agentrl cannot read; in those cases
    nothing is written.
    """
    parsed = parse_url(url)
    engine = make_engine(parsed, create=create)
    path = sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
    created = create and path is not None and claim_new_sqlite_file(path)
    try:
        try:
            ensure_schema(engine, parsed, create)
        except (DBAPIError, SQLAlchemyError) as exc:
            raise database_error(parsed, exc) from exc
    except BaseException:
        engine.dispose()
        if created:  # a store that could not be made (a full disk) leaves no file behind
            discard_new_sqlite_file(path)  # type: ignore[arg-type]
        raise
    return Store(engine, parsed)


class Store:
    """A trajectory store; make one with :func:`open_store`.

    Thread-safe (connections come from a pool). A store opened before ``fork`` may be used in the
    children: each child starts with fresh connections. Several processes and machines may write to
    one store at once (PostgreSQL; SQLite on one machine, writers queue on its lock).
    """

    def __init__(self, engine: Engine, url: URL):
        self.engine = engine
        self.url = url
        self.backend = url.get_backend_name()
        # Writes skip SQLAlchemy's per-row parameter processing: the INSERTs are compiled once for
        # this dialect and run with the driver's executemany (text is escaped by _episode_values and
        # _step_values instead of by SafeText). This is what keeps the store near JSONL speed.
        dialect = engine.dialect
        self._positional = bool(dialect.positional)
        self._episode_sql, self._episode_order = _compile_insert(dialect, episodes_table, EPISODE_COLUMNS, "id")
        self._step_sql, step_order = _compile_insert(dialect, steps_table, STEP_COLUMNS)
        self._transcript_sql, transcript_order = _compile_insert(dialect, transcripts_table, TRANSCRIPT_COLUMNS)
        if self._positional and tuple(step_order) != STEP_COLUMNS:
            raise RuntimeError(f"unexpected parameter order for steps: {step_order}")
        if self._positional and tuple(transcript_order) != TRANSCRIPT_COLUMNS:
            raise RuntimeError(f"unexpected parameter order for transcripts: {transcript_order}")

    _order_lock_sql = f"SELECT pg_advisory_xact_lock({_PG_WRITE_ORDER_LOCK})"

    def _episode_params(self, values: dict[str, Any]) -> Any:
        return tuple(values[name] for name in self._episode_order) if self._positional else values

    def __repr__(self) -> str:
        return f"Store({describe(self.url)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every connection. Safe to call twice."""
        self.engine.dispose()

    # --- writing ---------------------------------------------------------------------------------
    def _transaction(self, work: Any) -> Any:
        """Run ``work(conn)`` in one transaction; retry when SQLite reports a held lock."""
        for attempt in range(_LOCK_RETRIES):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except OperationalError as exc:
                locked = "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower()
                if not (self.backend == "sqlite" and locked) or attempt == _LOCK_RETRIES - 1:
                    raise StoreError(f"write to {describe(self.url)} failed: {' '.join(str(exc.orig).split())}") from exc
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
            except DBAPIError as exc:
                raise StoreError(f"write to {describe(self.url)} failed: {' '.join(str(exc.orig).split())}") from exc
        raise AssertionError("unreachable")

    def start_run(
        self,
        name: str,
        *,
        env_id: str | None = None,
        config: dict[str, Any] | None = None,
        kind: str = "eval",
        status: str = "running",
        git_sha: str | None = None,
    ) -> int:
        """Create a run (a training or evaluation session) and return its id.

        ``config`` is the run's resolved configuration. The run starts ``running``: whoever runs it
        sets its outcome with :meth:`set_run_status`. ``git_sha`` defaults to agentrl's own commit.
        """
        from agentrl import __version__
        from agentrl.provenance import git_sha as current_sha

        check_status(status)

        try:
            config_json = codec.dump_json(config, "run config")
        except codec.CodecError as exc:
            raise StoreError(str(exc)) from None
        values = {
            "name": name,
            "kind": kind,
            "env_id": env_id,
            "config": config_json,
            "agentrl_version": __version__,
            "created_at": time.time(),
            "status": status,
            "git_sha": git_sha if git_sha is not None else current_sha(),
        }
        return self._transaction(
            lambda conn: conn.execute(insert(runs_table).returning(runs_table.c.id), values).scalar_one()
        )

    def set_run_status(self, run_id: int, status: str) -> None:
        """Record where a run stands; any status but ``running`` also stamps ``finished_at``."""
        check_status(status)
        values = {"status": status, "finished_at": None if status == "running" else time.time()}
        self._transaction(lambda conn: conn.execute(runs_table.update().where(runs_table.c.id == run_id).values(values)))

    def delete_run(self, run_id: int) -> None:
        """Delete a run and everything written to it (its episodes, steps and transcripts)."""
        self._transaction(lambda conn: conn.execute(runs_table.delete().where(runs_table.c.id == run_id)))

    def delete_episodes_after(self, run_id: int, episode_id: int) -> int:
        """Delete the run's episodes written after ``episode_id`` (a resumed run drops what its last
        checkpoint did not see); returns how many went."""
        e = episodes_table.c
        return self._transaction(
            lambda conn: conn.execute(episodes_table.delete().where((e.run_id == run_id) & (e.id > episode_id))).rowcount
        )

    def last_episode_id(self, run_id: int) -> int:
        """The id of the run's newest episode (0 when it has none)."""
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(episodes_table.c.id)).where(episodes_table.c.run_id == run_id)).scalar()
        return int(newest or 0)

    def write_episode(self, run_id: int, episode: Episode) -> int:
        """Write one episode and all its steps atomically; returns the episode id."""
        return self.write_episodes(run_id, [episode])[0]

    def write_episodes(self, run_id: int, episodes: Sequence[Episode]) -> list[int]:
        """Write several episodes in one transaction (all or none); returns their ids in order."""
        now = time.time()
        episode_rows = []
        step_rows = []
        transcript_rows = []
        for index, episode in enumerate(episodes):
            episode_rows.append(_episode_values(run_id, episode, now))
            step_rows.append(_step_values(episode, index))
            transcript_rows.append(_transcript_values(episode, index))
        if not episode_rows:
            return []

        def work(conn: Any) -> list[int]:
            if self.backend == "postgresql":
                # Episode ids must become visible in id order, or a reader following the store with
                # ``since_id`` could pass an id whose transaction commits later and miss it forever.
                # PostgreSQL sequences hand out ids before commit, so concurrent writers serialise
                # here, from their first insert to commit (a millisecond or two; all encoding is
                # done before). SQLite's single write lock gives the same order by itself.
                conn.exec_driver_sql(self._order_lock_sql)
            ids = []
            flat: list[tuple[Any, ...]] = []
            flat_transcripts: list[tuple[Any, ...]] = []
            for values, rows, transcripts in zip(episode_rows, step_rows, transcript_rows, strict=True):
                episode_id = conn.exec_driver_sql(self._episode_sql, self._episode_params(values)).scalar_one()
                ids.append(episode_id)
                flat.extend((episode_id, *row) for row in rows)
                flat_transcripts.extend((episode_id, *row) for row in transcripts)
            for sql, columns, batch in (
                (self._step_sql, STEP_COLUMNS, flat), (self._transcript_sql, TRANSCRIPT_COLUMNS, flat_transcripts)
            ):
                if batch:
                    params = batch if self._positional else [dict(zip(columns, r, strict=True)) for r in batch]
                    conn.exec_driver_sql(sql, params)
            return ids

        return self._transaction(work)

    # --- reading ---------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """Every run with its episode/step totals, oldest first."""
        return self._run_infos(None)

    def get_run(self, run: int | str) -> RunInfo:
        """A run by id, or by name (the latest run of that name)."""
        if isinstance(run, int) or (isinstance(run, str) and run.isdigit()):
            found = self._run_infos(runs_table.c.id == int(run))
        else:
            found = self._run_infos(runs_table.c.name == run)[-1:]
        if not found:
            raise StoreError(f"no run {run!r} in {describe(self.url)}", hint="list runs with: agentrl store ls")
        return found[0]

    def _run_infos(self, where: ColumnElement[bool] | None) -> list[RunInfo]:
        statement = run_totals_query()
        if where is not None:
            statement = statement.where(where)
        with self.engine.connect() as conn:
            return [run_info(row) for row in conn.execute(statement).all()]

    def read_episodes(
        self,
        run_id: int | None = None,
        *,
        policy_versions: tuple[int, int] | None = None,
        split: str | None = None,
        won: bool | None = None,
        group_id: str | None = None,
        agent: str | None = None,
        task_id: str | None = None,
        env_id: str | None = None,
        since_id: int | None = None,
        limit: int | None = None,
    ) -> list[Episode]:
        """Episodes matching every given filter, in write order, every field exactly as written.

        ``policy_versions=(lo, hi)`` keeps episodes whose every turn was produced by a version in
        ``lo..hi`` (inclusive); for a learner at version ``v`` with ``max_staleness`` k that is
        ``(v - k, v)``. Episodes without any policy version do not match a version filter.
        ``since_id`` keeps episodes written after the episode with that id: a learner that follows
        the store passes the last id it has seen and never misses or repeats an episode, since ids
        become visible in increasing order on both backends.
        """
        filters = dict(
            policy_versions=policy_versions, split=split, won=won, group_id=group_id, agent=agent,
            task_id=task_id, env_id=env_id, since_id=since_id,
        )  # fmt: skip
        return [ep for _, ep in self.iter_episodes(run_id, limit=limit, with_ids=True, **filters)]

    def iter_episodes(
        self,
        run_id: int | None = None,
        *,
        batch_size: int = 256,
        limit: int | None = None,
        with_ids: bool = False,
        **filters: Any,
    ) -> Iterator[Any]:
        """Like :meth:`read_episodes` but streamed ``batch_size`` episodes per query.

        Yields ``Episode`` objects, or ``(episode_id, Episode)`` pairs with ``with_ids``. Each batch
        is its own short read, so a long iteration never holds a transaction open.
        """
        for chunk in self.iter_episode_chunks(run_id, batch_size=batch_size, limit=limit, **filters):
            for pair in chunk:
                yield pair if with_ids else pair[1]

    def iter_episode_chunks(
        self, run_id: int | None = None, *, batch_size: int = 256, limit: int | None = None, **filters: Any
    ) -> Iterator[list[tuple[int, Episode]]]:
        """Batches of ``(episode_id, Episode)`` in id order (keyset pagination)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        where = _episode_filter(run_id, **filters)
        last_id = filters.get("since_id")
        remaining = limit
        while remaining is None or remaining > 0:
            size = batch_size if remaining is None else min(batch_size, remaining)
            conditions = [*where, episodes_table.c.id > last_id] if last_id is not None else where
            statement = select(episodes_table).where(and_(true(), *conditions)).order_by(episodes_table.c.id).limit(size)
            with self.engine.connect() as conn:
                episode_rows = conn.execute(statement).all()
                if not episode_rows:
                    return
                ids = [row.id for row in episode_rows]
                step_rows = conn.execute(
                    select(steps_table)
                    .where(steps_table.c.episode_id.in_(ids))
                    .order_by(steps_table.c.episode_id, steps_table.c.turn)
                ).all()
                transcript_rows = conn.execute(
                    select(transcripts_table)
                    .where(transcripts_table.c.episode_id.in_(ids))
                    .order_by(transcripts_table.c.episode_id, transcripts_table.c.position)
                ).all()
            by_episode: dict[int, list[Any]] = {episode_id: [] for episode_id in ids}
            for row in step_rows:
                by_episode[row.episode_id].append(row)
            transcripts: dict[int, list[Any]] = {episode_id: [] for episode_id in ids}
            for row in transcript_rows:
                transcripts[row.episode_id].append(row)
            yield [(row.id, _episode_from_rows(row, by_episode[row.id], transcripts[row.id])) for row in episode_rows]
            last_id = ids[-1]
            if remaining is not None:
                remaining -= len(ids)

    def get_episode(self, episode_id: int) -> Episode:
        """One episode by id."""
        for chunk in self.iter_episode_chunks(None, batch_size=1, limit=1, since_id=episode_id - 1):
            if chunk[0][0] == episode_id:
                return chunk[0][1]
        raise StoreError(f"no episode {episode_id} in {describe(self.url)}")

    def episode_run(self, episode_id: int) -> int | None:
        """The run an episode belongs to (``None`` when there is no such episode)."""
        with self.engine.connect() as conn:
            return conn.execute(select(episodes_table.c.run_id).where(episodes_table.c.id == episode_id)).scalar()

    def count_episodes(self, run_id: int | None = None, **filters: Any) -> int:
        where = _episode_filter(run_id, **filters)
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(episodes_table).where(and_(true(), *where))).scalar_one()

    def check_integrity(self) -> list[str]:
        """Problems found (empty when healthy): SQLite's own integrity check, then episode completeness.

        Complete means an episode has exactly ``turns`` steps, numbered ``0..turns-1``.
        """
        problems: list[str] = []
        with self.engine.connect() as conn:
            if self.backend == "sqlite":
                result = [row[0] for row in conn.exec_driver_sql("PRAGMA integrity_check").all()]
                if result != ["ok"]:
                    problems.extend(f"sqlite: {line}" for line in result)
            s = steps_table.c
            per_episode = (
                select(
                    s.episode_id,
                    func.count().label("n"),
                    func.min(s.turn).label("first"),
                    func.max(s.turn).label("last"),
                )
                .group_by(s.episode_id)
                .subquery()
            )
            e = episodes_table.c
            bad = conn.execute(
                select(e.id, e.turns, per_episode.c.n, per_episode.c.first, per_episode.c.last)
                .select_from(episodes_table.outerjoin(per_episode, per_episode.c.episode_id == e.id))
                .where(
                    (func.coalesce(per_episode.c.n, 0) != e.turns)
                    | ((e.turns > 0) & ((per_episode.c.first != 0) | (per_episode.c.last != e.turns - 1)))
                )
            ).all()
            problems.extend(f"episode {r.id}: {r.turns} turns but steps {r.n} ({r.first}..{r.last})" for r in bad)
            orphans = conn.execute(
                select(func.count()).select_from(steps_table).where(~s.episode_id.in_(select(e.id)))
            ).scalar_one()
            if orphans:
                problems.append(f"{orphans} steps without an episode")
        return problems

    def schema_revision(self) -> str:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


STEP_COLUMNS = tuple(column.name for column in steps_table.columns)
TRANSCRIPT_COLUMNS = tuple(column.name for column in transcripts_table.columns)
EPISODE_COLUMNS = tuple(column.name for column in episodes_table.columns if column.name != "id")


def _compile_insert(dialect: Any, table: Any, columns: Sequence[str], returning: str | None = None) -> tuple[str, list[str]]:
    """SQL text of an INSERT of ``columns`` for ``dialect`` and its parameter names in order."""
    statement = insert(table).values({name: bindparam(name) for name in columns})
    if returning is not None:
        statement = statement.returning(table.c[returning])
    compiled = statement.compile(dialect=dialect)
    order = list(compiled.positiontup or []) if dialect.positional else list(columns)
    return str(compiled), order


def _episode_filter(
    run_id: int | None,
    *,
    policy_versions: tuple[int, int] | None = None,
    split: str | None = None,
    won: bool | None = None,
    group_id: str | None = None,
    agent: str | None = None,
    task_id: str | None = None,
    env_id: str | None = None,
    since_id: int | None = None,
) -> list[ColumnElement[bool]]:
    e = episodes_table.c
    where: list[ColumnElement[bool]] = []
    if run_id is not None:
        where.append(e.run_id == run_id)
    if policy_versions is not None:
        low, high = policy_versions
        if low > high:
            raise ValueError(f"policy_versions=({low}, {high}): low must be <= high")
        where += [e.policy_version_min >= low, e.policy_version_max <= high]
    for column, value in ((e.split, split), (e.group_id, group_id), (e.agent, agent), (e.task_id, task_id), (e.env_id, env_id)):
        if value is not None:
            where.append(column == value)
    if won is not None:
        where.append(e.won == bool(won))
    if since_id is not None:
        where.append(e.id > since_id)
    return where


def _check_text(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {type(value).__name__}")


def _check_int(value: Any, what: str, bits: int = 32) -> None:
    """Integers must fit their column on every backend (SQLite would take more; PostgreSQL would not)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise StoreError(f"{what} must be an integer or None, got {type(value).__name__}")
    if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
        raise StoreError(f"{what}={value} does not fit a {bits}-bit integer column")


def _episode_values(run_id: int, episode: Episode, now: float) -> dict[str, Any]:
    _check_text(episode.env_id, "episode.env_id")
    _check_text(episode.task_id, "episode.task_id")
    _check_text(episode.first_observation, "episode.first_observation")
    for name in ("split", "group_id", "instruction", "error"):
        if getattr(episode, name) is not None:
            _check_text(getattr(episode, name), f"episode.{name}")
    _check_text(episode.agent, "episode.agent")
    _check_int(episode.seed, "episode.seed", bits=64)
    _check_int(episode.policy_version, "episode.policy_version")
    versions = [v for v in (episode.policy_version, *(s.policy_version for s in episode.steps)) if v is not None]
    try:
        meta = codec.dump_json(episode.meta, "episode.meta")
    except codec.CodecError as exc:
        raise StoreError(str(exc)) from None
    return {
        "run_id": run_id,
        "env_id": episode.env_id,
        "task_id": codec.escape_text(episode.task_id),
        "split": episode.split,
        "seed": None if episode.seed is None else int(episode.seed),
        "group_id": codec.escape_text(episode.group_id),
        "agent": codec.escape_text(episode.agent),
        "policy_version": None if episode.policy_version is None else int(episode.policy_version),
        "instruction": codec.escape_text(episode.instruction),
        "first_observation": codec.escape_text(episode.first_observation),
        "won": bool(episode.won),
        "progress": float(episode.progress),
        "episode_return": episode.episode_return,
        "turns": len(episode.steps),
        "truncated": episode.truncated,
        "error": codec.escape_text(episode.error),
        "started_at": float(episode.started_at),
        "finished_at": None if episode.finished_at is None else float(episode.finished_at),
        "meta": meta,
        "policy_version_min": min(versions) if versions else None,
        "policy_version_max": max(versions) if versions else None,
        "written_at": now,
    }


def _step_values(episode: Episode, index: int) -> list[tuple[Any, ...]]:
    rows = []
    for turn, step in enumerate(episode.steps):
        where = f"episode {index} turn {turn}"
        _check_text(step.observation, f"{where}: observation")
        _check_text(step.action, f"{where}: action")
        _check_int(step.policy_version, f"{where}: policy_version")
        try:
            rows.append(
                (  # STEP_COLUMNS order, episode_id (prepended at write time) left out
                    turn,
                    codec.escape_text(step.observation),
                    codec.escape_text(step.action),
                    float(step.reward),
                    bool(step.terminated),
                    bool(step.truncated),
                    codec.dump_json(step.info, f"{where}: info"),
                    float(step.env_seconds),
                    float(step.generation_seconds),
                    None if step.policy_version is None else int(step.policy_version),
                )
            )
        except codec.CodecError as exc:
            raise StoreError(f"{where}: {exc}") from None
    return rows


def _transcript_values(episode: Episode, index: int) -> list[tuple[Any, ...]]:
    """TRANSCRIPT_COLUMNS rows (episode_id left out): per-token blobs, sampled-only fields kept sparse."""
    rows = []
    for position, t in enumerate(episode.transcripts):
        where = f"episode {index} transcript {position}"
        try:
            t.check()
            picked = [i for i, s in enumerate(t.sampled) if s]
            rows.append(
                (
                    position,
                    codec.encode_ints(t.ids),
                    codec.encode_runs(t.turns),
                    codec.encode_runs(t.sampled),
                    codec.encode_ints([t.loss_mask[i] for i in picked]),
                    None if t.logprobs is None else codec.encode_floats([t.logprobs[i] for i in picked]),
                    None if t.entropies is None else codec.encode_floats([t.entropies[i] for i in picked]),
                    codec.encode_ints([t.versions[i] for i in picked]),
                    codec.dump_json({k: {str(p): v for p, v in values.items()} for k, values in t.extras.items()} or None, f"{where}: extras"),
                    codec.dump_json(t.sampling, f"{where}: sampling"),
                )
            )
        except (codec.CodecError, ValueError) as exc:
            raise StoreError(f"{where}: {exc}") from None
    return rows


def _transcript_from_row(row: Any) -> Transcript:
    sampled: list[int] = codec.decode(row.sampled)  # type: ignore[assignment]
    picked = [i for i, s in enumerate(sampled) if s]

    def spread(blob: bytes | None, fill: Any) -> list[Any] | None:
        values = codec.decode(blob)
        if values is None:
            return None
        out = [fill] * len(sampled)
        for i, value in zip(picked, values, strict=True):
            out[i] = value
        return out

    extras = codec.load_json(row.extras) or {}
    return Transcript(
        ids=codec.decode(row.ids),  # type: ignore[arg-type]
        turns=codec.decode(row.turns),  # type: ignore[arg-type]
        sampled=sampled,
        loss_mask=spread(row.loss_mask, 0),  # type: ignore[arg-type]
        logprobs=spread(row.logprobs, 0.0),
        entropies=spread(row.entropies, 0.0),
        versions=spread(row.versions, -1),  # type: ignore[arg-type]
        extras={k: {int(p): v for p, v in values.items()} for k, values in extras.items()},
        sampling=codec.load_json(row.sampling),
    )


def _episode_from_rows(row: Any, step_rows: Iterable[Any], transcript_rows: Iterable[Any] = ()) -> Episode:
    steps = [
        Step(
            observation=s.observation,
            action=s.action,
            reward=s.reward,
            terminated=bool(s.terminated),
            truncated=bool(s.truncated),
            info=codec.load_json(s.info),
            env_seconds=s.env_seconds,
            generation_seconds=s.generation_seconds,
            policy_version=s.policy_version,
        )
        for s in step_rows
    ]
    return Episode(
        env_id=row.env_id,
        task_id=row.task_id,
        split=row.split,
        seed=row.seed,
        group_id=row.group_id,
        agent=row.agent,
        policy_version=row.policy_version,
        instruction=row.instruction,
        first_observation=row.first_observation,
        steps=steps,
        transcripts=[_transcript_from_row(t) for t in transcript_rows],
        won=bool(row.won),
        progress=row.progress,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        meta=codec.load_json(row.meta),
    )
