"""The learner over several processes with torch.distributed FSDP2 (``fully_shard``), data parallel.

Each rank holds a shard of the weights, gradients and AdamW moments (FSDP2 = ZeRO-3 on DTensors)
and scores a shard of the batch: whole GRPO groups, balanced by trained tokens, assigned the same
way on every rank (every rank is given the same episodes, e.g. from the same store query).
The update is the single-process :class:`~agentrl.training.learner.Learner` update, made exact:

* GRPO / Dr.GRPO advantages only look inside a group, so a shard of whole groups gives each row
  the advantage it has in the full batch;
* the loss is a mean over the full batch's tokens (or rows), but each rank's Learner divides by its
  own shard's count and FSDP2 averages gradients over ranks. A gradient-scale hook on the LM head's
  output multiplies rank ``r``'s gradient by ``c_r = world * T_r / T`` (``T`` trained tokens; rows
  for ``seq-mean-token-mean``): every parameter's gradient flows through the logits, so the
  averaged gradient is exactly the full-batch one;
* duration weights ``dt / mean(dt)`` use the shard's mean; ``c_r`` also carries
  ``mean_shard(dt) / mean_batch(dt)`` (the PPO-clip loss is linear in the advantage, and its clip
  decision depends only on its sign). Exact when every turn's duration was measured; a turn
  without one gets weight 1 in both cases, which this factor then scales;
* the global gradient norm for clipping comes from DTensor reductions across ranks.

Not supported (rejected with a ValueError): EMPG, EPO and Clip-Cov/KL-Cov (batch-wide statistics),
a KL reference, several mini-batches per update. Every rank runs one micro-batch per optimizer step
(collectives must line up), so ``micro_batch_tokens`` is ignored: the shard must fit in memory.

Launch with ``torchrun --nproc-per-node N`` (``init_process_group`` from the environment) or
``torch.multiprocessing.spawn``; gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from agentrl.training.batch import build_batch
from agentrl.training.config import LearnerConfig
from agentrl.training.learner import Learner
from agentrl.trajectory import Episode


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class _TiedHead(nn.Module):
    """The LM head of a tied-embedding model: reads the (unsharded) input embedding weight at call time."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = [embedding]  # a list: not a submodule, so its weight is not registered twice

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.embedding[0].weight)


def shard_model(model: nn.Module, mesh: Any = None) -> nn.Module:
    """``fully_shard`` every decoder layer, the decoder (embeddings, final norm) and the LM head.

    The learner calls the decoder and the head directly (not ``model.forward``), so those are the
    FSDP units whose hooks gather and reduce. The decoder unit stays unsharded from its forward to
    its backward; a tied head therefore reads the gathered embedding weight (:class:`_TiedHead`),
    and its gradient lands on that weight before the decoder's reduce-scatter.
    """
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    tied = head.weight is decoder.get_input_embeddings().weight
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(decoder, mesh=mesh, reshard_after_forward=False)
    if tied:
        model.set_output_embeddings(_TiedHead(decoder.get_input_embeddings()))
    else:
        fully_shard(head, mesh=mesh)
    return model


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


class FSDPLearner:
    """A :class:`Learner` over the ranks of the default process group, its model sharded with FSDP2."""

    def __init__(self, model: nn.Module, config: LearnerConfig, *, pad_token_id: int = 0, logger: Any = None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("FSDPLearner needs torch.distributed initialised (torchrun or mp.spawn)")
        unsupported = [
            name for name, bad in (
                ("shaping other than duration", any(n != "duration" for n in config.shaping)),
                ("terms", bool(config.terms)), ("policy_loss", config.policy_loss != "clip"),
                ("mini_batches", config.mini_batches != 1), ("lora", config.lora is not None),
            ) if bad
        ]  # fmt: skip
        if unsupported:
            raise ValueError(f"FSDPLearner does not support {', '.join(unsupported)} (batch-wide statistics)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        config = dataclasses.replace(config, micro_batch_tokens=1 << 40)  # one micro-batch: collectives line up
        embed = model.get_decoder().get_input_embeddings()
        embed_name = next(n for n, m in model.named_modules() if m is embed)
        self._embed_key = f"{embed_name}.weight"
        tied_keys = [n for n, p in model.state_dict(keep_vars=True).items() if p is embed.weight]
        self._head_key = next((k for k in tied_keys if k != self._embed_key), None)  # None when untied
        self.model = shard_model(model)
        self.learner = Learner(self.model, config, pad_token_id=pad_token_id, logger=logger if self.rank == 0 else None)
        self._scale = 1.0
        self.model.get_output_embeddings().register_forward_hook(
            lambda _module, _inputs, output: _ScaleGrad.apply(output, self._scale)
        )

    @property
    def step(self) -> int:
        return self.learner.step

    def _shard_scale(self, episodes: list[Episode], mine: list[int]) -> float:
        """``c_r``: this rank's gradient multiplier (see the module docstring)."""
        cfg = self.learner.config
        full, part = build_batch(episodes), build_batch([episodes[i] for i in mine])
        if cfg.agg == "token-mean":
            scale = self.world_size * sum(part.step_tokens()) / sum(full.step_tokens())
        else:
            scale = self.world_size * sum(t > 0 for t in part.step_tokens()) / sum(t > 0 for t in full.step_tokens())
        if "duration" in cfg.shaping:  # exact when every turn's duration was measured (> 0)
            scale *= _mean_positive(part.env_seconds) / _mean_positive(full.env_seconds)
        return scale

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        """One update on the whole batch ``episodes`` (identical on every rank); returns this rank's metrics."""
        shards = split_groups(episodes, self.world_size)
        mine = shards[self.rank]
        self._scale = self._shard_scale(episodes, mine)
        return self.learner.update([episodes[i] for i in mine])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded weights on CPU on rank 0, ``{}`` on the others (a collective: call on every rank)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        if self._head_key and self._embed_key in state:
            state[self._head_key] = state[self._embed_key]  # the tied head, under its usual name
        return state


def _mean_positive(values: list[float | None]) -> float:
    measured = [float(v) for v in values if v is not None and v == v and v > 0]
    return sum(measured) / len(measured) if measured else 1.0


class RankZeroLearner:
    """Rank 0's face of an :class:`FSDPLearner`: broadcasts each batch to the other ranks, then updates.

    The actor-learner driver runs on rank 0 only and talks to this object like a plain learner
    (``update``, ``step``, ``model``, ``full_state_dict``); ranks 1..N-1 run :func:`follow_updates`.
    :meth:`close` releases the followers.
    """

    def __init__(self, learner: FSDPLearner):
        if learner.rank != 0:
            raise ValueError("RankZeroLearner runs on rank 0; the other ranks call follow_updates")
        self.learner = learner
        self.model = learner.model
        self.config = learner.learner.config

    @property
    def step(self) -> int:
        return self.learner.step

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        import torch.distributed as dist

        dist.broadcast_object_list([("update", episodes)], src=0)
        return self.learner.update(episodes)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        import torch.distributed as dist

        dist.broadcast_object_list([("state", None)], src=0)
        return self.learner.full_state_dict()

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
        else:
            raise RuntimeError(f"unknown message from rank 0: {kind!r}")
