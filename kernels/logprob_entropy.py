"""Per-token log-probability and entropy from a linear LM head, without the full ``[N, V]`` logits.

Every policy-gradient step needs, for each response token, ``log p(target)`` and (for EMPG, EPO and entropy
control) the entropy ``H = -sum_v p_v log p_v`` of ``softmax(hidden @ weight.T / temperature)``. With a
150k-token vocabulary the float32 logits of 16k tokens take 9 GiB, and a naive backward holds several copies.
This module computes both outputs vocabulary chunk by vocabulary chunk:

* forward: per chunk, the running maximum ``m``, ``s = sum exp(z - m)`` and ``a = sum exp(z - m) (z - m)``
  (an online log-sum-exp that also carries the first moment), so ``lse = m + log s`` and
  ``H = log s - a / s`` with no cancellation between two large numbers;
* backward: the chunk's logits are recomputed, and with ``p = exp(z - lse)`` and ``mu = lse - H`` (the mean
  logit under ``p``)::

      d logprob / d z_v = [v == target] - p_v
      d entropy / d z_v = -p_v (z_v - mu)

  so ``dz = [v == target] g_lp - p (g_lp + g_ent (z - mu))``, then ``dhidden = dz @ W_c / T`` and
  ``dW_c = dz.T @ hidden / T``. Each ``dW`` chunk is written once (a full reduction over tokens in one matrix
  product), ``dhidden`` is accumulated in float32 over chunks.

Tokens whose target equals ``ignore_index`` get log-prob 0, entropy 0 and no gradient. Outputs are float32
whatever the input dtype: RL importance ratios are differences of log-probs and need the precision.

This file holds the public entry point, input checks and the chunked PyTorch implementation (the CPU path
and the reference for the Triton kernels in ``triton_logprob_entropy.py``).
"""

from __future__ import annotations

import os

import torch

from agentrl.kernels.stats import combine_partial_stats, prepare_grad_weights

__all__ = ["linear_logprob_entropy", "naive_logprob_entropy", "DEFAULT_IGNORE_INDEX"]

DEFAULT_IGNORE_INDEX = -100

# Size (bytes) of one float32 logits chunk [N, chunk] in the PyTorch path; the peak is a small multiple of it.
# Larger on CUDA, where small chunks would starve the matrix products.
_TORCH_CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}
_BACKENDS = ("auto", "torch", "triton")


def linear_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and entropy under ``softmax(hidden @ weight.T / temperature)``.

    Args:
        hidden: ``[..., H]`` final hidden states (float32, bfloat16 or float16).
        weight: ``[V, H]`` LM-head weight (same dtype and device as ``hidden``; tied embeddings are fine).
        targets: ``[...]`` integer token ids in ``[0, V)`` or ``ignore_index``.
        temperature: positive sampling temperature that divides the logits (not differentiated).
        ignore_index: target value that marks a position to skip: log-prob 0, entropy 0, zero gradient.
        backend: ``"auto"`` (Triton on CUDA tensors, chunked PyTorch otherwise), ``"torch"`` or ``"triton"``
            (on CPU tensors only under Triton's interpreter, ``TRITON_INTERPRET=1`` set before importing triton).
        chunk_size: vocabulary entries per chunk (PyTorch path) or per backward chunk (Triton path);
            ``None`` picks one that bounds the chunk's memory.

    Returns:
        ``(logprob, entropy)``, both float32 of shape ``targets.shape``, differentiable with respect to
        ``hidden`` and ``weight``. The ``[N, V]`` logits are never held in full.
    """
    hidden_2d, targets_1d, inv_temp = _check_inputs(hidden, weight, targets, temperature, ignore_index)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    use_triton = backend == "triton" or (backend == "auto" and hidden.is_cuda and _triton_available())
    if use_triton:
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "backend='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                "before triton is imported, or use backend='torch'"
            )
        from agentrl.kernels.triton_logprob_entropy import TritonLinearLogprobEntropy

        logprob, entropy = TritonLinearLogprobEntropy.apply(
            hidden_2d, weight, targets_1d, inv_temp, ignore_index, chunk_size, None, None
        )
    else:
        logprob, entropy = ChunkedLinearLogprobEntropy.apply(
            hidden_2d, weight, targets_1d, inv_temp, ignore_index, chunk_size
        )
    return logprob.view(targets.shape), entropy.view(targets.shape)


def naive_logprob_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The materialised-logits path most RL trainers use: ``log_softmax`` of the full ``[N, V]`` logits.

    It is the baseline of the benchmark and, with ``dtype=torch.float64``, the reference of the tests.
    The product ``hidden @ weight.T`` runs in ``dtype`` (inputs upcast first), so float64 gives an
    independent reference for bfloat16 inputs too.
    """
    _check_inputs(hidden, weight, targets, temperature, ignore_index)
    logits = (hidden.to(dtype) @ weight.to(dtype).t()) / temperature  # [..., V]
    logp = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprob = logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros((), dtype=logprob.dtype, device=logprob.device)
    return torch.where(valid, logprob, zero), torch.where(valid, entropy, zero)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Validate shapes, dtypes, devices, temperature and target range; return ``[N, H]``, ``[N]``, ``1/T``."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be [V, H], got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be [..., H] with H = weight.shape[1] = {weight.shape[1]}, got {tuple(hidden.shape)}"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, got {tuple(targets.shape)}"
        )
    if hidden.dtype != weight.dtype or not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden and weight must share one float dtype, got {hidden.dtype} and {weight.dtype}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    if hidden.device != weight.device or hidden.device != targets.device:
        raise ValueError(
            f"hidden, weight and targets must be on one device, got {hidden.device}, {weight.device}, "
            f"{targets.device}"
        )
    temperature = float(temperature)
    if not (temperature > 0.0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    vocab = weight.shape[0]
    targets_1d = targets.reshape(-1)
    if targets_1d.numel():
        bad = (targets_1d != ignore_index) & ((targets_1d < 0) | (targets_1d >= vocab))
        if bool(bad.any()):
            first = int(targets_1d[bad][0])
            raise ValueError(f"target id {first} is outside [0, {vocab}) and is not ignore_index={ignore_index}")
    return hidden.reshape(-1, hidden.shape[-1]), targets_1d, 1.0 / temperature


def _chunk_len(num_rows: int, vocab: int, chunk_size: int | None, device: torch.device) -> int:
    if chunk_size is not None:
        return min(chunk_size, vocab)
    budget = _TORCH_CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return max(1, min(vocab, budget // (4 * max(num_rows, 1))))


def _chunk_logits(hidden_c: torch.Tensor, weight_c: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """Float32 ``hidden @ weight_c.T / T`` for one chunk.

    On CPU the operands are upcast first (exact products, float32 sums: what a GPU tensor core computes for
    bf16 inputs); on CUDA the product runs in the input dtype and is then upcast.
    """
    if hidden_c.is_cuda:
        logits = (hidden_c @ weight_c.t()).float()
    else:
        logits = hidden_c @ weight_c.float().t()
    return logits.mul_(inv_temp)


class ChunkedLinearLogprobEntropy(torch.autograd.Function):
    """Chunked PyTorch implementation: loops over vocabulary chunks, recomputes logits in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, ignore_index, chunk_size):
        num_rows, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.full_like(targets, -1))
        hidden_c = hidden if hidden.is_cuda else hidden.float()
        chunk = _chunk_len(num_rows, vocab, chunk_size, hidden.device)
        starts = list(range(0, vocab, chunk))
        maxes = hidden.new_empty((len(starts), num_rows), dtype=torch.float32)
        sums = torch.empty_like(maxes)
        moments = torch.empty_like(maxes)
        target_logit = hidden.new_zeros(num_rows, dtype=torch.float32)
        for c, start in enumerate(starts):
            z = _chunk_logits(hidden_c, weight[start : start + chunk], inv_temp)  # [N, C]
            m = z.max(dim=1).values if num_rows else z.new_empty(0)
            maxes[c] = m
            hit = (safe_targets >= start) & (safe_targets < start + z.shape[1])
            local = (safe_targets - start).clamp(0, z.shape[1] - 1)
            target_logit += torch.where(hit, z.gather(1, local[:, None])[:, 0], 0.0)
            z.sub_(m[:, None])  # z - m, <= 0
            e = torch.exp(z)
            sums[c] = e.sum(dim=1)
            moments[c] = (e.mul_(z)).sum(dim=1)
        lse, entropy = combine_partial_stats(maxes, sums, moments)
        zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
        logprob = torch.where(valid, target_logit - lse, zero)
        entropy = torch.where(valid, entropy, zero)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse, entropy)
        ctx.inv_temp, ctx.chunk = inv_temp, chunk
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        hidden, weight, safe_targets, valid, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_lp, g_ent = prepare_grad_weights(grad_logprob, grad_entropy, valid)
        inv_temp, chunk = ctx.inv_temp, ctx.chunk
        mean_logit = lse - entropy  # mu = E_p[z]
        hidden_c = hidden if hidden.is_cuda else hidden.float()
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_weight = torch.empty_like(weight) if need_w else None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for start in range(0, weight.shape[0], chunk):
            weight_c = weight[start : start + chunk]
            z = _chunk_logits(hidden_c, weight_c, inv_temp)  # [N, C]
            p = (z - lse[:, None]).exp_()
            dz = z.sub_(mean_logit[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None]).mul_(p).neg_()
            del p
            hit = (safe_targets >= start) & (safe_targets < start + z.shape[1])
            dz[rows[hit], safe_targets[hit] - start] += g_lp[hit]
            dz.mul_(inv_temp)  # chain rule through z = logits / T
            if hidden.is_cuda:
                dz = dz.to(weight.dtype)
                if need_h:
                    grad_hidden += dz @ weight_c
                if need_w:
                    grad_weight[start : start + chunk] = dz.t() @ hidden
            else:
                if need_h:
                    grad_hidden.addmm_(dz, weight_c.float())
                if need_w:
                    grad_weight[start : start + chunk] = (dz.t() @ hidden_c).to(weight.dtype)
        if need_h:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None, None
