"""KL penalty to a frozen reference policy with Schulman's k3 estimator (http://joschu.net/blog/kl-approx.html).

For tokens sampled from ``pi``: ``k3 = exp(log r) - log r - 1`` with ``log r = log pi_ref - log pi``.
It is unbiased for ``KL(pi || pi_ref)``, never negative, and its gradient is well behaved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms.registry import LossTerm, Tokens, register
from agentrl.config import setting


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi || pi_ref)``: ``[S, L] -> [S, L]``."""
    log_ratio = ref_logp - logp  # [S, L]
    return torch.exp(log_ratio) - log_ratio - 1.0


@register
class KL(LossTerm):
    """``coef`` x the aggregated k3 KL to the frozen initial policy (the base model under LoRA)."""

    name = "kl"
    needs_reference = True

    @dataclass
    class Config:
        coef: float = setting(0.01, "weight of the KL term (verl-agent: 0.01)")

    def __call__(self, tokens: Tokens) -> tuple[torch.Tensor, dict[str, float]]:
        term = tokens.aggregate(k3(tokens.logp, tokens.reference_logp()))
        return self.config.coef * term, {"kl": term.item()}
