"""Views of stored episodes for sharing: Arrow/Parquet, JSONL, HF datasets.

Every view is read off the episodes as stored (their steps and transcripts); nothing is rebuilt.
Three table shapes:

* ``level="step"``: one row per agent turn (its text side), the episode's columns repeated;
* ``level="episode"``: one row per episode with its steps as lists and a chat ``messages`` column
  (the observation as ``user``, the action as ``assistant``, one pair per turn);
* ``level="transcript"``: one row per token transcript: ``ids`` exactly as the policy read and
  sampled them, with per-token ``turns``, ``sampled``, ``loss_mask``, ``logprobs``, ``entropies``,
  ``versions`` (the token-level training view).

pyarrow and datasets are imported only by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from agentrl.trajectory import Episode, Step, Transcript

if TYPE_CHECKING:
    from agentrl.store.store import Store

LEVELS = ("step", "episode", "transcript")


def episode_to_dict(episode: Episode) -> dict[str, Any]:
    """Every field of an episode as JSON-ready data (inverse: :func:`episode_from_dict`)."""
    return dataclasses.asdict(episode)


def episode_from_dict(data: dict[str, Any]) -> Episode:
    fields = dict(data)
    fields["steps"] = [Step(**step) for step in fields.get("steps", [])]
    fields["transcripts"] = [
        Transcript(**{**t, "extras": {k: {int(p): v for p, v in values.items()} for k, values in t.get("extras", {}).items()}})
        for t in fields.get("transcripts", [])
    ]
    return Episode(**fields)


def export_jsonl(store: Store, path: str, run_id: int | None = None, **filters: Any) -> int:
    """Write one episode per line with every field; returns the number of episodes."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for episode in store.iter_episodes(run_id, **filters):
            f.write(json.dumps(episode_to_dict(episode), ensure_ascii=True) + "\n")
            count += 1
    return count


def _step_record(episode_id: int, episode: Episode, turn: int, step: Step) -> dict[str, Any]:
    return {
        "episode_id": episode_id,
        "env_id": episode.env_id,
        "task_id": episode.task_id,
        "split": episode.split,
        "seed": episode.seed,
        "group_id": episode.group_id,
        "agent": episode.agent,
        "won": episode.won,
        "progress": episode.progress,
        "episode_return": episode.episode_return,
        "turn": turn,
        "observation": step.observation,
        "action": step.action,
        "reward": step.reward,
        "terminated": step.terminated,
        "truncated": step.truncated,
        "env_seconds": step.env_seconds,
        "generation_seconds": step.generation_seconds,
        "info": json.dumps(step.info, ensure_ascii=True),
        "policy_version": step.policy_version,
    }


def _transcript_record(episode_id: int, episode: Episode, position: int, t: Transcript) -> dict[str, Any]:
    return {
        "episode_id": episode_id,
        "env_id": episode.env_id,
        "task_id": episode.task_id,
        "split": episode.split,
        "seed": episode.seed,
        "group_id": episode.group_id,
        "agent": episode.agent,
        "won": episode.won,
        "episode_return": episode.episode_return,
        "position": position,
        "ids": t.ids,
        "turns": t.turns,
        "sampled": t.sampled,
        "loss_mask": t.loss_mask,
        "logprobs": t.logprobs,
        "entropies": t.entropies,
        "versions": t.versions,
        "sampling": json.dumps(t.sampling),
    }


def _episode_record(episode_id: int, episode: Episode) -> dict[str, Any]:
    messages = []
    for step in episode.steps:
        messages.append({"role": "user", "content": step.observation})
        messages.append({"role": "assistant", "content": step.action})
    return {
        "episode_id": episode_id,
        "env_id": episode.env_id,
        "task_id": episode.task_id,
        "split": episode.split,
        "seed": episode.seed,
        "group_id": episode.group_id,
        "agent": episode.agent,
        "policy_version": episode.policy_version,
        "instruction": episode.instruction,
        "won": episode.won,
        "progress": episode.progress,
        "episode_return": episode.episode_return,
        "turns": episode.turns,
        "error": episode.error,
        "started_at": episode.started_at,
        "finished_at": episode.finished_at,
        "messages": messages,
        "observations": [s.observation for s in episode.steps],
        "actions": [s.action for s in episode.steps],
        "rewards": [s.reward for s in episode.steps],
    }


def _schema(level: str) -> Any:
    import pyarrow as pa

    ints, floats = pa.list_(pa.int64()), pa.list_(pa.float64())
    common = [
        ("episode_id", pa.int64()),
        ("env_id", pa.string()),
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("group_id", pa.string()),
        ("agent", pa.string()),
    ]
    if level == "step":
        rest = [
            ("won", pa.bool_()), ("progress", pa.float64()), ("episode_return", pa.float64()),
            ("turn", pa.int32()), ("observation", pa.string()), ("action", pa.string()),
            ("reward", pa.float64()), ("terminated", pa.bool_()), ("truncated", pa.bool_()),
            ("env_seconds", pa.float64()), ("generation_seconds", pa.float64()), ("info", pa.string()),
            ("policy_version", pa.int64()),
        ]  # fmt: skip
    elif level == "transcript":
        rest = [
            ("won", pa.bool_()), ("episode_return", pa.float64()), ("position", pa.int32()), ("ids", ints),
            ("turns", pa.list_(pa.int32())), ("sampled", pa.list_(pa.int8())), ("loss_mask", pa.list_(pa.int8())),
            ("logprobs", floats), ("entropies", floats), ("versions", pa.list_(pa.int64())), ("sampling", pa.string()),
        ]  # fmt: skip
    else:
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        rest = [
            ("policy_version", pa.int64()), ("instruction", pa.string()), ("won", pa.bool_()),
            ("progress", pa.float64()), ("episode_return", pa.float64()), ("turns", pa.int32()),
            ("error", pa.string()), ("started_at", pa.float64()), ("finished_at", pa.float64()),
            ("messages", pa.list_(message)), ("observations", pa.list_(pa.string())),
            ("actions", pa.list_(pa.string())), ("rewards", floats),
        ]  # fmt: skip
    return pa.schema(common + rest)


def to_arrow(store: Store, run_id: int | None = None, *, level: str = "step", **filters: Any) -> Any:
    """A ``pyarrow.Table`` of the selected episodes at ``level`` ``"step"``, ``"episode"`` or ``"transcript"``."""
    import pyarrow as pa

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    records = []
    for episode_id, episode in store.iter_episodes(run_id, with_ids=True, **filters):
        if level == "episode":
            records.append(_episode_record(episode_id, episode))
        elif level == "transcript":
            records.extend(_transcript_record(episode_id, episode, k, t) for k, t in enumerate(episode.transcripts))
        else:
            records.extend(_step_record(episode_id, episode, turn, step) for turn, step in enumerate(episode.steps))
    return pa.Table.from_pylist(records, schema=_schema(level))


def export_parquet(store: Store, path: str, run_id: int | None = None, *, level: str = "step", **filters: Any) -> int:
    """Write the :func:`to_arrow` table to a Parquet file; returns its number of rows."""
    import pyarrow.parquet as pq

    table = to_arrow(store, run_id, level=level, **filters)
    pq.write_table(table, path)
    return table.num_rows


def to_hf_dataset(store: Store, run_id: int | None = None, *, level: str = "episode", **filters: Any) -> Any:
    """A Hugging Face ``datasets.Dataset`` of the :func:`to_arrow` table.

    SFT data from successful expert episodes: ``to_hf_dataset(store, run, won=True, agent="expert")``.
    """
    import datasets

    return datasets.Dataset(to_arrow(store, run_id, level=level, **filters))
