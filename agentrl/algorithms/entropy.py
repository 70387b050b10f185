"""Token entropy and the per-turn ("step") entropy that EMPG and EPO are built on.

The step entropy of a turn is the mean entropy of the policy over that turn's trainable response
tokens (EMPG arXiv 2509.09265, eq. for ``H_t``; EPO arXiv 2509.22576 uses the same per-turn
token-mean inside its trajectory average).

The ``entropy`` loss-term plug-in is verl's entropy bonus, ``-coef * aggregate(H)`` (the learner's
own aggregation, token-mean by default), as used by verl-agent's GiGPO scripts (``entropy_coeff``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms._common import row_mean
from agentrl.algorithms.registry import LossTerm, Tokens, register
from agentrl.config import setting


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of the softmax over the last axis: ``[..., V] -> [...]``.

    Computed in float32 (or float64 if given) whatever the input dtype: bf16 logits lose the
    small probabilities that dominate the entropy of a peaked distribution.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(dtype), dim=-1)  # [..., V]
    return -(logp.exp() * logp).sum(-1)  # [...]


def step_entropy(token_entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-turn token-mean entropy ``H_t``: ``[S, L] token entropies, [S, L] mask -> [S]``.

    A turn without any trainable token gets 0 (callers that average over turns skip such turns).
    """
    return row_mean(token_entropy, mask)


@register
class EntropyBonus(LossTerm):
    """``-coef x`` the aggregated entropy of the current policy on the trained tokens (a bonus).

    verl's actor loss is ``pg_loss - entropy_coeff * agg(entropy)`` with the same aggregation as the
    policy loss; verl-agent's GiGPO scripts keep verl's default ``entropy_coeff: 0.001``
    (verl/trainer/config/ppo_trainer.yaml). Its metric ``entropy_bonus`` is the aggregated entropy.
    """

    name = "entropy"

    @dataclass
    class Config:
        coef: float = setting(1e-3, "weight of the entropy bonus (verl-agent: entropy_coeff 0.001)")

    def __call__(self, tokens: Tokens) -> tuple[torch.Tensor, dict[str, float]]:
        entropy = tokens.aggregate(tokens.entropy)  # this micro-batch's share of agg(H)
        return -self.config.coef * entropy, {"entropy_bonus": entropy.item()}
