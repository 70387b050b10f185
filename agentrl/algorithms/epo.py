"""EPO: Entropy-regularized Policy Optimization for multi-turn agents (arXiv 2509.22576).

EPO adds two entropy terms to the PPO loss, both averaged the multi-turn way (mean over
trajectories of the mean over turns of each turn's token-mean):

    L_H      = E_traj E_turn mean_tokens H                          # entropy bonus
    P        = alpha * (relu(kappa_l * Hbar - H) + relu(H - kappa_r * Hbar))   # per token
    L_smooth = E_traj E_turn mean_tokens P                          # entropy-smoothing corridor
    beta_k   = 1 + exp(-gamma * k / floor(K / 2))                   # strong early, -> 1 later
    L        = L_PPO - lambda * (L_H - beta_k * L_smooth)

``Hbar`` is the cumulative mean of the batch token-mean entropies of the previous training steps
(:class:`EntropyHistory`); at step 0 there is no history and no penalty. The paper's penalty is
differentiable; the authors' released code detaches it (``detach=True`` reproduces that).
Defaults: lambda = 1e-3, kappa_l = 0, kappa_r = 2, gamma = 3, alpha = 0.1 (ALFWorld) / 0.05 (ScienceWorld).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.algorithms._common import IdsLike, as_codes, row_mean
from agentrl.algorithms.registry import LossTerm, Reduce, Tokens, register
from agentrl.config import setting


def turn_weights(mask: torch.Tensor, traj_ids: IdsLike, reduce: Reduce | None = None) -> torch.Tensor:
    """Weight of each turn in the nested mean: ``1 / (n_traj * n_turns(traj))``, ``[S]``.

    Turns with no trainable token get 0 and do not count as turns; a trajectory with none does not
    count as a trajectory. ``sum(w * turn_mean)`` is then the mean over trajectories of the mean
    over turns, and the learner can sum it across micro-batches using weights from the full batch.
    With ``reduce``, ``n_traj`` counts the trajectories of every rank (a rank holds whole ones).
    """
    codes, n = as_codes(traj_ids, device=mask.device)
    valid = mask.to(torch.bool).any(-1).to(torch.float64)  # [S]
    turns = torch.zeros(n, dtype=torch.float64, device=mask.device).index_add_(0, codes, valid)  # [T]
    n_traj = (turns > 0).sum()
    n_traj = (n_traj if reduce is None else reduce.sum(n_traj)).clamp(min=1)
    w = valid / (turns[codes].clamp(min=1) * n_traj)
    return w.to(torch.float32)


def weighted_turn_mean(token_values: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_s weights[s] * token-mean of row s``: the nested mean given :func:`turn_weights` (scalar).

    The learner calls this per micro-batch with weights taken from the whole batch; the parts add
    up to the full-batch value exactly.
    """
    return (weights.to(token_values.dtype) * row_mean(token_values, mask)).sum()


def trajectory_entropy(token_entropy: torch.Tensor, mask: torch.Tensor, traj_ids: IdsLike) -> torch.Tensor:
    """``L_H``: mean over trajectories of the mean over turns of token-mean entropy (scalar)."""
    return weighted_turn_mean(token_entropy, mask, turn_weights(mask, traj_ids))


def token_penalty(
    token_entropy: torch.Tensor,
    reference: float | torch.Tensor,
    kappa_l: float = 0.0,
    kappa_r: float = 2.0,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Per-token corridor penalty ``alpha * (relu(kappa_l*ref - H) + relu(H - kappa_r*ref))``, ``[S, L]``."""
    ref = torch.as_tensor(reference, dtype=token_entropy.dtype, device=token_entropy.device)
    return alpha * (torch.relu(kappa_l * ref - token_entropy) + torch.relu(token_entropy - kappa_r * ref))


def smoothing_penalty(
    token_entropy: torch.Tensor,
    mask: torch.Tensor,
    traj_ids: IdsLike,
    reference: float | torch.Tensor | None,
    kappa_l: float = 0.0,
    kappa_r: float = 2.0,
    alpha: float = 0.1,
    *,
    detach: bool = False,
) -> torch.Tensor:
    """``L_smooth``: the nested mean of the corridor penalty (scalar, differentiable unless ``detach``).

    ``reference=None`` (no entropy history yet: training step 0) gives 0.
    """
    if reference is None:
        return torch.zeros((), dtype=token_entropy.dtype, device=token_entropy.device)
    penalty = token_penalty(token_entropy, reference, kappa_l, kappa_r, alpha)  # [S, L]
    if detach:
        penalty = penalty.detach()
    return weighted_turn_mean(penalty, mask, turn_weights(mask, traj_ids))


def beta(step: int, total_steps: int, gamma: float = 3.0) -> float:
    """``beta_k = 1 + exp(-gamma * k / floor(K / 2))``; ``floor(K/2)`` is taken as 1 when ``K < 2``."""
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got step={step}, total_steps={total_steps}")
    half = max(total_steps // 2, 1)
    return 1.0 + math.exp(-gamma * step / half)


def loss(
    ppo_loss: torch.Tensor,
    traj_entropy: torch.Tensor,
    smooth_penalty: torch.Tensor,
    beta_k: float,
    lam: float = 1e-3,
) -> torch.Tensor:
    """``L = L_PPO - lambda * (L_H - beta_k * L_smooth)``."""
    return ppo_loss - lam * (traj_entropy - beta_k * smooth_penalty)


class EntropyHistory:
    """History of batch token-mean entropies; ``reference`` is their cumulative mean.

    Call :meth:`reference` before the step's update (``None`` at step 0: no penalty) and
    :meth:`update` with this step's batch entropy after it. Checkpoint with ``state_dict``.
    """

    def __init__(self) -> None:
        self.history: list[float] = []

    @property
    def reference(self) -> float | None:
        return sum(self.history) / len(self.history) if self.history else None

    def update(self, batch_entropy: float | torch.Tensor) -> None:
        value = float(batch_entropy)
        if not math.isfinite(value):
            raise ValueError(f"batch entropy must be finite, got {value}")
        self.history.append(value)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(v) for v in state["history"]]


@register
class EPO(LossTerm):
    """EPO's two entropy terms, ``-lambda (L_H - beta_k L_smooth)``, with the entropy history as state.

    Defaults from the paper (ALFWorld; ``alpha=0.05`` for ScienceWorld).
    """

    name = "epo"
    needs_schedule = True  # beta_k decays over the run's K optimizer steps

    @dataclass
    class Config:
        lam: float = setting(1e-3, "lambda: weight of the entropy terms")
        kappa_l: float = setting(0.0, "lower corridor bound, as a multiple of the reference entropy")
        kappa_r: float = setting(2.0, "upper corridor bound, as a multiple of the reference entropy")
        gamma: float = setting(3.0, "decay rate of beta_k")
        alpha: float = setting(0.1, "penalty scale (0.05 for ScienceWorld)")
        detach_penalty: bool = setting(False, "True = the authors' code (penalty without gradient), False = the paper")

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.history = EntropyHistory()
        self.reference: float | None = None
        self.beta_k = 0.0

    def start_step(self, step: int, total_steps: int | None) -> None:
        self.reference = self.history.reference
        self.beta_k = beta(step, total_steps, self.config.gamma)

    def __call__(self, tokens: Tokens) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        traj_entropy = tokens.nested_mean(tokens.entropy)  # L_H share
        smooth = torch.zeros((), device=tokens.entropy.device)
        if self.reference is not None:  # step 0: no history, no penalty
            penalty = token_penalty(tokens.entropy, self.reference, c.kappa_l, c.kappa_r, c.alpha)  # [n, R]
            smooth = tokens.nested_mean(penalty.detach() if c.detach_penalty else penalty)
        term = -c.lam * (traj_entropy - self.beta_k * smooth)
        return term, {"epo_entropy": traj_entropy.item(), "epo_smooth": smooth.item()}

    def end_step(self, batch_entropy: float) -> dict[str, Any]:
        self.history.update(batch_entropy)
        return {"epo_beta": self.beta_k, "epo_reference": self.reference}

    def state_dict(self) -> dict[str, Any]:
        return self.history.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state)
