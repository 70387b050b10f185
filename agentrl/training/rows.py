"""From episodes to the learner's batch: one row per agent turn (the *per-step* layout).

A row is the turn's prompt ids followed by its sampled response ids, verbatim as the policy saw and
produced them (never re-tokenised). Position ``t`` of a row scores token ``t + 1``, so response
token ``j`` (at position ``P + j`` after a prompt of ``P`` ids) is scored at ``P + j - 1``; its
loss mask and behaviour log-prob move to that position too. Rows of one trajectory stay contiguous
and in turn order, which EMPG's "next step of the same trajectory" relies on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentrl.training.logprobs import IGNORE
from agentrl.trajectory import Episode


class NoUsableEpisodesError(ValueError):
    """The batch holds nothing to train on (every episode failed, or none carries token ids)."""


@dataclass
class StepRows:
    """A training batch: ``S`` rows (turns) from ``T`` trajectories."""

    prompt_ids: list[list[int]]  # [S] the turn's full prompt
    response_ids: list[list[int]]  # [S] the sampled ids
    loss_masks: list[list[int]]  # [S] per response id
    behaviour_logprobs: list[list[float] | None]  # [S] per response id, None when not recorded
    behaviour_entropies: list[list[float] | None]  # [S] per response id, None when not recorded
    traj_index: torch.Tensor  # [S] long, row -> trajectory
    turn: list[int]  # [S] turn number within its trajectory
    env_seconds: list[float]  # [S]
    returns: torch.Tensor  # [T] float32, sum of the episode's rewards
    group_ids: list[object]  # [T]
    won: list[bool]  # [T]
    dropped_episodes: int = 0  # episodes left out (error set, or no steps with tokens)

    @property
    def n_rows(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_trajectories(self) -> int:
        return int(self.returns.numel())

    def row_tokens(self) -> list[int]:
        """Trainable (loss-masked) tokens per row."""
        return [sum(1 for m in mask if m) for mask in self.loss_masks]

    def row_lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids, strict=True)]


def build_rows(episodes: Sequence[Episode]) -> StepRows:
    """Turn episodes into per-step rows, checking the token bookkeeping of every step.

    Episodes with ``error`` set failed outside the task and are left out (counted in
    ``dropped_episodes``). Steps with an empty response carry no gradient and are left out, but their
    episode's return still counts for its group. Episodes without ``group_id`` are grouped by
    ``(env_id, task_id)``. Raises :class:`NoUsableEpisodesError` when nothing is left, and
    ``ValueError`` naming the episode and turn when a step's token fields are missing or inconsistent.
    """
    rows = StepRows([], [], [], [], [], torch.empty(0, dtype=torch.long), [], [], torch.empty(0), [], [])
    traj_index: list[int] = []
    returns: list[float] = []
    for e_index, episode in enumerate(episodes):
        if episode.error is not None:
            rows.dropped_episodes += 1
            continue
        kept = []
        for turn, step in enumerate(episode.steps):
            where = f"episode #{e_index} ({episode.env_id} task {episode.task_id!r}) turn {turn}"
            if step.prompt_ids is None or step.response_ids is None:
                raise ValueError(f"{where} has no token ids: only model-agent episodes can be trained on")
            if not step.response_ids:
                continue
            if not step.prompt_ids:
                raise ValueError(f"{where} has an empty prompt; a response must follow at least one id")
            mask = step.loss_mask if step.loss_mask is not None else [1] * len(step.response_ids)
            for name, values in (
                ("loss_mask", mask),
                ("logprobs", step.logprobs),
                ("entropies", step.entropies),
            ):
                if values is not None and len(values) != len(step.response_ids):
                    raise ValueError(
                        f"{where}: {len(values)} {name} for {len(step.response_ids)} response ids"
                    )
            if step.logprobs is not None and any(
                not math.isfinite(v) for v, m in zip(step.logprobs, mask, strict=True) if m
            ):
                raise ValueError(f"{where}: non-finite behaviour logprob on a trained token")
            kept.append((turn, step, list(mask)))
        if not kept:
            rows.dropped_episodes += 1
            continue
        t = len(returns)
        returns.append(episode.episode_return)
        rows.group_ids.append(
            episode.group_id if episode.group_id is not None else (episode.env_id, episode.task_id)
        )
        rows.won.append(bool(episode.won))
        for turn, step, mask in kept:
            rows.prompt_ids.append(list(step.prompt_ids))
            rows.response_ids.append(list(step.response_ids))
            rows.loss_masks.append(mask)
            rows.behaviour_logprobs.append(None if step.logprobs is None else list(step.logprobs))
            rows.behaviour_entropies.append(None if step.entropies is None else list(step.entropies))
            rows.turn.append(turn)
            rows.env_seconds.append(float(step.env_seconds))
            traj_index.append(t)
    if not rows.prompt_ids:
        raise NoUsableEpisodesError(
            f"no usable episodes: {len(episodes)} given, {rows.dropped_episodes} failed or carry no sampled tokens"
        )
    rows.traj_index = torch.tensor(traj_index, dtype=torch.long)
    rows.returns = torch.tensor(returns, dtype=torch.float32)
    return rows


def micro_batches(lengths: Sequence[int], indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split ``indices`` (rows) into micro-batches whose padded size ``rows * longest`` fits ``max_tokens``.

    Rows are taken longest first (less padding); a row longer than ``max_tokens`` gets a micro-batch
    of its own. Deterministic for the same input.
    """
    order = sorted(indices, key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(
    rows: StepRows, indices: Sequence[int], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Right-padded tensors for the rows ``indices``; every ``[B, L]`` in scoring positions.

    Keys: ``input_ids``, ``attention_mask``, ``targets`` (``IGNORE`` where nothing is scored),
    ``mask`` (float, trained tokens), ``old_logp`` (behaviour log-probs, 0 where unknown),
    ``has_old_logp`` ``[B]`` bool, ``behaviour_entropy`` and ``has_behaviour_entropy`` likewise.
    """
    length = max(len(rows.prompt_ids[i]) + len(rows.response_ids[i]) for i in indices)
    b = len(indices)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.float32)
    old_logp = torch.zeros((b, length), dtype=torch.float32)
    behaviour_entropy = torch.zeros((b, length), dtype=torch.float32)
    has_old = torch.zeros(b, dtype=torch.bool)
    has_entropy = torch.zeros(b, dtype=torch.bool)
    for r, i in enumerate(indices):
        prompt, response = rows.prompt_ids[i], rows.response_ids[i]
        p, n = len(prompt), len(response)
        input_ids[r, : p + n] = torch.tensor(prompt + response)
        attention_mask[r, : p + n] = 1
        scored = slice(p - 1, p - 1 + n)  # position p-1+j scores response token j
        targets[r, scored] = torch.tensor(response)
        mask[r, scored] = torch.tensor(rows.loss_masks[i], dtype=torch.float32)
        if rows.behaviour_logprobs[i] is not None:
            old_logp[r, scored] = torch.tensor(rows.behaviour_logprobs[i], dtype=torch.float32)
            has_old[r] = True
        if rows.behaviour_entropies[i] is not None:
            behaviour_entropy[r, scored] = torch.tensor(rows.behaviour_entropies[i], dtype=torch.float32)
            has_entropy[r] = True
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "targets": targets,
        "mask": mask,
        "old_logp": old_logp,
        "has_old_logp": has_old,
        "behaviour_entropy": behaviour_entropy,
        "has_behaviour_entropy": has_entropy,
    }
    return {k: v.to(device) for k, v in out.items()}


# ---------------------------------------------------------------------------- packed (concat) layout


@dataclass
class PackedSequence:
    """Consecutive turns of one trajectory in one sequence (the *concat* layout).

    Turn ``k+1`` joins the sequence only when its prompt ids start with the whole sequence so far
    (prompt + response of turn ``k``), so every response token is scored on exactly the ids the
    policy saw: the log-probs equal those of the per-step rows, at a fraction of the tokens.
    """

    input_ids: list[int]
    steps: list[int]  # row indices, in turn order
    starts: list[int]  # position of each step's first response token


def pack(rows: StepRows, indices: Sequence[int], layout: str = "concat") -> list[PackedSequence]:
    """Group the rows ``indices`` (in order) into sequences.

    ``layout="concat"`` extends a sequence with the next turn of the same trajectory whenever the
    prefix property holds and starts a new one where it breaks (a windowed history, a chat template
    that rewrites earlier turns); ``"per_step"`` gives one sequence per row.
    """
    if layout not in ("concat", "per_step"):
        raise ValueError(f"unknown layout {layout!r}; expected 'concat' or 'per_step'")
    traj = rows.traj_index.tolist()
    sequences: list[PackedSequence] = []
    for i in indices:
        prompt, response = rows.prompt_ids[i], rows.response_ids[i]
        current = sequences[-1] if sequences else None
        if (
            layout == "concat"
            and current is not None
            and traj[current.steps[-1]] == traj[i]
            and len(prompt) >= len(current.input_ids)
            and prompt[: len(current.input_ids)] == current.input_ids
        ):
            current.input_ids = prompt + response
            current.steps.append(i)
            current.starts.append(len(prompt))
        else:
            sequences.append(PackedSequence(prompt + response, [i], [len(prompt)]))
    return sequences


def collate_packed(
    rows: StepRows, sequences: Sequence[PackedSequence], pad_id: int, device: torch.device
) -> dict[str, torch.Tensor | list[int]]:
    """Padded sequences plus step-shaped views of their scored positions.

    ``input_ids``, ``attention_mask``, ``targets``: ``[B, L]``. For the ``n`` steps of these sequences
    (``steps``, row indices in order) with ``R`` = longest response: ``step_seq [n, 1]`` and
    ``step_pos [n, R]`` index the ``[B, L]`` scores (``logp[step_seq, step_pos]``), and ``mask``,
    ``old_logp``: ``[n, R]``, laid out like the per-step :func:`collate` output with the prompt cut off.
    """
    length = max(len(s.input_ids) for s in sequences)
    b = len(sequences)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    steps = [i for s in sequences for i in s.steps]
    width = max(len(rows.response_ids[i]) for i in steps)
    step_seq = torch.zeros((len(steps), 1), dtype=torch.long)
    step_pos = torch.zeros((len(steps), width), dtype=torch.long)
    mask = torch.zeros((len(steps), width), dtype=torch.float32)
    old_logp = torch.zeros((len(steps), width), dtype=torch.float32)
    k = 0
    for r, seq in enumerate(sequences):
        input_ids[r, : len(seq.input_ids)] = torch.tensor(seq.input_ids)
        attention_mask[r, : len(seq.input_ids)] = 1
        for i, start in zip(seq.steps, seq.starts, strict=True):
            response = rows.response_ids[i]
            n = len(response)
            positions = torch.arange(start - 1, start - 1 + n)  # position p-1+j scores response token j
            targets[r, positions] = torch.tensor(response)
            step_seq[k] = r
            step_pos[k, :n] = positions
            mask[k, :n] = torch.tensor(rows.loss_masks[i], dtype=torch.float32)
            if rows.behaviour_logprobs[i] is not None:
                old_logp[k, :n] = torch.tensor(rows.behaviour_logprobs[i], dtype=torch.float32)
            k += 1
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "targets": targets,
        "step_seq": step_seq,
        "step_pos": step_pos,
        "mask": mask,
        "old_logp": old_logp,
    }
    batch: dict[str, torch.Tensor | list[int]] = {key: v.to(device) for key, v in out.items()}
    batch["steps"] = steps
    return batch
