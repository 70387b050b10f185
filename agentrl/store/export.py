"""Views of stored episodes for sharing and training: Arrow/Parquet, JSONL, HF datasets.

Every view is read off the episodes as stored (their steps and transcripts); nothing is rebuilt,
and no view trains on the parsed action. Four table shapes (``level``):

* ``"step"``: one row per agent turn (its text side: observation, parsed action, reward, info),
  the episode's columns repeated; for analysis;
* ``"episode"``: one row per episode with its steps as lists; for analysis;
* ``"transcript"``: one row per token transcript, exactly as the policy read and sampled it:
  ``input_ids``, ``attention_mask``, ``labels`` (the id where the learner trains, -100 elsewhere),
  per-token ``turns``, ``sampled``, ``loss_mask``, ``logprobs``, ``entropies``, ``versions``, the
  episode's per-turn ``rewards`` and the ``sampling`` settings: the token-level training view, which
  Hugging Face trainers (``Trainer``, TRL's ``SFTTrainer``) consume as it is;
* ``"sft"``: one row per sampled turn in chat format (``prompt`` as the template rendered it,
  ``completion`` as sampled, ``messages``), decoded with the tokenizer (:mod:`agentrl.store.chat`).

:func:`export_jsonl` without a level writes whole episodes, every field, which
:func:`episode_from_dict` reads back. pyarrow and datasets are imported only by the functions that
need them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agentrl.trajectory import Episode, Step, Transcript

if TYPE_CHECKING:
    from agentrl.store.store import Store

LEVELS = ("step", "episode", "transcript", "sft")
#: ``labels`` value of a token the learner does not train on (the ignore index of PyTorch's cross-entropy).
IGNORE_INDEX = -100


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


def _episode_columns(episode_id: int, episode: Episode) -> dict[str, Any]:
    return {
        "episode_id": episode_id,
        "env_id": episode.env_id,
        "task_id": episode.task_id,
        "split": episode.split,
        "seed": episode.seed,
        "group_id": episode.group_id,
        "agent": episode.agent,
    }


def _step_record(episode_id: int, episode: Episode, turn: int, step: Step) -> dict[str, Any]:
    return {
        **_episode_columns(episode_id, episode),
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
        **_episode_columns(episode_id, episode),
        "won": episode.won,
        "episode_return": episode.episode_return,
        "position": position,
        "input_ids": t.ids,
        "attention_mask": [1] * len(t.ids),
        "labels": [i if trained else IGNORE_INDEX for i, trained in zip(t.ids, t.loss_mask, strict=True)],
        "turns": t.turns,
        "sampled": t.sampled,
        "loss_mask": t.loss_mask,
        "logprobs": t.logprobs,
        "entropies": t.entropies,
        "versions": t.versions,
        "rewards": [s.reward for s in episode.steps],
        "sampling": json.dumps(t.sampling),
        "extras": json.dumps({name: {str(p): v for p, v in values.items()} for name, values in t.extras.items()}),
    }


def _episode_record(episode_id: int, episode: Episode) -> dict[str, Any]:
    return {
        **_episode_columns(episode_id, episode),
        "policy_version": episode.policy_version,
        "instruction": episode.instruction,
        "won": episode.won,
        "progress": episode.progress,
        "episode_return": episode.episode_return,
        "turns": episode.turns,
        "error": episode.error,
        "started_at": episode.started_at,
        "finished_at": episode.finished_at,
        "observations": [s.observation for s in episode.steps],
        "actions": [s.action for s in episode.steps],
        "rewards": [s.reward for s in episode.steps],
    }


def schema(level: str) -> Any:
    """The ``pyarrow.Schema`` of a level's table (the same for Parquet, JSONL rows and HF datasets)."""
    import pyarrow as pa

    ints, floats, bits = pa.list_(pa.int64()), pa.list_(pa.float64()), pa.list_(pa.int8())
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
            ("won", pa.bool_()), ("episode_return", pa.float64()), ("position", pa.int32()),
            ("input_ids", ints), ("attention_mask", bits), ("labels", ints), ("turns", pa.list_(pa.int32())),
            ("sampled", bits), ("loss_mask", bits), ("logprobs", floats), ("entropies", floats),
            ("versions", ints), ("rewards", floats), ("sampling", pa.string()), ("extras", pa.string()),
        ]  # fmt: skip
    elif level == "sft":
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        rest = [
            ("won", pa.bool_()), ("episode_return", pa.float64()), ("turn", pa.int32()), ("position", pa.int32()),
            ("policy_version", pa.int64()), ("reward", pa.float64()), ("invalid_action", pa.bool_()),
            ("finish_reason", pa.string()), ("prompt", pa.string()), ("completion", pa.string()),
            ("ends_turn", pa.bool_()), ("messages", pa.list_(message)), ("prompt_ids", ints),
            ("completion_ids", ints), ("retokenizes", pa.bool_()),
        ]  # fmt: skip
    elif level == "episode":
        rest = [
            ("policy_version", pa.int64()), ("instruction", pa.string()), ("won", pa.bool_()),
            ("progress", pa.float64()), ("episode_return", pa.float64()), ("turns", pa.int32()),
            ("error", pa.string()), ("started_at", pa.float64()), ("finished_at", pa.float64()),
            ("observations", pa.list_(pa.string())), ("actions", pa.list_(pa.string())), ("rewards", floats),
        ]  # fmt: skip
    else:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return pa.schema(common + rest)


def iter_records(
    store: Store, run_id: int | None = None, *, level: str = "step", tokenizer: Any = None, **filters: Any
) -> Iterator[dict[str, Any]]:
    """The rows of a level's table as dicts, streamed episode by episode (``filters`` select episodes
    as in :meth:`Store.iter_episodes`). ``level="sft"`` decodes with ``tokenizer`` (the policy's)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if level == "sft" and tokenizer is None:
        raise ValueError("the sft level decodes token ids: pass the tokenizer the policy used")
    if level == "sft":
        from agentrl.store.chat import sft_rows
    for episode_id, episode in store.iter_episodes(run_id, with_ids=True, **filters):
        if level == "episode":
            yield _episode_record(episode_id, episode)
        elif level == "transcript":
            yield from (_transcript_record(episode_id, episode, k, t) for k, t in enumerate(episode.transcripts))
        elif level == "sft":
            yield from sft_rows(episode_id, episode, tokenizer)
        else:
            yield from (_step_record(episode_id, episode, turn, step) for turn, step in enumerate(episode.steps))


def to_arrow(store: Store, run_id: int | None = None, *, level: str = "step", tokenizer: Any = None, **filters: Any) -> Any:
    """A ``pyarrow.Table`` of the selected episodes at ``level`` (see the module docstring)."""
    import pyarrow as pa

    return pa.Table.from_pylist(list(iter_records(store, run_id, level=level, tokenizer=tokenizer, **filters)), schema=schema(level))


def export_parquet(
    store: Store, path: str, run_id: int | None = None, *, level: str = "step", tokenizer: Any = None,
    rows_per_group: int = 1024, **filters: Any,
) -> int:  # fmt: skip
    """Write a level's table to a Parquet file, ``rows_per_group`` rows at a time (a run larger than
    memory exports too); returns its number of rows. ``datasets.load_dataset("parquet", data_files=path)``
    reads it back with the same columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_schema = schema(level)
    count = 0
    with pq.ParquetWriter(path, table_schema) as writer:
        rows: list[dict[str, Any]] = []
        for row in iter_records(store, run_id, level=level, tokenizer=tokenizer, **filters):
            rows.append(row)
            if len(rows) == rows_per_group:
                writer.write_table(pa.Table.from_pylist(rows, schema=table_schema))
                count, rows = count + len(rows), []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=table_schema))
            count += len(rows)
    return count  # an empty selection leaves a file with the columns and no rows (pyarrow reads it; datasets refuses)


def export_jsonl(
    store: Store, path: str, run_id: int | None = None, *, level: str | None = None, tokenizer: Any = None, **filters: Any
) -> int:
    """Write one JSON object per line; returns the number of lines.

    Without ``level``: whole episodes, every field (:func:`episode_from_dict` reads them back). With a
    level: that table's rows (``datasets.load_dataset("json", data_files=path)`` reads them).
    """
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        if level is None:
            rows: Iterator[dict[str, Any]] = (episode_to_dict(ep) for ep in store.iter_episodes(run_id, **filters))
        else:
            rows = iter_records(store, run_id, level=level, tokenizer=tokenizer, **filters)
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
            count += 1
    return count


def to_hf_dataset(store: Store, run_id: int | None = None, *, level: str = "episode", tokenizer: Any = None, **filters: Any) -> Any:
    """A Hugging Face ``datasets.Dataset`` of the :func:`to_arrow` table (``save_to_disk`` it to share).

    SFT data from successful expert episodes: ``to_hf_dataset(store, run, level="sft", tokenizer=tok,
    won=True, agent="expert")``; exact token data: ``level="transcript"``.
    """
    import datasets

    return datasets.Dataset(to_arrow(store, run_id, level=level, tokenizer=tokenizer, **filters))
