"""Views of stored episodes for training and sharing: tensor batches, Arrow/Parquet, JSONL, HF datasets.

Two table shapes:

* ``level="step"``: one row per agent turn, the episode's columns repeated on each row, token
  arrays as Arrow lists. This is the learner's per-step layout and what ``iter_batches`` stacks.
* ``level="episode"``: one row per episode with its steps as lists and a chat ``messages`` column
  (the observation as ``user``, the action as ``assistant``, one pair per turn) that SFT trainers
  such as TRL's read directly.

torch, pyarrow and datasets are imported only by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from agentrl.trajectory import Episode, Step

if TYPE_CHECKING:
    from agentrl.store.store import Store

LEVELS = ("step", "episode")


def episode_to_dict(episode: Episode) -> dict[str, Any]:
    """Every field of an episode as JSON-ready data (inverse: :func:`episode_from_dict`)."""
    return dataclasses.asdict(episode)


def episode_from_dict(data: dict[str, Any]) -> Episode:
    fields = dict(data)
    fields["steps"] = [Step(**step) for step in fields.get("steps", [])]
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
        "prompt_ids": step.prompt_ids,
        "response_ids": step.response_ids,
        "loss_mask": step.loss_mask,
        "logprobs": step.logprobs,
        "entropies": step.entropies,
        "policy_version": step.policy_version,
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
            ("prompt_ids", ints), ("response_ids", ints), ("loss_mask", pa.list_(pa.int8())),
            ("logprobs", floats), ("entropies", floats), ("policy_version", pa.int64()),
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
    """A ``pyarrow.Table`` of the selected episodes at ``level`` ``"step"`` or ``"episode"``."""
    import pyarrow as pa

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    records = []
    for episode_id, episode in store.iter_episodes(run_id, with_ids=True, **filters):
        if level == "episode":
            records.append(_episode_record(episode_id, episode))
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


def iter_step_batches(
    store: Store,
    run_id: int | None = None,
    *,
    episodes_per_batch: int = 64,
    pad_id: int = 0,
    **filters: Any,
) -> Iterator[dict[str, Any]]:
    """Per-step training batches: all turns of ``episodes_per_batch`` episodes, stacked and padded.

    Row ``r`` is one turn; its tokens are ``prompt_ids + response_ids``, right-padded with
    ``pad_id`` to the longest row ``L`` of the batch. Tensors (``S`` rows):

    * ``input_ids`` [S, L] long, ``attention_mask`` [S, L] long (1 on real tokens)
    * ``response_mask`` [S, L] float: the turn's ``loss_mask`` at its response positions (all ones
      when the turn has no loss mask), 0 on prompt and padding
    * ``logprobs``, ``entropies`` [S, L] float32: behaviour values at the response positions
      (the value of response token ``j`` sits at the position of that token), 0 elsewhere
    * ``prompt_lengths``, ``response_lengths``, ``turn``, ``traj_id`` (store episode id),
      ``group_index`` (into ``group_ids``), ``policy_version`` (-1 when unknown) [S] long
    * ``rewards``, ``returns`` (episode return), ``won``, ``env_seconds``, ``generation_seconds`` [S] float32

    plus ``group_ids``: the group id strings. A turn without token ids cannot be trained on and
    raises ``ValueError`` (select model episodes, e.g. by ``agent``).
    """
    import torch

    for chunk in store.iter_episode_chunks(run_id, batch_size=episodes_per_batch, **filters):
        rows: list[tuple[int, Episode, int, Step]] = []
        for episode_id, episode in chunk:
            for turn, step in enumerate(episode.steps):
                if step.prompt_ids is None or step.response_ids is None:
                    raise ValueError(f"episode {episode_id} turn {turn} has no token ids; it cannot go in a tensor batch")
                rows.append((episode_id, episode, turn, step))
        if not rows:
            continue
        length = max(len(s.prompt_ids) + len(s.response_ids) for *_, s in rows)  # type: ignore[arg-type]
        count = len(rows)
        # Filled as numpy arrays (cheap row slices from lists), handed to torch without a copy.
        input_ids = np.full((count, length), pad_id, dtype=np.int64)
        attention_mask = np.zeros((count, length), dtype=np.int64)
        response_mask = np.zeros((count, length), dtype=np.float32)
        logprobs = np.zeros((count, length), dtype=np.float32)
        entropies = np.zeros((count, length), dtype=np.float32)
        group_ids: list[str] = []
        group_index: dict[str, int] = {}
        scalars: dict[str, list[Any]] = {key: [] for key in (
            "prompt_lengths", "response_lengths", "turn", "traj_id", "group_index", "policy_version",
            "rewards", "returns", "won", "env_seconds", "generation_seconds",
        )}  # fmt: skip
        for r, (episode_id, episode, turn, step) in enumerate(rows):
            prompt, response = step.prompt_ids, step.response_ids
            p, n = len(prompt), len(response)  # type: ignore[arg-type]
            input_ids[r, :p] = prompt
            input_ids[r, p : p + n] = response
            attention_mask[r, : p + n] = 1
            mask = step.loss_mask if step.loss_mask is not None else [1] * n
            if len(mask) != n:
                raise ValueError(f"episode {episode_id} turn {turn}: loss_mask has {len(mask)} values for {n} response ids")
            response_mask[r, p : p + n] = mask
            for target, values, name in ((logprobs, step.logprobs, "logprobs"), (entropies, step.entropies, "entropies")):
                if values is not None:
                    if len(values) != n:
                        raise ValueError(f"episode {episode_id} turn {turn}: {len(values)} {name} for {n} response ids")
                    target[r, p : p + n] = values
            group = episode.group_id if episode.group_id is not None else f"episode-{episode_id}"  # a group of one
            if group not in group_index:
                group_index[group] = len(group_ids)
                group_ids.append(group)
            version = step.policy_version if step.policy_version is not None else episode.policy_version
            for key, value in (
                ("prompt_lengths", p), ("response_lengths", n), ("turn", turn), ("traj_id", episode_id),
                ("group_index", group_index[group]), ("policy_version", -1 if version is None else version),
                ("rewards", step.reward), ("returns", episode.episode_return), ("won", float(episode.won)),
                ("env_seconds", step.env_seconds), ("generation_seconds", step.generation_seconds),
            ):  # fmt: skip
                scalars[key].append(value)
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "response_mask": torch.from_numpy(response_mask),
            "logprobs": torch.from_numpy(logprobs),
            "entropies": torch.from_numpy(entropies),
            "group_ids": group_ids,
        }
        for key, values in scalars.items():
            dtype = torch.float32 if key in ("rewards", "returns", "won", "env_seconds", "generation_seconds") else torch.long
            batch[key] = torch.tensor(values, dtype=dtype)
        yield batch
