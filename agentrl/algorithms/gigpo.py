"""GiGPO: Group-in-Group Policy Optimization (arXiv 2505.10978; code: verl-agent ``gigpo/core_gigpo.py``).

GRPO gives every turn of a trajectory the same advantage. GiGPO adds a step-level one without extra
rollouts: the ``N`` trajectories of a group start from the same task, so they keep revisiting the
same environment states ("anchor states"); the actions taken from one state form a step group and
are compared by their discounted returns. With ``F`` the normalisation (``std + eps``, or 1):

    A^E(tau_i) = (R(tau_i) - mean_g R) / F_g                          # Eq. 3, episode level
    R_t^(i)    = sum_{k >= t} gamma^(k - t) r_k^(i)                    # Eq. 5, discounted return
    G^S(s~)    = {(i, t) : s_t^(i) = s~, tau_i in the group}          # Eq. 6, anchor state grouping
    A^S(a_t^(i)) = (R_t^(i) - mean_{G^S} R) / F_{G^S}                 # Eq. 7, step level
    A(a_t^(i)) = A^E(tau_i) + omega * A^S(a_t^(i))                    # Eq. 8

Anchor states are the env's own observation at the turn (not the prompt, which carries history),
matched exactly within one episode group; a state seen twice in one trajectory contributes both
visits (the paper's Fig. 3 example). A step group of one has nothing to compare with: ``A^S = 0``.
``std`` is Bessel's, ``eps`` is added to it (verl-agent). ``scale_by_std`` is F for both levels, like
verl-agent's ``mode`` (``mean_std_norm`` = True, ``mean_norm`` = False).

Where verl-agent's code, which produced the published numbers, differs from the paper's text:

* ``episode_weighting="step"`` (default, the code): the episode mean/std of a group are taken over
  its *rows*, each row carrying its trajectory's return, so long trajectories weigh more.
  ``"trajectory"`` is Eq. 3 (one return per trajectory).
* ``action_penalty`` (the code's invalid-action penalty, ``0.1 * invalid``): subtracted from the
  row's episode score and from its step return, neither discounted nor summed over the trajectory.
  The paper's reading (``r_t = -0.1``) is obtained by putting the penalty into ``step_rewards`` and
  ``returns`` instead.
* A group whose statistics come from one value gets ``A^E = 0`` here (as in :mod:`grpo`); verl-agent
  then uses mean 0 and std 1, i.e. the raw score.

The learner's plug-in is :class:`GiGPO` (``LearnerConfig(advantage="gigpo", options={"gigpo": {...}})``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

import torch

from agentrl.algorithms import grpo
from agentrl.algorithms._common import IdsLike, as_codes, check_contiguous
from agentrl.algorithms.registry import AdvantageEstimator, AlgorithmConfigError, Reduce, Steps, register
from agentrl.config import setting

EpisodeWeighting = Literal["step", "trajectory"]
RowIndex = torch.Tensor | Sequence[int]  # [S] row -> trajectory index into the [T] tensors


def discounted_returns(
    step_rewards: torch.Tensor,
    traj_index: IdsLike,
    gamma: float,
    turn: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 5, ``R_t = sum_{k >= t} gamma^(turn_k - turn_t) r_k`` within each trajectory: ``[S] -> [S]``.

    Rows of a trajectory must be contiguous and in turn order. ``turn`` (strictly increasing within
    a trajectory) makes the discount count turns rather than rows, so a turn left out of the batch
    still costs a factor ``gamma``; without it consecutive rows are one turn apart.
    """
    step_rewards = torch.as_tensor(step_rewards)
    if step_rewards.dim() != 1:
        raise ValueError(f"step_rewards must be 1-D [S], got shape {tuple(step_rewards.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    codes, _ = as_codes(traj_index)
    n_rows = step_rewards.numel()
    if codes.numel() != n_rows:
        raise ValueError(f"{n_rows} step rewards but {codes.numel()} trajectory indices")
    check_contiguous(codes)
    turns = list(range(n_rows)) if turn is None else [int(t) for t in torch.as_tensor(turn).tolist()]
    if len(turns) != n_rows:
        raise ValueError(f"{n_rows} step rewards but {len(turns)} turn numbers")
    if not torch.isfinite(step_rewards).all():
        raise ValueError("step_rewards must be finite: a reward that is NaN or infinite is a bug upstream")
    rewards = step_rewards.tolist()
    out = [0.0] * n_rows
    code_list = codes.tolist()
    for s in reversed(range(n_rows)):
        if s + 1 < n_rows and code_list[s + 1] == code_list[s]:
            gap = turns[s + 1] - turns[s]
            if gap <= 0:
                raise ValueError(
                    f"turn numbers must increase within a trajectory (row {s}: {turns[s]} -> {turns[s + 1]})"
                )
            out[s] = rewards[s] + gamma**gap * out[s + 1]
        else:  # last row of its trajectory
            out[s] = rewards[s]
    dtype = torch.promote_types(step_rewards.dtype, torch.float32)
    return torch.tensor(out, dtype=dtype, device=step_rewards.device)


def anchor_groups(
    observations: Sequence[Hashable],
    row_group_ids: IdsLike,
    similarity_threshold: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Eq. 6: step-group codes ``[S]`` (dense, ``0..n-1``) and their number.

    Two rows share a step group when they belong to the same episode group and their observations
    are equal (a hash lookup). ``similarity_threshold`` in (0, 1) switches to verl-agent's
    similarity grouping for text: a row joins the first earlier cluster (in row order) whose first
    observation has ``difflib.SequenceMatcher(None, a, b).ratio() >= threshold``. That costs
    O(rows x clusters x length^2) per group, so it stays off for long observations.
    """
    group_codes, _ = as_codes(row_group_ids)
    if group_codes.numel() != len(observations):
        raise ValueError(f"{len(observations)} observations but {group_codes.numel()} group ids")
    if similarity_threshold is None:
        return as_codes(list(zip(group_codes.tolist(), observations, strict=True)))
    if not 0.0 < similarity_threshold < 1.0:
        raise ValueError(f"similarity_threshold must be in (0, 1), got {similarity_threshold}")
    clusters: dict[int, list[tuple[str, int]]] = {}  # episode group -> [(representative, step group)]
    codes: list[int] = []
    n_groups = 0
    for group, obs in zip(group_codes.tolist(), observations, strict=True):
        if not isinstance(obs, str):
            raise TypeError(
                f"similarity grouping compares text; got an observation of type {type(obs).__name__}"
            )
        found = None
        for representative, step_group in clusters.setdefault(group, []):
            if SequenceMatcher(None, obs, representative).ratio() >= similarity_threshold:
                found = step_group
                break
        if found is None:
            found = n_groups
            n_groups += 1
            clusters[group].append((obs, found))
        codes.append(found)
    return torch.tensor(codes, dtype=torch.long), n_groups


def episode_advantages(
    returns: torch.Tensor,
    group_ids: IdsLike,
    traj_index: RowIndex,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    weighting: EpisodeWeighting = "step",
    action_penalty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3 per row: ``returns [T], group_ids [T], traj_index [S] -> A^E [S]``.

    Each row's score is its trajectory's return minus its ``action_penalty``. ``weighting="step"``
    normalises the scores over the rows of the group (verl-agent); ``"trajectory"`` takes mean and
    std over the group's trajectory returns (the paper) and applies them to the row scores.
    """
    returns = torch.as_tensor(returns)
    if returns.dim() != 1:
        raise ValueError(f"returns must be 1-D [T], got shape {tuple(returns.shape)}")
    dtype = torch.promote_types(returns.dtype, torch.float32)
    returns = returns.to(torch.float64)  # statistics in float64, as grpo.advantages: equal scores give exactly 0
    group_codes, n_groups = as_codes(group_ids, device=returns.device)
    if group_codes.numel() != returns.numel():
        raise ValueError(f"{returns.numel()} returns but {group_codes.numel()} group ids")
    rows = torch.as_tensor(traj_index, dtype=torch.long, device=returns.device)
    if rows.numel() and (rows.min() < 0 or rows.max() >= returns.numel()):
        raise ValueError(f"traj_index must lie in [0, {returns.numel()}) for {returns.numel()} returns")
    scores = returns[rows]  # [S]
    if action_penalty is not None:
        scores = scores - _per_row(action_penalty, rows.numel(), returns.dtype, returns.device)
    if weighting == "step":
        return grpo.advantages(scores, group_codes[rows], scale_by_std=scale_by_std, eps=eps).to(dtype)
    if weighting != "trajectory":
        raise ValueError(f"unknown episode weighting {weighting!r}; use 'step' or 'trajectory'")
    count = torch.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(
        0, group_codes, torch.ones_like(returns)
    )
    mean = torch.zeros_like(count).index_add_(0, group_codes, returns) / count  # [G]
    row_group = group_codes[rows]  # [S]
    adv = scores - mean[row_group]
    if scale_by_std:
        squares = torch.zeros_like(count).index_add_(0, group_codes, (returns - mean[group_codes]) ** 2)
        std = (squares / (count - 1).clamp(min=1)).sqrt()  # [G], Bessel's correction
        adv = adv / (std[row_group] + eps)
    return torch.where(count[row_group] > 1, adv, torch.zeros_like(adv)).to(dtype)


def step_advantages(
    step_returns: torch.Tensor, step_groups: IdsLike, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Eq. 7: ``R_t [S], step-group ids [S] -> A^S [S]``; a step group of one gets 0."""
    return grpo.advantages(step_returns, step_groups, scale_by_std=scale_by_std, eps=eps)


def returns_over_turns(
    episode_rewards: Sequence[Sequence[float]],
    traj_index: RowIndex,
    turn: Sequence[int] | torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Eq. 5 for the rows of a batch from every turn of their episodes: ``-> R_t [S]``.

    ``episode_rewards[t]`` is trajectory ``t``'s env reward at each of its turns, in turn order,
    including turns that are not rows of the batch (no sampled tokens); row ``s`` is turn
    ``turn[s]`` of trajectory ``traj_index[s]`` and gets ``sum_{k >= turn} gamma^(k - turn) r_k``
    over that full list. A reward earned at a turn left out of the batch therefore still reaches
    the rows before it, which :func:`discounted_returns` over the rows alone cannot see.
    """
    rows = torch.as_tensor(traj_index, dtype=torch.long).tolist()
    turns = [int(t) for t in torch.as_tensor(turn).tolist()]
    if len(turns) != len(rows):
        raise ValueError(f"{len(rows)} trajectory indices but {len(turns)} turn numbers")
    lengths = [len(r) for r in episode_rewards]
    flat = torch.tensor([float(r) for rewards in episode_rewards for r in rewards], dtype=torch.float64)
    owner = [t for t, n in enumerate(lengths) for _ in range(n)]
    per_turn = discounted_returns(flat, owner, gamma).tolist()  # every turn of every episode
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    out = []
    for s, (t, k) in enumerate(zip(rows, turns, strict=True)):
        if not 0 <= t < len(lengths):
            raise ValueError(f"row {s}: trajectory {t} has no reward list ({len(lengths)} given)")
        if not 0 <= k < lengths[t]:
            raise ValueError(f"row {s}: turn {k} outside trajectory {t}'s {lengths[t]} turns")
        out.append(per_turn[offsets[t] + k])
    return torch.tensor(out, dtype=torch.float32)


def advantages(
    returns: torch.Tensor,
    group_ids: IdsLike,
    traj_index: RowIndex,
    step_rewards: torch.Tensor,
    observations: Sequence[Hashable],
    *,
    turn: Sequence[int] | torch.Tensor | None = None,
    gamma: float = 0.95,
    omega: float = 1.0,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    episode_weighting: EpisodeWeighting = "step",
    action_penalty: torch.Tensor | None = None,
    similarity_threshold: float | None = None,
) -> torch.Tensor:
    """Eq. 8, ``A = A^E + omega * A^S`` per row (agent turn): ``-> [S]``.

    ``returns [T]`` and ``group_ids [T]`` are per trajectory (the episode return and its GRPO
    group); ``traj_index [S]``, ``step_rewards [S]`` (the env reward of the turn), ``observations
    [S]`` (the env observation the turn acted on) and ``turn [S]`` are per row, a trajectory's rows
    contiguous and in turn order. Defaults are verl-agent's ALFWorld/WebShop values
    (gamma 0.95, omega 1). No gradient flows through (advantages are constants of the loss).
    The step returns come from the rows' own rewards; when an episode has turns that are not rows,
    compute them with :func:`returns_over_turns` and call :func:`advantages_from_step_returns`.
    """
    with torch.no_grad():
        step_rewards = torch.as_tensor(step_rewards)
        rows = torch.as_tensor(traj_index, dtype=torch.long)
        if rows.numel() != step_rewards.numel():
            raise ValueError(
                f"per-row inputs disagree: {rows.numel()} trajectory indices, {step_rewards.numel()} step rewards"
            )
        step_returns = discounted_returns(step_rewards, rows, gamma, turn)  # R_t [S]
        return advantages_from_step_returns(
            returns, group_ids, rows, step_returns, observations, omega=omega, scale_by_std=scale_by_std, eps=eps,
            episode_weighting=episode_weighting, action_penalty=action_penalty,
            similarity_threshold=similarity_threshold,
        )  # fmt: skip


def advantages_from_step_returns(
    returns: torch.Tensor,
    group_ids: IdsLike,
    traj_index: RowIndex,
    step_returns: torch.Tensor,
    observations: Sequence[Hashable],
    *,
    omega: float = 1.0,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    episode_weighting: EpisodeWeighting = "step",
    action_penalty: torch.Tensor | None = None,
    similarity_threshold: float | None = None,
) -> torch.Tensor:
    """Eqs. 3, 6-8 given each row's discounted return ``R_t`` (Eq. 5): ``-> A [S]``.

    As :func:`advantages`, with ``step_returns [S]`` in place of the step rewards and discount.
    ``action_penalty [S]`` is subtracted from the rows' episode scores and from ``step_returns``.
    """
    with torch.no_grad():
        step_returns = torch.as_tensor(step_returns)
        rows = torch.as_tensor(traj_index, dtype=torch.long)
        if rows.numel() != step_returns.numel() or len(observations) != rows.numel():
            raise ValueError(
                f"per-row inputs disagree: {rows.numel()} trajectory indices, {step_returns.numel()} step "
                f"returns, {len(observations)} observations"
            )
        episode = episode_advantages(
            returns, group_ids, rows, scale_by_std, eps, episode_weighting, action_penalty
        )  # A^E [S]
        if action_penalty is not None:
            step_returns = step_returns - _per_row(
                action_penalty, rows.numel(), step_returns.dtype, step_returns.device
            )
        group_codes, _ = as_codes(group_ids)
        step_groups, _ = anchor_groups(observations, group_codes[rows], similarity_threshold)  # [S]
        step = step_advantages(step_returns, step_groups, scale_by_std, eps)  # A^S [S]
        return episode + omega * step.to(episode.device, episode.dtype)


def _per_row(values: torch.Tensor | Sequence[float], n_rows: int, dtype: torch.dtype, device) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=dtype, device=device)
    if values.shape != (n_rows,):
        raise ValueError(f"action_penalty must be [S] = [{n_rows}], got shape {tuple(values.shape)}")
    return values


@register
class GiGPO(AdvantageEstimator):
    """GiGPO's ``A^E + omega A^S`` per step (module docstring), defaults = verl-agent's GiGPO scripts.

    Inputs from the batch: each trajectory's return and GRPO group, each step's turn, the env
    observation it acted on (``Step.observation``: the anchor state, never the prompt), its
    ``info`` (for the invalid-action penalty), and every turn's reward of each episode
    (``Steps.episode_rewards``), so that ``R_t`` discounts over all of an episode's turns, also
    those without sampled tokens (they are not steps of the batch: no advantage of their own, not
    in any step group). Step groups are formed among the batch's steps.

    Whole-batch statistics: none. Both levels look only inside one GRPO group (step groups never
    cross episode groups), so a data-parallel shard of whole groups gives every step the advantage
    it has in the full batch; ``reduce`` is not used.
    """

    name = "gigpo"

    @dataclass
    class Config:
        gamma: float = setting(0.95, "discount of the step returns R_t (verl-agent: gamma 0.95)")
        omega: float = setting(1.0, "weight of the step-level advantage (verl-agent: step_advantage_w 1.0)")
        scale_by_std: bool = setting(True, "F = std + eps (mean_std_norm, ALFWorld); False: F = 1 (mean_norm, WebShop)")
        eps: float = setting(1e-6, "added to the standard deviation (verl-agent: 1e-6)")
        episode_weighting: EpisodeWeighting = setting("step", "episode stats over rows (verl-agent) or trajectories (Eq. 3)")
        similarity_threshold: float | None = setting(None, "None: exact observation match (verl-agent); else difflib ratio")
        invalid_penalty: float = setting(0.1, "off an invalid step's episode score and step return (verl-agent: 0.1)")
        invalid_key: str = setting("parse_error", "Step.info flag of an invalid step; parse_error = format, as verl-agent")
        reward_scale: float = setting(1.0, "multiplies env rewards (verl-agent's ALFWorld/WebShop pay 10 per success)")

    def __init__(self, config: Any = None):
        super().__init__(config)
        c = self.config
        for ok, what in (
            (0.0 <= c.gamma <= 1.0, f"gamma must be in [0, 1], got {c.gamma}"),
            (c.eps >= 0, f"eps must be >= 0, got {c.eps}"),
            (c.invalid_penalty >= 0, f"invalid_penalty must be >= 0, got {c.invalid_penalty}"),
            (c.reward_scale > 0, f"reward_scale must be > 0, got {c.reward_scale}"),
            (
                c.similarity_threshold is None or 0.0 < c.similarity_threshold < 1.0,
                f"similarity_threshold must be in (0, 1) or None, got {c.similarity_threshold}",
            ),
        ):
            if not ok:
                raise AlgorithmConfigError(f"advantage 'gigpo': {what}")

    def __call__(self, steps: Steps, reduce: Reduce) -> torch.Tensor:
        c = self.config
        n_steps = steps.traj_index.numel()
        if len(steps.episode_rewards) != steps.returns.numel():
            raise ValueError(
                f"GiGPO needs every turn's reward of each trajectory (Steps.episode_rewards): got "
                f"{len(steps.episode_rewards)} reward lists for {steps.returns.numel()} trajectories"
            )
        rewards = [[c.reward_scale * float(r) for r in episode] for episode in steps.episode_rewards]
        step_returns = returns_over_turns(rewards, steps.traj_index, steps.turn, c.gamma)  # R_t [S]
        penalty = None
        if c.invalid_penalty > 0:
            if len(steps.infos) != n_steps:
                raise ValueError(f"GiGPO's invalid-action penalty needs each step's info: {len(steps.infos)} for {n_steps}")
            invalid = [bool(info.get(c.invalid_key)) for info in steps.infos]
            penalty = c.invalid_penalty * torch.tensor(invalid, dtype=torch.float32)  # [S]
        return advantages_from_step_returns(
            steps.returns * c.reward_scale, steps.group_ids, steps.traj_index, step_returns, steps.observations,
            omega=c.omega, scale_by_std=c.scale_by_std, eps=c.eps, episode_weighting=c.episode_weighting,
            action_penalty=penalty, similarity_threshold=c.similarity_threshold,
        )  # fmt: skip
