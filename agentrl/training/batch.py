"""From episodes to the learner's batch: the episodes' transcripts, packed as they are.

Every :class:`~agentrl.trajectory.Transcript` is one training sequence, verbatim: the ids the policy
read and sampled, in that order, never re-tokenised. Position ``t`` of a sequence scores token
``t + 1``, so the sampled token at position ``i`` is scored at ``i - 1``; its loss mask and
behaviour log-prob move to that position too. A concat-layout episode is one sequence for all its
turns; a per-step episode is one (short) sequence per turn. Nothing here rebuilds or checks a
layout: the agent that sampled wrote the transcript once, and that is what is trained on.

The batch keeps two views:

* sequences ``[Q]``: transcript ids, and the trajectory each belongs to;
* steps ``[S]`` (one per agent turn with sampled ids, the algorithms' row): where the response
  sits in its sequence, its loss mask and behaviour statistics, and the turn's env fields. Steps of
  a trajectory are contiguous and in turn order, which EMPG's "next step of the same trajectory"
  and GiGPO's discounted returns rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrl.training.logprobs import IGNORE
from agentrl.trajectory import ALLOWED, Episode


class NoUsableEpisodesError(ValueError):
    """The batch holds nothing to train on (every episode failed, or none carries sampled tokens)."""


@dataclass
class StepBatch:
    """A training batch: ``Q`` sequences holding ``S`` steps of ``T`` trajectories."""

    sequences: list[list[int]] = field(default_factory=list)  # [Q] transcript ids
    seq_traj: list[int] = field(default_factory=list)  # [Q] trajectory of each sequence
    seq_temperature: list[float] = field(default_factory=list)  # [Q] sampling temperature of its sampled tokens
    step_seq: list[int] = field(default_factory=list)  # [S] sequence holding the step's response
    step_start: list[int] = field(default_factory=list)  # [S] position of its first response token there
    response_ids: list[list[int]] = field(default_factory=list)  # [S] the sampled ids
    loss_masks: list[list[int]] = field(default_factory=list)  # [S] per response id
    behaviour_logprobs: list[list[float] | None] = field(default_factory=list)  # [S] None when not recorded
    behaviour_entropies: list[list[float] | None] = field(default_factory=list)  # [S] None when not recorded
    allowed: list[list[list[int] | None] | None] = field(default_factory=list)  # [S] constrained decoding sets
    versions: list[list[int]] = field(default_factory=list)  # [S] policy version per response id (-1: unknown)
    turn: list[int] = field(default_factory=list)  # [S] turn number within its trajectory
    env_seconds: list[float] = field(default_factory=list)  # [S] wall time of the env step
    rewards: list[float] = field(default_factory=list)  # [S] the env's reward for the turn
    observations: list[str] = field(default_factory=list)  # [S] the observation the turn acted on
    infos: list[dict[str, Any]] = field(default_factory=list)  # [S] the turn's env info (Step.info, not copied)
    traj_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # [S] step -> trajectory
    returns: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [T] sum of the episode's rewards
    group_ids: list[object] = field(default_factory=list)  # [T]
    episode_rewards: list[list[float]] = field(default_factory=list)  # [T] every turn's env reward, steps or not
    won: list[bool] = field(default_factory=list)  # [T]
    inclusion: list[float | None] = field(default_factory=list)  # [T] meta["inclusion_probability"] (None: not recorded)
    dropped_episodes: int = 0  # episodes left out (error set, or no sampled tokens)

    @property
    def n_steps(self) -> int:
        return len(self.response_ids)

    @property
    def n_trajectories(self) -> int:
        return int(self.returns.numel())

    def step_tokens(self) -> list[int]:
        """Trainable (loss-masked) tokens per step."""
        return [sum(1 for m in mask if m) for mask in self.loss_masks]

    def seq_lengths(self) -> list[int]:
        return [len(s) for s in self.sequences]

    def seq_steps(self) -> list[list[int]]:
        """The steps of each sequence, in order."""
        out: list[list[int]] = [[] for _ in self.sequences]
        for step, seq in enumerate(self.step_seq):
            out[seq].append(step)
        return out


def sampling_temperature(sampling: dict | None, where: str) -> float:
    """The temperature a transcript's sampled tokens were drawn with, checked for training.

    Recorded settings are the data's own: the learner recomputes exactly that distribution. A
    transcript without settings (expert demonstrations, stores from before they were recorded) is
    scored at temperature 1. Greedy samples (temperature 0) and truncated sampling (top-k, top-p < 1)
    are refused: a greedy token has no sampling probability, and the truncated distribution's support
    depends on the weights being trained, so its ratios cannot be recomputed exactly (sample with
    top_p=1, top_k=0 for training; evaluate with whatever you like).
    """
    if sampling is None:
        return 1.0
    temperature = float(sampling.get("temperature", 1.0))
    if temperature <= 0:
        raise ValueError(f"{where} was sampled greedily (temperature 0): there is no distribution to train; sample with temperature > 0")
    if float(sampling.get("top_p", 1.0)) < 1.0 or int(sampling.get("top_k", 0)) > 0:
        raise ValueError(
            f"{where} was sampled with top_p={sampling.get('top_p')}, top_k={sampling.get('top_k')}: the learner "
            "cannot recompute a truncated distribution exactly; sample training rollouts with top_p=1, top_k=0"
        )
    return temperature


def build_batch(episodes: Sequence[Episode]) -> StepBatch:
    """The transcripts of ``episodes`` as sequences and steps, checking every transcript's fields.

    Episodes with ``error`` set failed outside the task and are left out (counted in
    ``dropped_episodes``), as are episodes without sampled tokens. Turns without sampled ids carry no
    gradient and are not steps, but their episode's return still counts for its group. Episodes
    without ``group_id`` are grouped by ``(env_id, task_id)``. Raises :class:`NoUsableEpisodesError`
    when nothing is left, and ``ValueError`` naming the episode when a transcript is inconsistent.
    """
    batch = StepBatch()
    traj_index: list[int] = []
    returns: list[float] = []
    for e_index, episode in enumerate(episodes):
        where = f"episode #{e_index} ({episode.env_id} task {episode.task_id!r})"
        if episode.error is not None or not any(any(t.sampled) for t in episode.transcripts):
            batch.dropped_episodes += 1
            continue
        t = len(returns)
        returns.append(episode.episode_return)
        batch.group_ids.append(episode.group_id if episode.group_id is not None else (episode.env_id, episode.task_id))
        batch.won.append(bool(episode.won))
        batch.episode_rewards.append([float(s.reward) for s in episode.steps])
        batch.inclusion.append(episode.meta.get("inclusion_probability"))
        for transcript in episode.transcripts:
            try:
                transcript.check()
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            spans = transcript.spans()
            if not spans:
                continue
            q = len(batch.sequences)
            batch.sequences.append(list(transcript.ids))
            batch.seq_traj.append(t)
            batch.seq_temperature.append(sampling_temperature(transcript.sampling, where))
            allowed = transcript.extras.get(ALLOWED, {})
            for turn, (_, start, end) in spans.items():
                if start == 0:
                    raise ValueError(f"{where} turn {turn}: a response must follow at least one prompt id")
                if not 0 <= turn < len(episode.steps):
                    raise ValueError(f"{where}: transcript turn {turn} has no step ({len(episode.steps)} steps)")
                mask = transcript.loss_mask[start:end]
                logprobs = None if transcript.logprobs is None else transcript.logprobs[start:end]
                if logprobs is not None and any(not math.isfinite(v) for v, m in zip(logprobs, mask, strict=True) if m):
                    raise ValueError(f"{where} turn {turn}: non-finite behaviour logprob on a trained token")
                step = episode.steps[turn]
                batch.step_seq.append(q)
                batch.step_start.append(start)
                batch.response_ids.append(transcript.ids[start:end])
                batch.loss_masks.append(mask)
                batch.behaviour_logprobs.append(logprobs)
                batch.behaviour_entropies.append(None if transcript.entropies is None else transcript.entropies[start:end])
                sets = [allowed.get(i) for i in range(start, end)] if allowed else None
                batch.allowed.append(sets)
                batch.versions.append(transcript.versions[start:end])
                batch.turn.append(turn)
                batch.env_seconds.append(float(step.env_seconds))
                batch.rewards.append(float(step.reward))
                batch.observations.append(step.observation)
                batch.infos.append(step.info)
                traj_index.append(t)
    if not batch.response_ids:
        raise NoUsableEpisodesError(
            f"no usable episodes: {len(episodes)} given, {batch.dropped_episodes} failed or carry no sampled tokens"
        )
    batch.traj_index = torch.tensor(traj_index, dtype=torch.long)
    batch.returns = torch.tensor(returns, dtype=torch.float32)
    return batch


def micro_batches(lengths: Sequence[int], indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split ``indices`` (sequences) into micro-batches whose padded size ``rows * longest`` fits ``max_tokens``.

    Sequences are taken longest first (less padding); one longer than ``max_tokens`` gets a
    micro-batch of its own. Deterministic for the same input.
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
    batch: StepBatch, seq_indices: Sequence[int], pad_id: int, device: torch.device, steps_of: list[list[int]] | None = None
) -> dict[str, Any]:
    """Padded sequences plus step-shaped views of their scored positions.

    ``input_ids``, ``attention_mask``, ``targets``: ``[B, L]`` (``targets`` is ``IGNORE`` where
    nothing is scored), ``temperature [B]`` (each sequence's sampling temperature) and ``allowed``:
    ``None``, or ``(mask [B, L], ids [N_c, K])`` for the positions constrained decoding restricted
    (see :func:`~agentrl.training.logprobs.token_logprobs_entropy`). For the ``n`` steps of these
    sequences (``steps``, step indices in order) with ``R`` = longest response: ``step_seq [n, 1]``
    and ``step_pos [n, R]`` index the ``[B, L]`` scores (``logp[step_seq, step_pos]``), and ``mask``,
    ``old_logp``: ``[n, R]``.
    """
    steps_of = steps_of if steps_of is not None else batch.seq_steps()
    length = max(len(batch.sequences[q]) for q in seq_indices)
    b = len(seq_indices)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    steps = [i for q in seq_indices for i in steps_of[q]]
    width = max(len(batch.response_ids[i]) for i in steps)
    step_seq = torch.zeros((len(steps), 1), dtype=torch.long)
    step_pos = torch.zeros((len(steps), width), dtype=torch.long)
    mask = torch.zeros((len(steps), width), dtype=torch.float32)
    old_logp = torch.zeros((len(steps), width), dtype=torch.float32)
    allowed_mask = torch.zeros((b, length), dtype=torch.bool)
    allowed_sets: list[list[int]] = []  # row-major order of allowed_mask
    k = 0
    for r, q in enumerate(seq_indices):
        ids = batch.sequences[q]
        input_ids[r, : len(ids)] = torch.tensor(ids)
        attention_mask[r, : len(ids)] = 1
        for i in steps_of[q]:
            response = batch.response_ids[i]
            n, start = len(response), batch.step_start[i]
            positions = torch.arange(start - 1, start - 1 + n)  # position p-1+j scores response token j
            targets[r, positions] = torch.tensor(response)
            step_seq[k] = r
            step_pos[k, :n] = positions
            mask[k, :n] = torch.tensor(batch.loss_masks[i], dtype=torch.float32)
            if batch.behaviour_logprobs[i] is not None:
                old_logp[k, :n] = torch.tensor(batch.behaviour_logprobs[i], dtype=torch.float32)
            for j, ids_allowed in enumerate(batch.allowed[i] or ()):
                if ids_allowed is not None:
                    allowed_mask[r, start - 1 + j] = True
                    allowed_sets.append(ids_allowed)
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
    out["temperature"] = torch.tensor([batch.seq_temperature[q] for q in seq_indices], dtype=torch.float32)
    tensors: dict[str, Any] = {key: v.to(device) for key, v in out.items()}
    tensors["steps"] = steps
    tensors["allowed"] = None
    if allowed_sets:
        ids = torch.full((len(allowed_sets), max(map(len, allowed_sets))), -1, dtype=torch.long)
        for row, ids_allowed in enumerate(allowed_sets):
            ids[row, : len(ids_allowed)] = torch.tensor(ids_allowed)
        tensors["allowed"] = (allowed_mask.to(device), ids.to(device))
    return tensors
