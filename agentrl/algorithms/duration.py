"""Duration-aware policy-gradient weights (RL for ML-Engineering Agents, arXiv 2509.01684).

With asynchronous actors an action that takes ``dt`` seconds is sampled about ``1/dt`` times as
often as it would be synchronously, so fast (often poor) actions dominate every batch. Weighting
each action's policy-gradient term by ``dt_k / mean_batch(dt)`` undoes that bias while keeping the
batch-mean weight at 1 (the learning rate keeps its meaning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from agentrl.algorithms.registry import AdvantageShaper, Reduce, Steps, register


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
    """Scale each step's advantage by ``dt / mean_batch(dt)`` (see the module docstring for when that is right)."""

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
