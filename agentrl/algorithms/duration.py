"""Arrival-bias weights for asynchronous batching: the paper's duration weights, and inclusion weights.

**The paper's model and estimator** (RL for ML-Engineering Agents, Yang, He-Yueya and Liang, arXiv
2509.01684, section "duration-aware gradient updates"). Asynchronous actors send results to the
learner as they finish. In a fixed time ``T`` an action ``x`` that takes ``dt_x`` seconds is
assumed to arrive ``n_x ~ pi(x|s) * T / dt_x`` times, so its total gradient contribution carries a
factor ``1 / dt_x`` and fast actions dominate. The fix multiplies each action's term by its
duration::

    grad J = E[ sum_k dt_k * grad log pi(a_k | s_k) * A(s_k, a_k) ]

with ``dt_k`` rescaled by the batch's mean duration so the gradient's scale stays put:
``w_k = dt_k / mean_batch(dt)`` (the ``duration`` shaper below).

**When that is right.** ``n_x ~ pi(x) * T / dt_x`` says an actor spends a share ``pi(x)`` of its
*time* on ``x`` (as if it drew an action and then kept repeating it). Actors that draw every
action afresh and loop (play, report, draw again) spend a share ``pi(x) dt_x / E_pi[dt]`` of their
time on ``x`` instead, and their results arrive at rate ``pi(x) / E_pi[dt]``: in proportion to the
policy, whatever an action costs (renewal-reward theorem). That is what agentrl's rollout workers
do, so there ``dt`` weights do not undo a bias, they make one: they scale each arm's share of the
gradient by its duration. ``benchmarks/duration_bias.py`` measures both, and
:func:`agentrl.distributed.batching.check_shaping` refuses ``duration`` in the actor-learner driver.

**What does bias an asynchronous learner** is dropping results by age: a learner that takes
whatever finished within a time window and discards what started too long ago
(:class:`~agentrl.distributed.batching.WindowBatching`) loses slow groups more often. A group that
ran ``D`` seconds was used with probability ``p(D) = clip(S + 1 - D / W, 0, 1)`` (window ``W``,
``S`` windows of staleness allowed; derivation in :mod:`agentrl.distributed.batching`), which the
batching records in ``episode.meta["inclusion_probability"]``. The ``inclusion`` shaper weights
every step of a used group by ``1 / p`` (Horvitz-Thompson), rescaled so the batch's mean weight is 1
(the learning rate keeps its meaning)::

    w_g = (1 / p_g) / mean_batch(1 / p)

Before the rescaling, ``sum_g x_g / p_g`` over the used groups is an unbiased estimate of the sum of
``x_g`` over every group started. The rescaled (self-normalised, Hajek) estimate is a ratio of two
such sums, consistent with a bias of order ``1 / groups per batch`` that grows with the spread of
the weights; ``benchmarks/duration_bias.py`` measures it (within its confidence intervals there).
A normaliser fixed before the batch is seen (a running mean of past batches' ``sum(1 / p)``) would
remove that ratio bias in steady state, but the first windows of a run hold few groups and their
small normalisers inflated the early updates: it did worse in the same simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentrl.algorithms.registry import AdvantageShaper, Reduce, Steps, register
from agentrl.config import setting


def weights(durations: torch.Tensor | Sequence[float | None]) -> torch.Tensor:
    """``dt / mean(dt)`` over the batch: ``[S] -> [S]`` float32.

    Guard: a missing duration (``None``/NaN) or a non-positive one (``Step.env_seconds`` defaults
    to 0.0 = "not measured") is replaced by the mean of the measured ones, i.e. gets weight 1; if
    nothing was measured every weight is 1. A negative or infinite duration is an error.
    """
    if isinstance(durations, torch.Tensor):
        values = durations.detach().to(torch.float64).cpu().tolist()
    else:
        values = [math.nan if d is None else float(d) for d in durations]
    for d in values:
        if d < 0 or math.isinf(d):
            raise ValueError(f"durations must be finite and >= 0 seconds, got {d}")
    measured = [d for d in values if not math.isnan(d) and d > 0]
    if not measured:
        return torch.ones(len(values), dtype=torch.float32)
    fill = sum(measured) / len(measured)
    filled = torch.tensor([d if (not math.isnan(d) and d > 0) else fill for d in values], dtype=torch.float64)
    return (filled / filled.mean()).to(torch.float32)


@register
class DurationWeights(AdvantageShaper):
    """The paper's ``dt / mean_batch(dt)`` per step: right only under its arrival model (module docstring)."""

    name = "duration"

    def __call__(self, steps: Steps, advantages: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        return advantages * batch_weights(steps.env_seconds, reduce).to(advantages.device)


def batch_weights(durations: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """:func:`weights` with the means taken over the whole batch of a data-parallel learner."""
    values = durations.detach().to(torch.float64).cpu()
    if bool(((values < 0) | torch.isinf(values)).any()):
        raise ValueError(f"durations must be finite and >= 0 seconds, got {values.tolist()}")
    measured = ~torch.isnan(values) & (values > 0)
    n_measured = reduce.sum(measured.sum().to(torch.float64))
    if n_measured.item() == 0:
        return torch.ones(len(values), dtype=torch.float32)
    fill = reduce.sum(torch.where(measured, values, 0.0).sum()) / n_measured
    filled = torch.where(measured, values, fill)
    return (filled / reduce.mean(filled)).to(torch.float32)


def inverse_probabilities(probabilities: torch.Tensor, max_weight: float | None = None) -> torch.Tensor:
    """``1 / p`` per trajectory (``[T]`` float64), optionally capped at ``max_weight``; ``p`` must be in ``(0, 1]``."""
    p = probabilities.detach().to(torch.float64).cpu()
    if bool(((p <= 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError(f"inclusion probabilities must be in (0, 1], got {p.tolist()}")
    inverse = 1.0 / p
    return inverse.clamp(max=max_weight) if max_weight is not None else inverse


@register
class InclusionWeights(AdvantageShaper):
    """Weight each step by ``1 / p`` of its group, rescaled to batch mean 1: corrects what a time window drops."""

    name = "inclusion"

    @dataclass
    class Config:
        max_weight: float | None = setting(None, "cap on 1 / p (None: no cap; a cap trades a bias for less variance)")

    def __call__(self, steps: Steps, advantages: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        if steps.inclusion is None:
            raise ValueError(
                "shaping 'inclusion' needs each episode's inclusion probability "
                "(episode.meta['inclusion_probability'], set by the actor-learner's batching='window'); "
                "these episodes carry none"
            )
        inverse = inverse_probabilities(steps.inclusion, self.config.max_weight)  # [T]
        traj = inverse / reduce.mean(inverse)  # [T] batch mean 1 over trajectories
        return advantages * traj.to(advantages.device, advantages.dtype)[steps.traj_index.to(advantages.device)]
