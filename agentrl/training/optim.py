"""Optimizer and learning-rate schedule builders (plain arguments, no config object)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def warmup_cosine(warmup_steps: int, total_steps: int | None, min_lr_ratio: float = 0.0):
    """Multiplier of the peak lr after ``step`` optimizer steps (for ``LambdaLR``).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the first step
    already moves), then a half cosine from 1 down to ``min_lr_ratio`` at ``total_steps``, flat after;
    ``total_steps=None``: constant after the warm-up.
    """
    if total_steps is None:
        return lambda step: (step + 1) / warmup_steps if step < warmup_steps else 1.0
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"need warmup_steps >= 0, total_steps >= 1, 0 <= min_lr_ratio <= 1; got "
            f"{warmup_steps}, {total_steps}, {min_lr_ratio}"
        )

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` with the warm-up + cosine schedule."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio)
    )
    return optimizer, scheduler
