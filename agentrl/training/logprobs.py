"""Log-probabilities and entropies of target tokens under a causal LM: the learner's one hot spot.

Everything the learner needs from the model goes through :func:`token_logprobs_entropy`, so that
the fused, vocabulary-chunked kernel ``agentrl.kernels.linear_logprob_entropy(hidden, weight,
targets, temperature)`` can replace :func:`linear_logprob_entropy` here without touching the
learner. The split is the same as the kernel's: the backbone gives hidden states, and the LM head
is applied only at positions that have a target (per-step rows are mostly prompt, so this skips
most of the ``[N, V]`` logits).
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100  # target id of a position that is not scored


def linear_logprob_entropy(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference LM-head step: ``hidden [N, H], targets [N] -> (logprob [N], entropy [N])`` in float32.

    ``head`` is the model's output embedding module (``nn.Linear``, or a LoRA-wrapped one).
    Materialises ``[N, V]`` logits; the fused kernel does not.
    """
    logits = head(hidden).float() / temperature  # [N, V]
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, V]
    logprob = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N]
    return logprob, entropy


def token_logprobs_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    *,
    allowed: tuple[torch.Tensor, torch.Tensor] | None = None,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and entropy of the next-token distribution at every position.

    Shapes: ``input_ids, attention_mask, targets: [B, L]`` -> ``(logprob [B, L], entropy [B, L])``,
    float32. ``targets[b, t]`` is the token scored at position ``t`` (normally ``input_ids[b, t+1]``)
    and ``IGNORE`` (-100) where nothing is scored; those positions return 0 and carry no gradient.
    ``temperature`` divides the logits, as it did when the behaviour policy sampled: one value, or
    one per sequence (``[B]``).

    ``allowed = (mask [B, L] bool, ids [N_c, K] long)`` gives the positions where constrained decoding
    restricted the choice and, in row-major order of ``mask``, the allowed token ids of each (padded
    with -1). There the distribution is ``q``, the model's restricted to those ids and renormalised:
    ``log q(a) = z_a - logsumexp_{allowed} z`` and ``H(q)``, computed from the logits of the allowed
    ids only. Everywhere else it is the full softmax.

    ``model`` is a Hugging Face causal LM (optionally a peft model) with ``get_decoder()`` and
    ``get_output_embeddings()``. When the head is a plain bias-free ``nn.Linear`` (tied or untied
    embeddings) and ``fused`` is true, the fused kernel ``agentrl.kernels.linear_logprob_entropy``
    computes the full-softmax scores without ever holding the ``[N, V]`` logits (Triton on CUDA,
    chunked PyTorch on CPU); other heads (LoRA-wrapped, biased) take the reference path. Models that
    post-process logits (e.g. Gemma-2 soft-capping) are not supported by this split.
    """
    if input_ids.shape != targets.shape or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"targets {tuple(targets.shape)} must have the same [B, L] shape"
        )
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if isinstance(temperature, torch.Tensor):  # one temperature per sequence: scale its hidden states
        hidden = hidden / temperature.to(device=hidden.device, dtype=hidden.dtype).view(-1, 1, 1)
        temperature = 1.0
    scored = targets != IGNORE  # [B, L]
    logprob = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    constrained = torch.zeros_like(scored) if allowed is None else allowed[0].to(hidden.device) & scored
    free = scored & ~constrained
    if free.any():
        if fused and _plain_linear(head):
            logprob_sel, entropy_sel = _fused_head(hidden[free], head.weight, targets[free], temperature)
        else:
            logprob_sel, entropy_sel = linear_logprob_entropy(hidden[free], head, targets[free], temperature)
        logprob = logprob.masked_scatter(free, logprob_sel)
        entropy = entropy.masked_scatter(free, entropy_sel)
    if allowed is not None and constrained.any():
        ids = allowed[1].to(hidden.device)
        if ids.shape[0] != int(constrained.sum()):
            raise ValueError(f"{ids.shape[0]} allowed sets for {int(constrained.sum())} constrained scored positions")
        logprob_sel, entropy_sel = restricted_logprob_entropy(hidden[constrained], head, ids, targets[constrained], temperature)
        logprob = logprob.masked_scatter(constrained, logprob_sel)
        entropy = entropy.masked_scatter(constrained, entropy_sel)
    return logprob, entropy


def restricted_logprob_entropy(
    hidden: torch.Tensor, head: nn.Module, allowed_ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log q(target)`` and ``H(q)`` of the softmax over each row's allowed ids: ``[N, H], [N, K], [N] -> [N], [N]``.

    Only the ``[N, K]`` logits of the allowed ids are built (rows of the head's weight gathered, in
    chunks), never ``[N, V]``, for a plain linear head; other heads compute their full logits and keep
    the allowed columns. ``allowed_ids`` is padded with -1. A target outside its row's set is an error.
    """
    valid = allowed_ids >= 0  # [N, K]
    index = allowed_ids.clamp(min=0)
    hit = (allowed_ids == targets[:, None]) & valid  # [N, K]
    if not bool(hit.any(-1).all()):
        raise ValueError("a constrained token is not in its allowed set: the transcript's allowed sets are corrupt")
    rows = max(1, (32 << 20) // max(1, index.shape[1] * hidden.shape[-1]))  # ~32M gathered weights per chunk
    pieces = []
    for start in range(0, hidden.shape[0], rows):
        h, idx = hidden[start : start + rows], index[start : start + rows]
        if _plain_linear(head):
            logits = torch.einsum("nh,nkh->nk", h.float(), head.weight[idx].float())  # [n, K]
        else:
            logits = head(h).float().gather(-1, idx)  # [n, K]
        pieces.append(logits)
    logits = torch.cat(pieces) / temperature
    logq = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)  # [N, K]
    logprob = logq.masked_fill(~hit, 0.0).sum(-1)  # [N]
    entropy = -(logq.exp() * logq.masked_fill(~valid, 0.0)).sum(-1)  # [N]; q = 0 off the set, no 0 * -inf
    return logprob, entropy


def _plain_linear(head: nn.Module) -> bool:
    return type(head) is nn.Linear and head.bias is None


def _fused_head(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel in the dtype the reference path would use (autocast's, else the weight's)."""
    from agentrl.kernels import linear_logprob_entropy as fused_linear_logprob_entropy

    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    with torch.autocast(device_type=device_type, enabled=False):
        return fused_linear_logprob_entropy(hidden.to(dtype), weight.to(dtype), targets, temperature)
