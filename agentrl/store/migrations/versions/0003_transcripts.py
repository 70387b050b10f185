"""Token transcripts: one row per transcript instead of per-step prompt/response arrays.

Until 0002 each step stored its prompt ids (prefix-delta encoded against the previous turn), its
response ids and per-response loss mask, log-probs and entropies. From 0003 the token side of an
episode is its transcripts (``agentrl.trajectory.Transcript``): the id sequence exactly as the
policy read and produced it, with per-token fields. The upgrade rebuilds them from the steps: a turn
whose prompt extends the current transcript (the concat layout) appends to it, any other turn starts
a new transcript (the per-step layout, or a chat template that rewrote history); the ids, masks,
log-probs and entropies are copied exactly. Steps keep their text side and ``policy_version``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from agentrl.store import codec

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TOKEN_COLUMNS = ("prompt_ids", "response_ids", "loss_mask", "logprobs", "entropies")
_CHUNK = 500  # episodes converted per query


def _create_table() -> None:
    op.create_table(
        "transcripts",
        sa.Column("episode_id", sa.Integer(), sa.ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("ids", sa.LargeBinary(), nullable=False),
        sa.Column("turns", sa.LargeBinary(), nullable=False),
        sa.Column("sampled", sa.LargeBinary(), nullable=False),
        sa.Column("loss_mask", sa.LargeBinary(), nullable=False),
        sa.Column("logprobs", sa.LargeBinary(), nullable=True),
        sa.Column("entropies", sa.LargeBinary(), nullable=True),
        sa.Column("versions", sa.LargeBinary(), nullable=False),
        sa.Column("extras", sa.Text(), nullable=True),
        sa.Column("sampling", sa.Text(), nullable=True),
    )


def _transcripts_of(steps: list[Any]) -> list[dict[str, Any]]:
    """Transcript rows (blobs) of one episode from its 0002 step rows, in turn order."""
    out: list[dict[str, list[Any] | None]] = []
    context: list[int] | None = None
    for turn, step in enumerate(steps):
        prompt = codec.decode_prompt(step.prompt_ids, context)
        response = codec.decode(step.response_ids)
        context = prompt + response if prompt is not None and response is not None else None  # type: ignore[operator]
        if prompt is None or response is None:
            continue  # a text-only turn: no tokens to keep
        current = out[-1] if out else None
        if current is not None and prompt[: len(current["ids"])] == current["ids"] and len(prompt) >= len(current["ids"]):
            delta = prompt[len(current["ids"]) :]
        else:
            current = {"ids": [], "turns": [], "sampled": [], "loss_mask": [], "logprobs": [], "entropies": [], "versions": []}
            out.append(current)
            delta = prompt
        n = len(response)
        mask = codec.decode(step.loss_mask)
        logprobs, entropies = codec.decode(step.logprobs), codec.decode(step.entropies)
        current["ids"] += list(delta) + list(response)
        current["turns"] += [turn] * (len(delta) + n)
        current["sampled"] += [0] * len(delta) + [1] * n
        current["loss_mask"] += list(mask) if mask is not None else [1] * n
        current["versions"] += [-1 if step.policy_version is None else int(step.policy_version)] * n
        for name, values in (("logprobs", logprobs), ("entropies", entropies)):
            if values is None or current[name] is None:
                current[name] = None
            else:
                current[name] += list(values)
    return [
        {
            "position": position,
            "ids": codec.encode_ints(t["ids"]),
            "turns": codec.encode_runs(t["turns"]),
            "sampled": codec.encode_runs(t["sampled"]),
            "loss_mask": codec.encode_ints(t["loss_mask"]),
            "logprobs": codec.encode_floats(t["logprobs"]),
            "entropies": codec.encode_floats(t["entropies"]),
            "versions": codec.encode_ints(t["versions"]),
            "extras": None,
            "sampling": None,
        }
        for position, t in enumerate(out)
    ]


def upgrade() -> None:
    _create_table()
    bind = op.get_bind()
    meta = sa.MetaData()
    steps = sa.Table("steps", meta, autoload_with=bind)
    episodes = sa.Table("episodes", meta, autoload_with=bind)
    transcripts = sa.Table("transcripts", meta, autoload_with=bind)
    last = 0
    while True:
        ids = bind.execute(
            sa.select(episodes.c.id).where(episodes.c.id > last).order_by(episodes.c.id).limit(_CHUNK)
        ).scalars().all()
        if not ids:
            break
        rows = bind.execute(
            sa.select(steps.c.episode_id, steps.c.turn, steps.c.policy_version, *(steps.c[n] for n in TOKEN_COLUMNS))
            .where(steps.c.episode_id.in_(ids))
            .order_by(steps.c.episode_id, steps.c.turn)
        ).all()
        by_episode: dict[int, list[Any]] = {}
        for row in rows:
            by_episode.setdefault(row.episode_id, []).append(row)
        values = [
            {"episode_id": episode_id, **t} for episode_id, rows in by_episode.items() for t in _transcripts_of(rows)
        ]
        if values:
            bind.execute(transcripts.insert(), values)
        last = ids[-1]
    with op.batch_alter_table("steps") as batch:
        for name in TOKEN_COLUMNS:
            batch.drop_column(name)


def downgrade() -> None:
    """Back to per-step arrays: each turn's prompt is its transcript up to the response (delta encoded)."""
    with op.batch_alter_table("steps") as batch:
        for name in TOKEN_COLUMNS:
            batch.add_column(sa.Column(name, sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    meta = sa.MetaData()
    steps = sa.Table("steps", meta, autoload_with=bind)
    transcripts = sa.Table("transcripts", meta, autoload_with=bind)
    rows = bind.execute(sa.select(transcripts).order_by(transcripts.c.episode_id, transcripts.c.position)).all()
    per_episode: dict[int, list[Any]] = {}
    for row in rows:
        per_episode.setdefault(row.episode_id, []).append(row)
    for episode_id, rows in per_episode.items():
        turns_done: dict[int, dict[str, Any]] = {}
        for row in rows:
            ids, turns, sampled = codec.decode(row.ids), codec.decode(row.turns), codec.decode(row.sampled)
            positions = [i for i, s in enumerate(sampled) if s]  # type: ignore[union-attr]
            where = {i: k for k, i in enumerate(positions)}
            mask = codec.decode(row.loss_mask)
            logprobs, entropies = codec.decode(row.logprobs), codec.decode(row.entropies)
            for turn in sorted(set(turns[i] for i in positions)):  # type: ignore[index]
                span = [i for i in positions if turns[i] == turn]  # type: ignore[index]
                start, end = span[0], span[-1] + 1
                ks = [where[i] for i in range(start, end)]
                turns_done[turn] = {
                    "prompt": ids[:start], "response": ids[start:end],  # type: ignore[index]
                    "loss_mask": [mask[k] for k in ks],  # type: ignore[index]
                    "logprobs": None if logprobs is None else [logprobs[k] for k in ks],
                    "entropies": None if entropies is None else [entropies[k] for k in ks],
                }  # fmt: skip
        context: list[int] | None = None
        for turn in sorted(turns_done):
            t = turns_done[turn]
            bind.execute(
                steps.update()
                .where((steps.c.episode_id == episode_id) & (steps.c.turn == turn))
                .values(
                    prompt_ids=codec.encode_prompt(t["prompt"], context),
                    response_ids=codec.encode_ints(t["response"]),
                    loss_mask=codec.encode_ints(t["loss_mask"]),
                    logprobs=codec.encode_floats(t["logprobs"]),
                    entropies=codec.encode_floats(t["entropies"]),
                )
            )
            context = t["prompt"] + t["response"]
    op.drop_table("transcripts")
