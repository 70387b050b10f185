"""EMPG: Entropy-Modulated Policy Gradients (arXiv 2509.09265).

A long-horizon agent gets one sparse reward per trajectory, so plain GRPO gives every turn the
same advantage. EMPG rescales it by how certain the policy was at each turn: confident turns get
larger updates, uncertain turns smaller ones, and a turn that leads to a confident next turn gets a
small "future clarity" bonus. With per-turn entropy ``H`` over the steps ``B`` of the batch:

    H~      = (H - min_B H) / (max_B H - min_B H + 1e-8)
    g       = exp(-k H~) / mean_B exp(-k H~)           # self-calibrating gradient scale, mean 1
    f_next  = exp(-k' H~_{t+1}), 0 at a trajectory's last step
    A_mod   = g * A_traj + zeta * f_next
    A_final = A_mod - mean_B A_mod                      # centred, no std division

Implemented from these equations (not from the project page's pseudo-code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms._common import IdsLike, as_codes, check_contiguous
from agentrl.algorithms.registry import AdvantageShaper, Reduce, Steps, register
from agentrl.config import setting

ENTROPY_RANGE_EPS = 1e-8


@torch.no_grad()
def modulate_advantages(
    step_advantages: torch.Tensor,
    step_entropy: torch.Tensor,
    traj_ids: IdsLike,
    k: float = 1.0,
    k_future: float = 1.0,
    zeta: float = 0.1,
    reduce: Reduce | None = None,
    trainable: torch.Tensor | None = None,
) -> torch.Tensor:
    """EMPG advantages per step: ``A [S], H [S], traj_ids [S] -> A_final [S]``.

    ``step_advantages`` is the trajectory advantage broadcast to each of its steps; ``step_entropy``
    the turn's token-mean entropy. Steps of a trajectory must be contiguous and in turn order.
    No gradient flows through (advantages are constants of the loss). ``reduce`` takes the batch
    min, max and means over every rank of a data-parallel learner (one process: this batch).

    ``trainable [S]`` (bool): only these steps take part. A turn whose every token was forced
    (constrained decoding left one choice) has no policy-gradient term and its entropy is not a
    measure of the policy's uncertainty; counting it with entropy 0 would pull the batch minimum to
    0, give the turn before it a full future-clarity bonus and shift the centring. So the statistics,
    the "next step" of ``f_next`` (the next trainable step of the trajectory) and the centring all
    run over the trainable steps; the others keep their advantage (it multiplies no token).
    """
    reduce = reduce or Reduce()
    if trainable is not None and not bool(trainable.all()):
        codes, _ = as_codes(traj_ids, device=step_advantages.device)
        keep = trainable.to(torch.bool).nonzero().squeeze(-1)
        out = step_advantages.clone().to(torch.promote_types(step_advantages.dtype, torch.float32))
        out[keep] = modulate_advantages(step_advantages[keep], step_entropy[keep], codes[keep], k, k_future, zeta, reduce)
        return out
    if step_advantages.shape != step_entropy.shape or step_advantages.dim() != 1:
        raise ValueError(
            f"step_advantages and step_entropy must both be [S]; got {tuple(step_advantages.shape)} "
            f"and {tuple(step_entropy.shape)}"
        )
    codes, _ = as_codes(traj_ids, device=step_advantages.device)
    if codes.numel() != step_advantages.numel():
        raise ValueError(f"{step_advantages.numel()} steps but {codes.numel()} trajectory ids")
    check_contiguous(codes)
    dtype = torch.promote_types(step_advantages.dtype, torch.float32)
    adv = step_advantages.to(dtype)
    entropy = step_entropy.detach().to(dtype)

    # A shard without steps still takes part in every reduction (the other ranks wait for it).
    empty = entropy.numel() == 0
    low = reduce.min(entropy.new_tensor(torch.inf) if empty else entropy.min())
    high = reduce.max(entropy.new_tensor(-torch.inf) if empty else entropy.max())
    normalised = (entropy - low) / (high - low + ENTROPY_RANGE_EPS)  # H~ [S]
    g = torch.exp(-k * normalised)
    g = g / reduce.mean(g)  # [S], batch mean 1
    f = torch.exp(-k_future * normalised)  # [S]
    same_traj_next = torch.zeros_like(adv, dtype=torch.bool)
    same_traj_next[:-1] = codes[1:] == codes[:-1]  # step s has a next step in its trajectory
    f_next = torch.zeros_like(f)
    f_next[:-1] = f[1:]
    f_next = torch.where(same_traj_next, f_next, torch.zeros_like(f_next))  # [S]

    modulated = g * adv + zeta * f_next  # A_mod [S]
    return modulated - reduce.mean(modulated)  # A_final [S]


@register
class EMPG(AdvantageShaper):
    """EMPG's entropy modulation of the per-step advantages (see the module docstring)."""

    name = "empg"
    needs_entropy = True

    @dataclass
    class Config:
        k: float = setting(1.0, "sharpness of the self-calibrating scale g = exp(-k H~)")
        k_future: float = setting(1.0, "sharpness of the future-clarity term f = exp(-k' H~)")
        zeta: float = setting(0.1, "weight of the future-clarity bonus")

    def __call__(self, steps: Steps, advantages: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        if steps.entropy is None:
            raise ValueError("EMPG needs per-step entropies: sample with return_entropies=True")
        c = self.config
        return modulate_advantages(
            advantages, steps.entropy, steps.traj_index, c.k, c.k_future, c.zeta, reduce, trainable=steps.trainable
        )
