"""PPO-clip policy loss with asymmetric clipping (PPO arXiv 1707.06347; DAPO "clip-higher" arXiv 2503.14476).

``ratio = pi_theta(a|s) / pi_old(a|s)`` per token. In agentrl ``pi_old`` is the *behaviour* policy
whose log-probabilities were stored at sampling time, so the same ratio is also the importance
weight that corrects for stale (asynchronous) rollouts; the clip to ``[1 - eps_low, 1 + eps_high]``
bounds how far one update moves on such data. Token loss
``l = max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))`` (the pessimistic bound).
"""

from __future__ import annotations

import torch

from agentrl.algorithms._common import masked_mean, row_mean
from agentrl.algorithms.registry import PolicyLoss, Tokens, register

AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """Reduce a ``[S, L]`` token loss to a scalar.

    ``token-mean``: mean over every unmasked token of the batch (long turns weigh more).
    ``seq-mean-token-mean``: mean over turns (with at least one token) of each turn's token mean.
    """
    if agg == "token-mean":
        return masked_mean(token_loss, mask)
    if agg == "seq-mean-token-mean":
        has_tokens = mask.to(torch.bool).any(-1)  # [S]
        per_row = row_mean(token_loss, mask)  # [S]
        return masked_mean(per_row, has_tokens)
    raise ValueError(f"unknown aggregation {agg!r}; expected one of {AGGREGATIONS}")


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if advantages.dim() == 1:
        return advantages.unsqueeze(-1).expand_as(like)  # [S] -> [S, L]
    if advantages.shape != like.shape:
        raise ValueError(
            f"advantages must be [S] or [S, L]={tuple(like.shape)}, got {tuple(advantages.shape)}"
        )
    return advantages


def clip_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """Unreduced PPO-clip loss per token: ``[S, L]`` (masked positions hold garbage; mask them)."""
    adv = _token_advantages(advantages, logp).to(logp.dtype)  # [S, L]
    ratio = torch.exp(logp - old_logp)  # [S, L]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped)  # [S, L]


def clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token-mean",
) -> torch.Tensor:
    """PPO-clip policy loss (scalar) over the unmasked tokens.

    logp, old_logp, mask: ``[S, L]``; advantages: ``[S]`` (one per turn) or ``[S, L]``.
    """
    token_loss = clip_token_loss(logp, old_logp, advantages, eps_low, eps_high)
    return aggregate(token_loss, mask, agg)


@torch.no_grad()
def clip_fraction(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """Fraction of unmasked tokens whose gradient the clip removed (a health metric)."""
    adv = _token_advantages(advantages, logp)
    ratio = torch.exp(logp - old_logp)
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
    return masked_mean(clipped.to(torch.float32), mask)


@register
class Clip(PolicyLoss):
    """PPO-clip with asymmetric clipping (``eps_low``/``eps_high`` from the learner)."""

    name = "clip"

    def __call__(self, tokens: Tokens) -> torch.Tensor:
        return clip_token_loss(tokens.logp, tokens.old_logp, tokens.advantages, tokens.eps_low, tokens.eps_high)
