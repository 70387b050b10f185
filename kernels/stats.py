"""Statistics shared by the chunked PyTorch path and the Triton kernels of ``linear_logprob_entropy``.

Both split the vocabulary into chunks and merge per-chunk log-sum-exp statistics the same way, and
both take the same upstream gradients in backward; keeping these here lets the dispatcher
(:mod:`~agentrl.kernels.logprob_entropy`) import the Triton module lazily without a cycle.
"""

from __future__ import annotations

import torch


def combine_partial_stats(
    maxes: torch.Tensor, sums: torch.Tensor, moments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge per-chunk statistics ``[C, N]`` into ``(lse [N], entropy [N])``.

    For chunk ``c``: ``maxes[c] = max z``, ``sums[c] = sum exp(z - maxes[c])`` and
    ``moments[c] = sum exp(z - maxes[c]) (z - maxes[c])``. An empty chunk carries ``(-inf, 0, 0)``.
    """
    top = maxes.max(dim=0).values  # [N]
    has = sums > 0
    shift = torch.where(has, maxes - top, torch.zeros_like(maxes))  # [C, N], <= 0
    scale = torch.where(has, torch.exp(shift), torch.zeros_like(maxes))
    total = (sums * scale).sum(dim=0)  # sum exp(z - top)
    moment = (scale * (moments + shift * sums)).sum(dim=0)  # sum exp(z - top) (z - top)
    log_total = torch.log(total)
    return top + log_total, log_total - moment / total


def prepare_grad_weights(
    grad_logprob: torch.Tensor | None, grad_entropy: torch.Tensor | None, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream gradients as float32 ``[N]`` with ``None`` (output unused) as 0 and ignored rows zeroed."""
    zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    g_lp = zeros if grad_logprob is None else torch.where(valid, grad_logprob.float(), zeros)
    g_ent = zeros if grad_entropy is None else torch.where(valid, grad_entropy.float(), zeros)
    return g_lp.contiguous(), g_ent.contiguous()
