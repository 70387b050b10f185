"""Triton kernels for :func:`agentrl.kernels.linear_logprob_entropy` (the CUDA path).

Two kernels, each a matrix product ``hidden @ weight.T`` tile by tile with a fused epilogue, so no logits tile
ever leaves the chip:

* ``_fwd_stats_kernel``: a program owns ``BLOCK_N`` tokens and one of ``SPLITS`` contiguous slices of the
  vocabulary; it walks its slice ``BLOCK_V`` entries at a time and keeps the online log-sum-exp state
  ``(max, sum exp, sum exp * (z - max))`` plus the target's logit. The host merges the ``SPLITS`` partial
  states (``combine_partial_stats``), a few ``[SPLITS, N]`` float32 arrays.
* ``_bwd_dz_kernel``: recomputes a logits tile and writes ``dz = d(loss)/d(logits)`` for one vocabulary chunk
  in the input dtype; cuBLAS then does ``dhidden += dz @ W_c`` and ``dW_c = dz.T @ hidden``. The chunk
  (``[N, chunk]``, 256 MiB by default) is the only large buffer; each ``dW`` row block is written once.

Cost: the forward is one matrix product, the backward three (recompute, ``dhidden``, ``dW``): four in all,
against three for a method that may keep the logits, so 1.33x the three-matmul floor is the best this
interface (per-token outputs with arbitrary upstream gradients) allows; the rest is the ``dz`` round trip
through memory and the epilogues.

Under Triton's CPU interpreter (``TRITON_INTERPRET=1``) bfloat16 arithmetic is wrong, so tiles are upcast to
float32 right after each load (``UPCAST``); products of bf16 values are exact in float32, which is what the
GPU's tensor cores compute, so the interpreter checks the same numbers.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from agentrl.kernels.stats import combine_partial_stats, prepare_grad_weights

__all__ = ["TritonLinearLogprobEntropy", "forward_stats", "backward_dz"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Bytes of the backward's dz chunk [N, chunk] in the input dtype (CUDA); bounds the extra memory.
_DZ_CHUNK_BYTES = 256 * 2**20


def _configs(group: bool) -> list[triton.Config]:
    """Candidate tilings; the interpreter gets one config with large blocks (it is slow per program).

    GPU candidates were compiled ahead of time for sm_90 (Triton 3.9): all four pipeline their loads and use
    wgmma for bf16 without register spills in either kernel (128x256 and 256x128 tiles, and 128x128 with 4
    warps, spilled). ``AGENTRL_TRITON_AUTOTUNE=0`` keeps only the first (no tuning: quicker correctness runs).
    """
    if _INTERPRET:
        sizes = [(32, 64, 32, 4, 1)]
    else:
        sizes = [  # (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages)
            (128, 128, 64, 8, 3),
            (128, 128, 64, 8, 4),
            (64, 256, 64, 8, 3),
            (128, 128, 32, 8, 5),
        ]
        if os.environ.get("AGENTRL_TRITON_AUTOTUNE", "1") == "0":
            sizes = sizes[:1]
    configs = []
    for block_n, block_v, block_h, warps, stages in sizes:
        meta = {"BLOCK_N": block_n, "BLOCK_V": block_v, "BLOCK_H": block_h}
        if group:
            meta["GROUP_N"] = 8
        configs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
    return configs


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
    stride_hn, stride_hk, stride_wv, stride_wk, inv_temp,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """float32 ``hidden[rows] @ weight[cols].T * inv_temp`` for one ``[BLOCK_N, BLOCK_V]`` tile."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    ks = tl.arange(0, BLOCK_H)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wv
    for k0 in range(0, H, BLOCK_H):
        k = k0 + ks
        k_mask = k < H
        h_tile = tl.load(h_rows + k[None, :] * stride_hk, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_tile = tl.load(w_cols + k[:, None] * stride_wk, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST:
            h_tile = h_tile.to(tl.float32)
            w_tile = w_tile.to(tl.float32)
        acc = tl.dot(h_tile, w_tile, acc, input_precision=INPUT_PRECISION)
    return acc * inv_temp


@triton.jit
def _fwd_stats_kernel(
    h_ptr, w_ptr, tgt_ptr, max_ptr, sum_ptr, mom_ptr, tlogit_ptr,
    N, V, H, stride_hn, stride_hk, stride_wv, stride_wk, inv_temp, SPLITS,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # Split index varies fastest, so programs running together share hidden rows and walk different
    # vocabulary slices: both operands stay in L2.
    pid = tl.program_id(0)
    pid_s = pid % SPLITS
    pid_n = pid // SPLITS
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
    num_tiles = tl.cdiv(V, BLOCK_V)
    per_split = tl.cdiv(num_tiles, SPLITS)
    first = pid_s * per_split
    last = tl.minimum(first + per_split, num_tiles)
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), tl.float32)  # sum exp(z - run_max)
    run_mom = tl.zeros((BLOCK_N,), tl.float32)  # sum exp(z - run_max) * (z - run_max)
    t_logit = tl.zeros((BLOCK_N,), tl.float32)
    for tile in range(first, last):
        cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        z = _logits_tile(
            h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
            stride_hn, stride_hk, stride_wv, stride_wk, inv_temp,
            BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, INPUT_PRECISION,
        )
        z = tl.where(col_mask[None, :], z, float("-inf"))
        t_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        d = tl.where(col_mask[None, :], z - new_max[:, None], 0.0)
        e = tl.where(col_mask[None, :], tl.exp(d), 0.0)
        e_d = e * d
        shift = tl.where(run_sum > 0, run_max - new_max, 0.0)  # <= 0; 0 before the first tile
        alpha = tl.exp(shift)
        run_mom = alpha * (run_mom + shift * run_sum) + tl.sum(e_d, axis=1)
        run_sum = alpha * run_sum + tl.sum(e, axis=1)
        run_max = new_max
    out = pid_s * N + rows
    tl.store(max_ptr + out, run_max, mask=row_mask)
    tl.store(sum_ptr + out, run_sum, mask=row_mask)
    tl.store(mom_ptr + out, run_mom, mask=row_mask)
    tl.store(tlogit_ptr + out, t_logit, mask=row_mask)


@triton.jit
def _bwd_dz_kernel(
    h_ptr, w_ptr, tgt_ptr, lse_ptr, mean_ptr, glp_ptr, gent_ptr, dz_ptr,
    N, H, v_start, width, stride_hn, stride_hk, stride_wv, stride_wk, stride_dzn, inv_temp,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
    UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    # Grouped ordering (as in Triton's matmul tutorial) so neighbouring programs reuse tiles from L2.
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_v = tl.cdiv(width, BLOCK_V)
    per_group = GROUP_N * num_pid_v
    group = pid // per_group
    first_n = group * GROUP_N
    group_size = tl.minimum(num_pid_n - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_size
    pid_v = (pid % per_group) // group_size

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    local = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = local < width
    cols = v_start + local
    z = _logits_tile(
        h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
        stride_hn, stride_hk, stride_wv, stride_wk, inv_temp,
        BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, INPUT_PRECISION,
    )
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
    g_lp = tl.load(glp_ptr + rows, mask=row_mask, other=0.0)
    g_ent = tl.load(gent_ptr + rows, mask=row_mask, other=0.0)
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
    p = tl.exp(z - lse[:, None])
    # d lp/dz = onehot - p ; d H/dz = -p (z - mean)
    dz = tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0)
    dz = dz - p * (g_lp[:, None] + g_ent[:, None] * (z - mean[:, None]))
    dz = dz * inv_temp
    dz_ptrs = dz_ptr + rows.to(tl.int64)[:, None] * stride_dzn + local[None, :]
    tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


_fwd_tuned = triton.autotune(configs=_configs(group=False), key=["H", "V"])(_fwd_stats_kernel)
_bwd_tuned = triton.autotune(configs=_configs(group=True), key=["H", "width"])(_bwd_dz_kernel)


def _precision_flags(dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, INPUT_PRECISION): upcast under the interpreter; exact float32 products for float32 inputs."""
    upcast = _INTERPRET
    precision = "ieee" if (upcast or dtype == torch.float32) else "tf32"
    return upcast, precision


def _default_splits(num_rows: int, device: torch.device) -> int:
    """Vocabulary slices per token block: enough programs for ~8 waves on the GPU; 2 in the interpreter."""
    if device.type != "cuda":
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(num_rows, 128)
    return max(1, min(64, triton.cdiv(8 * sms, row_blocks)))


def forward_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    safe_targets: torch.Tensor,
    inv_temp: float,
    splits: int | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the forward kernel; return float32 ``(lse, entropy, target_logit)`` of shape ``[N]``.

    ``safe_targets`` is int32 ``[N]`` with ``-1`` for ignored rows. ``config`` (``BLOCK_N``, ``BLOCK_V``,
    ``BLOCK_H``) bypasses autotuning, for tests of tilings that do not divide the shapes.
    """
    num_rows, hid = hidden.shape
    vocab = weight.shape[0]
    splits = splits or _default_splits(num_rows, hidden.device)
    parts = torch.empty((4, splits, num_rows), dtype=torch.float32, device=hidden.device)
    upcast, precision = _precision_flags(hidden.dtype)
    args = (
        hidden, weight, safe_targets, parts[0], parts[1], parts[2], parts[3],
        num_rows, vocab, hid, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        inv_temp, splits,
    )
    if config is None:
        grid = lambda meta: (triton.cdiv(num_rows, meta["BLOCK_N"]) * splits,)  # noqa: E731
        _fwd_tuned[grid](*args, UPCAST=upcast, INPUT_PRECISION=precision)
    else:
        grid = (triton.cdiv(num_rows, config["BLOCK_N"]) * splits,)
        _fwd_stats_kernel[grid](*args, **_tile(config), UPCAST=upcast, INPUT_PRECISION=precision)
    lse, entropy = combine_partial_stats(parts[0], parts[1], parts[2])
    return lse, entropy, parts[3].sum(dim=0)


def backward_dz(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    safe_targets: torch.Tensor,
    lse: torch.Tensor,
    mean_logit: torch.Tensor,
    g_lp: torch.Tensor,
    g_ent: torch.Tensor,
    inv_temp: float,
    v_start: int,
    dz: torch.Tensor,
    config: dict | None = None,
) -> None:
    """Fill ``dz [N, width]`` with ``d(loss)/d(logits)`` for vocabulary rows ``v_start : v_start + width``."""
    num_rows, hid = hidden.shape
    width = dz.shape[1]
    upcast, precision = _precision_flags(hidden.dtype)
    args = (
        hidden, weight, safe_targets, lse, mean_logit, g_lp, g_ent, dz,
        num_rows, hid, v_start, width, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        dz.stride(0), inv_temp,
    )
    if config is None:
        grid = lambda meta: (triton.cdiv(num_rows, meta["BLOCK_N"]) * triton.cdiv(width, meta["BLOCK_V"]),)  # noqa: E731
        _bwd_tuned[grid](*args, UPCAST=upcast, INPUT_PRECISION=precision)
    else:
        grid = (triton.cdiv(num_rows, config["BLOCK_N"]) * triton.cdiv(width, config["BLOCK_V"]),)
        _bwd_dz_kernel[grid](*args, GROUP_N=config.get("GROUP_N", 8), **_tile(config),
                             UPCAST=upcast, INPUT_PRECISION=precision)


def _tile(config: dict) -> dict:
    return {key: config[key] for key in ("BLOCK_N", "BLOCK_V", "BLOCK_H")}


def _dz_chunk_len(num_rows: int, vocab: int, itemsize: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return min(chunk_size, vocab)
    chunk = _DZ_CHUNK_BYTES // (itemsize * max(num_rows, 1))
    return max(256, min(vocab, chunk // 256 * 256))


class TritonLinearLogprobEntropy(torch.autograd.Function):
    """Forward: one fused kernel. Backward: per vocabulary chunk, a fused dz kernel and two cuBLAS products."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, ignore_index, chunk_size, config=None, splits=None):
        """``config``/``splits`` fix the tiling (tests); ``None`` autotunes on the GPU."""
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.full_like(targets, -1)).to(torch.int32).contiguous()
        num_rows = hidden.shape[0]
        if num_rows == 0:
            lse = entropy = logprob = hidden.new_zeros(0, dtype=torch.float32)
        else:
            lse, entropy, target_logit = forward_stats(
                hidden, weight, safe_targets, inv_temp, splits=splits, config=config
            )
            zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
            logprob = torch.where(valid, target_logit - lse, zero)
            entropy = torch.where(valid, entropy, zero)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse, entropy)
        ctx.inv_temp, ctx.chunk_size, ctx.config = inv_temp, chunk_size, config
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        hidden, weight, safe_targets, valid, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_lp, g_ent = prepare_grad_weights(grad_logprob, grad_entropy, valid)
        num_rows, vocab = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_weight = torch.empty_like(weight) if need_w else None
        if num_rows == 0:
            if need_w:
                grad_weight.zero_()
        else:
            mean_logit = (lse - entropy).contiguous()
            chunk = _dz_chunk_len(num_rows, vocab, hidden.element_size(), ctx.chunk_size)
            dz_buffer = torch.empty((num_rows, chunk), dtype=weight.dtype, device=hidden.device)
            for start in range(0, vocab, chunk):
                weight_c = weight[start : start + chunk]
                dz = dz_buffer[:, : weight_c.shape[0]]
                backward_dz(
                    hidden, weight, safe_targets, lse, mean_logit, g_lp, g_ent, ctx.inv_temp, start, dz,
                    config=ctx.config,
                )
                if need_h:
                    grad_hidden += dz @ weight_c
                if need_w:
                    torch.mm(dz.t(), hidden, out=grad_weight[start : start + chunk])
        if need_h:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None
