"""Clip-Cov and KL-Cov: entropy control through token covariance (arXiv 2505.22617).

The paper shows that policy entropy falls in proportion to the covariance between a token's
log-probability and its advantage, and that a small fraction of high-covariance tokens drives the
collapse. Per unmasked token ``i`` of the batch (means over all ``N`` unmasked tokens):

    Cov_i = (log pi_i - mean log pi) * (A_i - mean A)

* Clip-Cov: pick at random ``max(1, int(r * N))`` tokens with ``cov_low < Cov_i < cov_high`` (among
  those PPO's own clip left alone) and drop their gradient. Defaults r = 2e-4, bounds (1, 5).
* KL-Cov: add ``kl_coef * |log pi_i - log pi_old_i|`` to the ``max(1, int(k * N))`` tokens of
  largest ``Cov_i``; no ratio clipping. Defaults k = 2e-3 (7B), kl_coef = 1.

Both follow the authors' released implementation (Clip-Cov keeps PPO's ratio clip on top).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.algorithms._common import masked_mean
from agentrl.algorithms.ppo import _token_advantages, aggregate, clip_token_loss
from agentrl.algorithms.registry import PolicyLoss, Reduce, Tokens, register
from agentrl.config import setting


@torch.no_grad()
def token_covariance(
    logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None
) -> torch.Tensor:
    """``Cov_i`` per token ``[S, L]`` (0 at masked positions); ``advantages`` ``[S]`` or ``[S, L]``.

    The means are over every unmasked token of the batch: with ``reduce``, of all ranks' shards.
    """
    adv = _token_advantages(advantages, logp).to(logp.dtype)
    mean = masked_mean if reduce is None else (lambda values, m: _global_mean(values, m, reduce))
    centred_logp = logp - mean(logp, mask)
    centred_adv = adv - mean(adv, mask)
    return torch.where(mask.to(torch.bool), centred_logp * centred_adv, torch.zeros_like(logp))


def _global_mean(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """:func:`masked_mean` over every rank's unmasked entries (the same operations in one process)."""
    mask = mask.to(torch.bool)
    total = reduce.sum(torch.where(mask, values, torch.zeros_like(values)).sum())
    return total / reduce.sum(mask.sum()).clamp(min=1)


def _ranked(keys: list[torch.Tensor]) -> torch.Tensor:
    """The order (indices) that sorts rows by ``keys[0]``, then ``keys[1]``, ...: a stable lexicographic sort."""
    order = torch.arange(len(keys[0]))
    for key in reversed(keys):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def _mark(selection: torch.Tensor, row_ids: torch.Tensor, chosen: torch.Tensor, chosen_cols: torch.Tensor, value: float) -> None:
    """Set ``selection[row, col] = value`` for each chosen ``(id, col)`` whose row is in this shard."""
    row_of = {ident: row for row, ident in enumerate(row_ids.tolist())}
    for ident, col in zip(chosen.tolist(), chosen_cols.tolist(), strict=True):
        if ident in row_of:
            selection[row_of[ident], col] = value


def _row_ids(row_ids: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(like.shape[0]) if row_ids is None else torch.as_tensor(row_ids, dtype=torch.long).cpu()


@torch.no_grad()
def clip_cov_keep(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    generator: torch.Generator | None = None,
    *,
    row_ids: torch.Tensor | None = None,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """Clip-Cov's selection ``[S, L]``: 0 for the random few mid-covariance tokens whose gradient is
    dropped (among those PPO's own clip left alone), 1 elsewhere; over every unmasked token given.

    The random choice permutes the candidates in the order of ``(row_ids[row], position)`` (default:
    row-major), so it does not depend on how rows are arranged. With ``reduce`` the candidates,
    token count and means are those of every rank's shard together: each rank gets its part of the
    selection one process would make (same ``generator`` state on every rank, same draw).
    """
    adv = _token_advantages(advantages, logp)
    ratio = torch.exp(logp - old_logp)
    ppo_clipped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
    cov = token_covariance(logp, advantages, mask, reduce)
    valid = mask.to(torch.bool)
    row_ids = _row_ids(row_ids, logp)
    rows, cols = torch.nonzero(valid & ~ppo_clipped & (cov > cov_low) & (cov < cov_high)).cpu().unbind(-1)  # [C]
    ids = row_ids[rows]
    n_valid = valid.sum() if reduce is None else reduce.sum(valid.sum())
    n_clip = max(int(clip_ratio * n_valid.item()), 1)
    keep = torch.ones_like(logp)
    if reduce is not None:  # every rank's candidates
        ids, cols = reduce.cat(ids), reduce.cat(cols)
    if len(ids):
        ranked = _ranked([ids, cols])
        order = torch.randperm(len(ranked), generator=generator)
        chosen = ranked[order[:n_clip]]
        _mark(keep, row_ids, ids[chosen], cols[chosen], 0.0)
    return keep


def clip_cov_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PPO-clip token loss ``[S, L]`` with the gradient of a random few mid-covariance tokens removed."""
    keep = clip_cov_keep(logp.detach(), old_logp, advantages, mask, clip_ratio, cov_low, cov_high, eps_low, eps_high, generator)
    return clip_token_loss(logp, old_logp, advantages, eps_low, eps_high) * keep


def clip_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 2e-4,
    cov_low: float = 1.0,
    cov_high: float = 5.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token-mean",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip-Cov policy loss (scalar): :func:`clip_cov_token_loss` aggregated."""
    token_loss = clip_cov_token_loss(
        logp, old_logp, advantages, mask, clip_ratio, cov_low, cov_high, eps_low, eps_high, generator
    )
    return aggregate(token_loss, mask, agg)


@torch.no_grad()
def kl_cov_penalised(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    k_ratio: float = 2e-3,
    *,
    row_ids: torch.Tensor | None = None,
    reduce: Reduce | None = None,
) -> torch.Tensor:
    """KL-Cov's selection ``[S, L]``: 1 on the ``max(1, int(k * N))`` unmasked tokens of largest covariance.

    Equal covariances are ranked by ``(row_ids[row], position)`` (default: row-major). With ``reduce``
    the ranking is over every rank's tokens together, and each rank gets its part of the top ``k``.
    """
    valid = mask.to(torch.bool)
    penalty = torch.zeros_like(logp)
    n_valid = int((valid.sum() if reduce is None else reduce.sum(valid.sum())).item())
    if n_valid:
        cov = token_covariance(logp, advantages, mask, reduce)
        row_ids = _row_ids(row_ids, logp)
        rows, cols = torch.nonzero(valid).cpu().unbind(-1)  # [N_rank], row-major
        ids, values = row_ids[rows], cov[valid].cpu()
        if reduce is not None:  # every rank's tokens
            ids, cols, values = reduce.cat(ids), reduce.cat(cols), reduce.cat(values)
        top = _ranked([-values, ids, cols])[: max(1, int(n_valid * k_ratio))]
        _mark(penalty, row_ids, ids[top], cols[top], 1.0)
    return penalty


def kl_cov_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    k_ratio: float = 2e-3,
    kl_coef: float = 1.0,
    penalised: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unclipped policy-gradient token loss ``[S, L]`` with ``|log pi - log pi_old|`` on the top-covariance
    tokens (``penalised``: a selection made beforehand over a larger batch; default: over these tokens)."""
    adv = _token_advantages(advantages, logp).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [S, L]
    if penalised is None:
        penalised = kl_cov_penalised(logp.detach(), advantages, mask, k_ratio)
    return -adv * ratio + kl_coef * penalised * (logp - old_logp).abs()


def kl_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    k_ratio: float = 2e-3,
    kl_coef: float = 1.0,
    agg: str = "token-mean",
) -> torch.Tensor:
    """KL-Cov policy loss (scalar): :func:`kl_cov_token_loss` aggregated."""
    return aggregate(kl_cov_token_loss(logp, old_logp, advantages, mask, k_ratio, kl_coef), mask, agg)


@register
class ClipCov(PolicyLoss):
    """Clip-Cov (defaults from the paper, 7B models)."""

    name = "clip_cov"

    @dataclass
    class Config:
        clip_ratio: float = setting(2e-4, "fraction of tokens whose gradient is dropped")
        cov_low: float = setting(1.0, "lower covariance bound of the candidates")
        cov_high: float = setting(5.0, "upper covariance bound of the candidates")

    needs_minibatch = True

    def prepare(self, minibatch: Tokens) -> None:
        c = self.config
        keep = clip_cov_keep(
            minibatch.logp, minibatch.old_logp, minibatch.advantages, minibatch.mask, c.clip_ratio, c.cov_low,
            c.cov_high, minibatch.eps_low, minibatch.eps_high, minibatch.generator,
            row_ids=torch.tensor(minibatch.steps, dtype=torch.long), reduce=minibatch.reduce,
        )  # fmt: skip
        self._selected = _by_step(minibatch, keep)

    def __call__(self, tokens: Tokens) -> torch.Tensor:
        keep = _rows(self._selected, tokens)
        return clip_token_loss(tokens.logp, tokens.old_logp, tokens.advantages, tokens.eps_low, tokens.eps_high) * keep


@register
class KLCov(PolicyLoss):
    """KL-Cov (defaults from the paper, 7B models)."""

    name = "kl_cov"

    @dataclass
    class Config:
        k_ratio: float = setting(2e-3, "fraction of top-covariance tokens that get the KL penalty")
        kl_coef: float = setting(1.0, "weight of |log pi - log pi_old| on those tokens")

    needs_minibatch = True

    def prepare(self, minibatch: Tokens) -> None:
        penalised = kl_cov_penalised(
            minibatch.logp, minibatch.advantages, minibatch.mask, self.config.k_ratio,
            row_ids=torch.tensor(minibatch.steps, dtype=torch.long), reduce=minibatch.reduce,
        )  # fmt: skip
        self._selected = _by_step(minibatch, penalised)

    def __call__(self, tokens: Tokens) -> torch.Tensor:
        c = self.config
        penalised = _rows(self._selected, tokens)
        return kl_cov_token_loss(tokens.logp, tokens.old_logp, tokens.advantages, tokens.mask, c.k_ratio, c.kl_coef, penalised)


def _by_step(minibatch: Tokens, selection: torch.Tensor) -> dict[int, torch.Tensor]:
    """A mini-batch selection ``[N, R]`` as ``step -> row``, to be read back per micro-batch."""
    assert minibatch.steps is not None
    return {step: selection[k] for k, step in enumerate(minibatch.steps)}


def _rows(selected: dict[int, torch.Tensor], tokens: Tokens) -> torch.Tensor:
    """The rows of a mini-batch selection for this micro-batch's steps, ``[n, R]``."""
    assert tokens.steps is not None
    width = tokens.mask.shape[1]
    if not tokens.steps:  # a pass with no rows (a rank lining up its collectives)
        return tokens.mask.new_zeros(tokens.mask.shape)
    return torch.stack([selected[step][:width] for step in tokens.steps])
