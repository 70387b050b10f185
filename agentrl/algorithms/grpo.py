"""GRPO and Dr.GRPO trajectory advantages (DeepSeekMath arXiv 2402.03300; Dr.GRPO arXiv 2503.20783).

Each trajectory is compared with the other trajectories sampled for the same task (its group):
``A_i = (R_i - mean_g R) / (std_g R + eps)`` with the unbiased (Bessel) standard deviation.
Dr.GRPO drops the division by the standard deviation, which otherwise up-weights groups whose
returns barely differ. A group of one has nothing to compare with, so its advantage is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from agentrl.algorithms._common import IdsLike, as_codes
from agentrl.algorithms.registry import AdvantageEstimator, Reduce, Steps, register
from agentrl.config import setting


def advantages(
    returns: torch.Tensor,
    group_ids: IdsLike,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-trajectory group-relative advantages: ``returns [T], group_ids [T] -> [T]``.

    ``scale_by_std=False`` is Dr.GRPO (centre only). Groups need not be contiguous.
    """
    returns = torch.as_tensor(returns)
    if returns.dim() != 1:
        raise ValueError(f"returns must be 1-D [T], got shape {tuple(returns.shape)}")
    codes, n_groups = as_codes(group_ids, device=returns.device)
    if codes.numel() != returns.numel():
        raise ValueError(f"{returns.numel()} returns but {codes.numel()} group ids")
    if returns.numel() == 0:
        return returns.clone()
    dtype = returns.dtype if returns.is_floating_point() else torch.float32
    # statistics in float64: equal float32 returns then centre to exactly 0 (a float32 mean of
    # equal values can be off by an ulp, which the division by std + eps would blow up)
    out_dtype, returns = dtype, returns.to(torch.promote_types(dtype, torch.float64))

    count = torch.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(
        0, codes, torch.ones_like(returns)
    )  # [G]
    group_sum = torch.zeros_like(count).index_add_(0, codes, returns)
    group_mean = group_sum / count  # [G]
    centred = returns - group_mean[codes]  # [T]
    if scale_by_std:
        squares = torch.zeros_like(count).index_add_(0, codes, centred**2)
        group_std = (squares / (count - 1).clamp(min=1)).sqrt()  # [G], Bessel's correction
        adv = centred / (group_std[codes] + eps)
    else:
        adv = centred
    return torch.where(count[codes] > 1, adv, torch.zeros_like(adv)).to(out_dtype)


@register
class GRPO(AdvantageEstimator):
    """GRPO: each trajectory's group-relative advantage, given to every one of its steps.

    Looks only inside a group, so a data-parallel shard of whole groups needs no reduction.
    """

    name = "grpo"
    scale_by_std: ClassVar[bool] = True

    @dataclass
    class Config:
        eps: float = setting(1e-6, "added to the group's standard deviation")

    def __call__(self, steps: Steps, reduce: Reduce) -> torch.Tensor:
        traj_adv = advantages(steps.returns, steps.group_ids, scale_by_std=self.scale_by_std, eps=self.config.eps)  # [T]
        return traj_adv[steps.traj_index]  # [S]


@register
class DrGRPO(GRPO):
    """Dr.GRPO: GRPO without the division by the group's standard deviation."""

    name = "dr_grpo"
    scale_by_std = False
