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
    temperature: float = 1.0,
    *,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and entropy of the next-token distribution at every position.

    Shapes: ``input_ids, attention_mask, targets: [B, L]`` -> ``(logprob [B, L], entropy [B, L])``,
    float32. ``targets[b, t]`` is the token scored at position ``t`` (normally ``input_ids[b, t+1]``)
    and ``IGNORE`` (-100) where nothing is scored; those positions return 0 and carry no gradient.
    ``temperature`` divides the logits, as it did when the behaviour policy sampled.

    ``model`` is a Hugging Face causal LM (optionally a peft model) with ``get_decoder()`` and
    ``get_output_embeddings()``. When the head is a plain bias-free ``nn.Linear`` (tied or untied
    embeddings) and ``fused`` is true, the fused kernel ``agentrl.kernels.linear_logprob_entropy``
    computes the scores without ever holding the ``[N, V]`` logits (Triton on CUDA, chunked PyTorch on
    CPU); other heads (LoRA-wrapped, biased) take the reference path. Models that post-process logits (e.g. Gemma-2 soft-capping) are
    not supported by this split.
    """
    if input_ids.shape != targets.shape or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"targets {tuple(targets.shape)} must have the same [B, L] shape"
        )
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    scored = targets != IGNORE  # [B, L]
    if fused and _plain_linear(head):
        logprob_sel, entropy_sel = _fused_head(hidden[scored], head.weight, targets[scored], temperature)
    else:
        logprob_sel, entropy_sel = linear_logprob_entropy(hidden[scored], head, targets[scored], temperature)
    logprob = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    logprob = logprob.masked_scatter(scored, logprob_sel)
    entropy = entropy.masked_scatter(scored, entropy_sel)
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
