"""The learner over several processes with torch.distributed FSDP2 (``fully_shard``), data parallel.

Each rank holds a shard of the weights, gradients and AdamW moments (FSDP2 = ZeRO-3 on DTensors)
and scores a shard of the batch: whole GRPO groups, balanced by trained tokens, assigned the same
way on every rank (every rank is given the same episodes, e.g. from the same store query). The
update is the single-process :class:`~agentrl.training.learner.Learner` update, exactly, for every
algorithm plug-in and option (mini-batches, micro-batches, KL, LoRA, constrained decoding, stale
data):

* **whole-batch statistics are all-reduced.** The learner is given :class:`AllReduce`, whose
  ``sum``/``min``/``max``/``cat`` run over the default process group. Every plug-in takes its batch
  statistics through it (EMPG's entropy range and means, duration means, Clip-Cov/KL-Cov's token
  means, count and selection), and so do the learner's own normalisers: the trained tokens or rows
  of a mini-batch (token-mean / seq-mean aggregation), EPO's trajectory count (its nested-mean
  weights ``1 / (n_traj * n_turns)``), the batch entropy EPO's history keeps, the metrics. GRPO,
  Dr.GRPO and GiGPO look only inside a group, and a rank holds whole groups;
* **each rank's loss is its exact share of the global loss**, so the global gradient is the *sum*
  of the ranks' gradients: every FSDP unit reduce-scatters with a sum (gradient divide factor 1,
  sum-only collectives) instead of FSDP2's default average;
* **mini-batches are the single process's.** The split shuffles the *whole batch's* trajectories
  with the learner's generator (same seed and draws on every rank); each rank trains its part of
  each mini-batch. Clip-Cov's random choice permutes the whole mini-batch's candidates, ordered by
  step, with the same generator, and KL-Cov's top-k ranks every rank's tokens;
* **collectives line up.** Every forward of a sharded model all-gathers and every backward
  reduce-scatters, so every rank runs the same passes: the number of micro-batches is the largest
  any rank has, and a rank with fewer (or with no trajectory in a mini-batch) runs passes of one pad
  token that move no weight; "are any steps stale" and "is the loss finite" are decided over all ranks;
* **the fused kernel stays.** The decoder and the LM head are one FSDP unit, kept unsharded from
  the decoder's forward to the backward, so the head's weight is the whole gathered matrix when
  :func:`~agentrl.training.logprobs.token_logprobs_entropy` hands it to the vocabulary-chunked
  kernel (no ``[N, V]`` logits); its gradient is reduce-scattered with the decoder's. Tied
  embeddings are one shared parameter of that unit;
* **KL**: the frozen reference is copied before sharding and sharded the same way; under LoRA it is
  the sharded model with its adapters off. **LoRA**: adapters are applied before sharding (FSDP2
  shards frozen and trainable parameters side by side); :meth:`FSDPLearner.lora_adapter` gathers
  them for publishing.

The global gradient norm for clipping comes from DTensor reductions across ranks. Launch with
``torchrun --nproc-per-node N`` (``init_process_group`` from the environment) or
``torch.multiprocessing.spawn``; gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agentrl.algorithms.registry import Reduce
from agentrl.training.batch import StepBatch, trainable_episode
from agentrl.training.config import LearnerConfig
from agentrl.training.learner import Learner, _apply_lora, build_plugins
from agentrl.trajectory import Episode


class AllReduce(Reduce):
    """Whole-batch reductions over the ranks of the default process group (every rank calls each one)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _all_reduce(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        y = x.detach().to(self.device, copy=True)
        self.dist.all_reduce(y, op=op)
        return y.to(x.device)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, self.dist.ReduceOp.SUM)

    def min(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, self.dist.ReduceOp.MIN)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, self.dist.ReduceOp.MAX)

    def cat(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.dist.get_world_size())]
        self.dist.all_gather(sizes, torch.tensor([len(x)], device=self.device))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=self.device)
        padded[: len(x)] = x.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        self.dist.all_gather(parts, padded)
        return torch.cat([part[: int(n)] for part, n in zip(parts, sizes, strict=True)]).to(x.device)


def shard_model(model: nn.Module, mesh: Any = None) -> nn.Module:
    """``fully_shard`` every decoder layer, then the decoder with the LM head's weight in its unit.

    The learner calls the decoder and reads the head's weight directly (not ``model.forward``), so
    the decoder is the root unit, and the head's weight must be gathered when the fused kernel reads
    it: the head is made a submodule of the decoder while ``fully_shard`` collects the unit's
    parameters (FSDP2 keeps which module owns each parameter and swaps the gathered weight in there),
    then detached again (state-dict names unchanged). The unit stays unsharded from the decoder's
    forward to the backward (``reshard_after_forward=False``); the head stays a plain ``nn.Linear``
    and its gradient is reduce-scattered with the unit's. A tied head shares the embedding's
    parameter inside the unit. Every unit reduce-scatters gradients with a plain sum: the learner's
    losses are each rank's exact share of the global loss.
    """
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    decoder.add_module(_HEAD_IN_UNIT, head)
    try:
        fully_shard(decoder, mesh=mesh, reshard_after_forward=False)
    finally:
        del decoder._modules[_HEAD_IN_UNIT]
    for unit in (*decoder.layers, decoder):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # no pre/post division: the sum itself
    return model


_HEAD_IN_UNIT = "agentrl_lm_head"


def split_groups(episodes: list[Episode], world_size: int) -> list[list[int]]:
    """Episode indices per rank: whole groups, largest first to the rank with the fewest trained tokens."""
    tokens: dict[str, int] = {}
    members: dict[str, list[int]] = {}
    for i, ep in enumerate(episodes):
        key = ep.group_id or f"#{i}"
        members.setdefault(key, []).append(i)
        tokens[key] = tokens.get(key, 0) + sum(sum(t.loss_mask) for t in ep.transcripts)
    if len(members) < world_size:
        raise ValueError(f"{len(members)} groups cannot feed {world_size} ranks: give every rank at least one group")
    shards: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for key in sorted(members, key=lambda k: (-tokens[k], k)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shards[rank].extend(members[key])
        load[rank] += tokens[key]
    return [sorted(s) for s in shards]


class _ShardLearner(Learner):
    """The :class:`Learner` of one rank: its shard's batch, placed in the whole batch's order.

    :meth:`FSDPLearner.update` sets, before each update, which of the whole batch's trajectories
    this rank holds (``traj_global``: local trajectory -> index among the batch's trainable
    episodes) and how many there are; from those come the mini-batch split and the step ids that
    order Clip-Cov/KL-Cov selections as one process would.
    """

    traj_global: list[int]
    n_traj_global: int
    dropped_global: int
    reference_unit: Any = None

    def _batch_step_ids(self, batch: StepBatch) -> list[int]:
        first: dict[int, int] = {}
        ids = []
        for i, t in enumerate(batch.traj_index.tolist()):
            first.setdefault(t, i)
            ids.append(self.traj_global[t] << 32 | (i - first[t]))  # ordered as the whole batch's steps
        return ids

    def _split(self, batch: StepBatch) -> list[list[int]]:
        n = self.config.mini_batches
        if n <= 1:
            return [list(range(len(batch.sequences)))]
        order = torch.randperm(self.n_traj_global, generator=self.generator).tolist()  # as in one process
        part = {t: k * n // len(order) for k, t in enumerate(order)}
        splits: list[list[int]] = [[] for _ in range(n)]
        for q, t in enumerate(batch.seq_traj):
            splits[part[self.traj_global[t]]].append(q)
        return [splits[k] for k in sorted(set(part.values()))]  # this rank's part of each mini-batch, maybe empty

    @torch.no_grad()
    def _reference_logp(self, batch: dict[str, Any]) -> torch.Tensor:
        logp = super()._reference_logp(batch)
        if self.reference_unit is not None:
            self.reference_unit.reshard()  # free the gathered embeddings and head until the next scoring
        return logp

    def _batch_stats(self, batch: StepBatch, step_adv: torch.Tensor, prepared: dict[str, Any]) -> dict[str, Any]:
        adv = step_adv.detach().to(torch.float64).cpu()
        sums = self.reduce.sum(torch.tensor([
            batch.n_trajectories, float(batch.returns.sum()), float(sum(batch.won)), prepared["stale_steps"],
            adv.numel(), float(adv.sum()), float((adv**2).sum()),
        ], dtype=torch.float64)).tolist()  # fmt: skip
        n_traj, returns, won, stale, n_steps, adv_sum, adv_squares = sums
        mean = adv_sum / n_steps
        variance = max(adv_squares - n_steps * mean**2, 0.0) / (n_steps - 1) if n_steps > 1 else 0.0
        empty = adv.new_tensor(torch.inf)
        return {
            "stale_steps": int(stale), "episodes": int(n_traj), "dropped_episodes": self.dropped_global,
            "return_mean": returns / n_traj, "success_rate": won / n_traj, "adv_mean": mean, "adv_std": variance**0.5,
            "adv_min": self.reduce.min(adv.min() if adv.numel() else empty).item(),
            "adv_max": self.reduce.max(adv.max() if adv.numel() else -empty).item(),
        }  # fmt: skip


class FSDPLearner:
    """A :class:`Learner` over the ranks of the default process group, its model sharded with FSDP2.

    ``model`` is the initial policy, unsharded and identical on every rank; this shards it (after
    applying LoRA when ``config.lora`` is set, and after copying the KL reference when a term needs
    one).
    """

    def __init__(self, model: nn.Module, config: LearnerConfig, *, pad_token_id: int = 0, logger: Any = None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("FSDPLearner needs torch.distributed initialised (torchrun or mp.spawn)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if config.lora is not None:
            model = _apply_lora(model, config.lora)
        reference = None
        if config.lora is None and any(term.needs_reference for term in build_plugins(config)["terms"]):
            reference = shard_model(copy.deepcopy(model).eval().requires_grad_(False))
        self.model = shard_model(model)
        self.learner = _ShardLearner(
            self.model, config, pad_token_id=pad_token_id, logger=logger if self.rank == 0 else None,
            reduce=AllReduce(), reference=reference,
        )  # fmt: skip
        if reference is not None:
            self.learner.reference_unit = reference.get_decoder()

    @property
    def step(self) -> int:
        return self.learner.step

    @property
    def config(self) -> LearnerConfig:
        return self.learner.config

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        """One update on the whole batch ``episodes`` (identical on every rank); returns this rank's metrics.

        The metrics are the whole batch's (all-reduced), the same on every rank.
        """
        usable = [i for i, episode in enumerate(episodes) if trainable_episode(episode)]
        shards = split_groups([episodes[i] for i in usable], self.world_size)
        mine = shards[self.rank]
        self.learner.traj_global = mine  # local trajectory k is the batch's trainable episode mine[k]
        self.learner.n_traj_global = len(usable)
        self.learner.dropped_global = len(episodes) - len(usable)
        return self.learner.update([episodes[usable[k]] for k in mine])

    def score_steps(self, batch: StepBatch, steps: set[int]) -> dict[int, tuple[list[float], list[float]]]:
        """:meth:`Learner.score_steps` with the sharded model: a collective, every rank calls it (a rank
        may ask for no step: it runs the passes that line the gathers up and gets ``{}``)."""
        return self.learner.score_steps(batch, steps)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded weights on CPU on rank 0, ``{}`` on the others (a collective: call on every rank).

        Under LoRA the keys are the peft model's (base weights and adapters, unmerged).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    def export_pretrained(self, path: str | os.PathLike[str], base: nn.Module | None) -> Path | None:
        """:meth:`Learner.export_pretrained` (a plain Hugging Face model, LoRA merged), written by rank 0.

        A collective: call it on every rank. ``base`` is an unsharded model of the initial policy's
        architecture on rank 0 (its weights are overwritten; ``None`` on the other ranks). Returns
        ``path`` on rank 0, ``None`` elsewhere.
        """
        state = self.full_state_dict()
        if self.rank != 0:
            return None
        if base is None:
            raise ValueError("export_pretrained needs the unsharded base model on rank 0")
        model = _apply_lora(base, self.config.lora) if self.config.lora is not None else base
        model.load_state_dict(state)  # strict: every key of the sharded model, no other
        if self.config.lora is not None:
            model = model.merge_and_unload()
        model.save_pretrained(str(path))
        return Path(path)

    def lora_adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """:meth:`Learner.lora_adapter` with the adapters gathered: on rank 0; ``({}, config)`` on the others.

        A collective under LoRA: call it on every rank. ``None`` when all weights are trained.
        """
        if self.config.lora is None:
            return None
        from peft import get_peft_model_state_dict

        state = self.full_state_dict()
        tensors = get_peft_model_state_dict(self.model, state_dict=state) if state else {}
        config = self.model.peft_config["default"].to_dict()
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        return tensors, {**config, "inference_mode": True}


class RankZeroLearner:
    """Rank 0's face of an :class:`FSDPLearner`: broadcasts each batch to the other ranks, then updates.

    The actor-learner driver runs on rank 0 only and talks to this object like a plain learner
    (``update``, ``step``, ``model``, ``score_steps``, ``full_state_dict``, ``lora_adapter``,
    ``export_pretrained``); ranks 1..N-1 run
    :func:`follow_updates`. :meth:`close` releases the followers.
    """

    def __init__(self, learner: FSDPLearner):
        if learner.rank != 0:
            raise ValueError("RankZeroLearner runs on rank 0; the other ranks call follow_updates")
        self.learner = learner
        self.model = learner.model
        self.config = learner.config

    @property
    def step(self) -> int:
        return self.learner.step

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        import torch.distributed as dist

        dist.broadcast_object_list([("update", episodes)], src=0)
        return self.learner.update(episodes)

    def score_steps(self, batch: StepBatch, steps: set[int]) -> dict[int, tuple[list[float], list[float]]]:
        """Rank 0 scores ``steps`` of ``batch`` (the token-exactness check); the others run lined-up passes."""
        import torch.distributed as dist

        dist.broadcast_object_list([("score", batch)], src=0)
        return self.learner.score_steps(batch, steps)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        import torch.distributed as dist

        dist.broadcast_object_list([("state", None)], src=0)
        return self.learner.full_state_dict()

    def export_pretrained(self, path: str | os.PathLike[str], base: nn.Module) -> Path:
        """:meth:`FSDPLearner.export_pretrained` from rank 0 (``base``: an unsharded model to write into)."""
        import torch.distributed as dist

        dist.broadcast_object_list([("state", None)], src=0)  # the followers join the gather
        written = self.learner.export_pretrained(path, base)
        assert written is not None
        return written

    def lora_adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        import torch.distributed as dist

        if self.config.lora is None:
            return None
        dist.broadcast_object_list([("adapter", None)], src=0)
        return self.learner.lora_adapter()

    def close(self) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([("stop", None)], src=0)


def follow_updates(learner: FSDPLearner) -> int:
    """Ranks 1..N-1: mirror rank 0's updates and state gathers until it says stop; returns the updates done."""
    import torch.distributed as dist

    done = 0
    while True:
        message: list[Any] = [None]
        dist.broadcast_object_list(message, src=0)
        kind, payload = message[0]
        if kind == "stop":
            return done
        if kind == "update":
            learner.update(payload)
            done += 1
        elif kind == "state":
            learner.full_state_dict()
        elif kind == "score":
            learner.score_steps(payload, set())
        elif kind == "adapter":
            learner.lora_adapter()
        else:
            raise RuntimeError(f"unknown message from rank 0: {kind!r}")
