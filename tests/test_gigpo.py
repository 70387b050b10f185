"""GiGPO against hand-computed values from the paper's equations (arXiv 2505.10978, Eqs. 3, 5-8).

The arithmetic is written out next to each expected value. The batch of
``test_combined_advantage_on_a_two_group_batch`` was also fed, outside this suite, to verl-agent's
own ``compute_gigpo_outcome_advantage`` (gigpo/core_gigpo.py at langfengQ/verl-agent 2716b30 and at
the paper-era 54df099): it returns these values to float32 rounding. Its code is not copied here.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms import gigpo, grpo

EPS = 1e-6


def close(got: torch.Tensor, expected: list[float], atol: float = 1e-5) -> None:
    torch.testing.assert_close(got, torch.tensor(expected, dtype=got.dtype), rtol=0, atol=atol)


# ---------------------------------------------------------------- Eq. 5, discounted returns


def test_discounted_returns_by_hand():
    rewards = torch.tensor([0.0, 0.0, 10.0, 1.0, -1.0])
    traj = torch.tensor([0, 0, 0, 1, 1])
    # traj 0, gamma 0.5: R_2 = 10, R_1 = 0 + 0.5 * 10 = 5, R_0 = 0 + 0.5 * 5 = 2.5
    # traj 1: R_1 = -1, R_0 = 1 + 0.5 * (-1) = 0.5 (the discount never crosses trajectories)
    close(gigpo.discounted_returns(rewards, traj, gamma=0.5), [2.5, 5.0, 10.0, 0.5, -1.0])
    # gamma = 1: plain reward-to-go
    close(gigpo.discounted_returns(rewards, traj, gamma=1.0), [10.0, 10.0, 10.0, 0.0, -1.0])


def test_sparse_success_reward_is_discounted_by_distance_to_the_end():
    # verl-agent's ALFWorld reward: 10 on the winning (last) step, 0 elsewhere; gamma = 0.95
    rewards = torch.tensor([0.0, 0.0, 0.0, 10.0])
    got = gigpo.discounted_returns(rewards, [7, 7, 7, 7], gamma=0.95)
    close(got, [10 * 0.95**3, 10 * 0.95**2, 10 * 0.95, 10.0])


def test_turn_numbers_count_turns_missing_from_the_batch():
    # turns 0 and 2 (turn 1 had no trainable tokens): R_0 = 0 + 0.5^2 * 8 = 2
    got = gigpo.discounted_returns(torch.tensor([0.0, 8.0]), [0, 0], gamma=0.5, turn=[0, 2])
    close(got, [2.0, 8.0])


def test_discounted_returns_rejects_bad_batches():
    with pytest.raises(ValueError, match="not contiguous"):
        gigpo.discounted_returns(torch.zeros(3), [0, 1, 0], gamma=0.9)
    with pytest.raises(ValueError, match="must increase"):
        gigpo.discounted_returns(torch.zeros(2), [0, 0], gamma=0.9, turn=[3, 3])
    with pytest.raises(ValueError, match="finite"):
        gigpo.discounted_returns(torch.tensor([0.0, float("nan")]), [0, 0], gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        gigpo.discounted_returns(torch.zeros(1), [0], gamma=1.5)
    with pytest.raises(ValueError, match="trajectory indices"):
        gigpo.discounted_returns(torch.zeros(2), [0], gamma=0.9)


# ---------------------------------------------------------------- Eq. 6, anchor states


def same_partition(codes: torch.Tensor, expected_blocks: list[list[int]]) -> None:
    blocks: dict[int, list[int]] = {}
    for row, code in enumerate(codes.tolist()):
        blocks.setdefault(code, []).append(row)
    assert sorted(blocks.values()) == sorted(expected_blocks)


def test_anchor_groups_match_exact_observations_within_one_episode_group():
    observations = ["room", "cab 1", "room", "cab 1", "cab 1 ", "room", "cab 1"]
    groups = ["g", "g", "g", "g", "g", "h", "h"]
    codes, n = gigpo.anchor_groups(observations, groups)
    # rows 0 and 2 share "room" (also two visits by one trajectory count twice); "cab 1 " with a
    # trailing space is another state; group h's "room" and "cab 1" never join group g's.
    same_partition(codes, [[0, 2], [1, 3], [4], [5], [6]])
    assert n == 5


def test_similarity_grouping_by_hand():
    # SequenceMatcher ratio = 2 M / (len a + len b): "abcd" vs "abce" -> 2 * 3 / 8 = 0.75;
    # "abcd" vs "abxy" -> 2 * 2 / 8 = 0.5; each row is compared with a cluster's first member.
    observations = ["abcd", "abce", "abxy"]
    codes, _ = gigpo.anchor_groups(observations, ["g"] * 3, similarity_threshold=0.7)
    same_partition(codes, [[0, 1], [2]])
    codes, _ = gigpo.anchor_groups(observations, ["g"] * 3, similarity_threshold=0.8)
    same_partition(codes, [[0], [1], [2]])
    codes, _ = gigpo.anchor_groups(["abcd", "abcd"], ["g", "h"], similarity_threshold=0.5)
    same_partition(codes, [[0], [1]])  # never across episode groups
    with pytest.raises(ValueError, match="similarity_threshold"):
        gigpo.anchor_groups(observations, ["g"] * 3, similarity_threshold=1.0)
    with pytest.raises(TypeError, match="compares text"):
        gigpo.anchor_groups([("x", 1)], ["g"], similarity_threshold=0.9)


# ---------------------------------------------------------------- Eqs. 3, 7, 8 on one batch

# Two episode groups, gamma = 0.5. Rows (trajectory: observation/reward per turn):
#   group g  tau0: s0/0  A/0  B/0  A/10   (won; visits A twice)   R_t = 1.25, 2.5, 5, 10
#            tau1: s0/0  A/0  C/0         (lost)                  R_t = 0, 0, 0
#            tau2: s0/0  B/0  D/10        (won)                   R_t = 2.5, 5, 10
#   group h  tau3: s0/0  A/4                                      R_t = 2, 4
#            tau4: s0/2                                           R_t = 2
BATCH = dict(
    returns=torch.tensor([10.0, 0.0, 10.0, 4.0, 2.0]),
    group_ids=["g", "g", "g", "h", "h"],
    traj_index=torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]),
    step_rewards=torch.tensor([0, 0, 0, 10, 0, 0, 0, 0, 0, 10, 0, 4, 2], dtype=torch.float32),
    observations=["s0", "A", "B", "A", "s0", "A", "C", "s0", "B", "D", "s0", "A", "s0"],
)
# Step groups: g/s0 = {1.25, 0, 2.5} (mean 1.25); g/A = {2.5, 10, 0} (mean 25/6);
# g/B = {5, 5} (equal: 0); g/C, g/D, h/A singletons (0); h/s0 = {2, 2} (equal: 0).
STEP_MEAN_NORM = [0.0, 2.5 - 25 / 6, 0.0, 10 - 25 / 6, 0 - 1.25, 0 - 25 / 6, 0.0, 2.5 - 1.25, 0.0, 0.0]
STEP_MEAN_NORM += [0.0, 0.0, 0.0]


def test_step_advantages_by_hand():
    returns = gigpo.discounted_returns(BATCH["step_rewards"], BATCH["traj_index"], gamma=0.5)
    close(returns, [1.25, 2.5, 5, 10, 0, 0, 0, 2.5, 5, 10, 2, 4, 2])
    codes, _ = gigpo.anchor_groups(
        BATCH["observations"], [BATCH["group_ids"][t] for t in BATCH["traj_index"]]
    )
    close(gigpo.step_advantages(returns, codes, scale_by_std=False), STEP_MEAN_NORM)
    # with std (Bessel): g/s0 deviations (0, -1.25, 1.25) -> var 3.125 / 2, std 1.25;
    # g/A deviations (-5/3, 35/6, -25/6) -> squares 100/36 + 1225/36 + 625/36 = 1950/36, var / 2
    std_s0, std_a = 1.25, math.sqrt(1950 / 36 / 2)
    a = [x / (std_a + EPS) for x in (2.5 - 25 / 6, 10 - 25 / 6, -25 / 6)]
    s = [x / (std_s0 + EPS) for x in (0.0, -1.25, 1.25)]
    close(
        gigpo.step_advantages(returns, codes, scale_by_std=True),
        [s[0], a[0], 0, a[1], s[1], a[2], 0, s[2], 0, 0, 0, 0, 0],
    )
    # the paper's Fig. 3 ordering at a state visited twice by the winner and once by the loser:
    # the later (closer to success) visit > the earlier visit > the failing trajectory's visit
    adv = gigpo.step_advantages(returns, codes, scale_by_std=False)
    assert adv[3] > adv[1] > adv[5]


def test_episode_advantages_step_and_trajectory_weighting_by_hand():
    args = (BATCH["returns"], BATCH["group_ids"], BATCH["traj_index"])
    per_row = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4]
    # verl-agent ("step"): each row carries its trajectory's return.
    # g: 4 rows of 10, 3 of 0, 3 of 10 -> mean 7; h: rows 4, 4, 2 -> mean 10/3
    step = [3.0, -7.0, 3.0, 2 / 3, -4 / 3]
    close(gigpo.episode_advantages(*args, scale_by_std=False), [step[t] for t in per_row])
    # std over rows: g sum of squares 7 * 3^2 + 3 * 7^2 = 210 over 9; h (4 + 4 + 16) / 9 over 2
    std_g, std_h = math.sqrt(210 / 9), math.sqrt(24 / 9 / 2)
    step_std = [3 / (std_g + EPS), -7 / (std_g + EPS), 3 / (std_g + EPS), (2 / 3) / (std_h + EPS)]
    step_std.append((-4 / 3) / (std_h + EPS))
    close(gigpo.episode_advantages(*args), [step_std[t] for t in per_row])
    # the paper's Eq. 3 ("trajectory"): g returns (10, 0, 10) mean 20/3; h (4, 2) mean 3
    traj = [10 / 3, -20 / 3, 10 / 3, 1.0, -1.0]
    close(
        gigpo.episode_advantages(*args, scale_by_std=False, weighting="trajectory"),
        [traj[t] for t in per_row],
    )
    # ... which is GRPO's trajectory advantage broadcast to the rows (an independent reference)
    got = gigpo.episode_advantages(*args, weighting="trajectory")
    close(got, grpo.advantages(BATCH["returns"], BATCH["group_ids"])[BATCH["traj_index"]].tolist())
    # g std: deviations (10/3, -20/3, 10/3) -> (100 + 400 + 100) / 9 over 2
    assert got[0].item() == pytest.approx((10 / 3) / (math.sqrt(600 / 9 / 2) + EPS), abs=1e-6)


def test_combined_advantage_on_a_two_group_batch():
    got = gigpo.advantages(**BATCH, gamma=0.5, omega=1.0, scale_by_std=False)
    episode = [3, 3, 3, 3, -7, -7, -7, 3, 3, 3, 2 / 3, 2 / 3, -4 / 3]
    close(got, [e + s for e, s in zip(episode, STEP_MEAN_NORM, strict=True)])
    # the same numbers verl-agent's compute_gigpo_outcome_advantage gives (mode="mean_norm")
    close(got, [3.0, 4 / 3, 3.0, 8.833333, -8.25, -11.166667, -7.0, 4.25, 3.0, 3.0, 2 / 3, 2 / 3, -4 / 3])
    # mode="mean_std_norm", from verl-agent's function on this batch
    got_std = gigpo.advantages(**BATCH, gamma=0.5, omega=1.0, scale_by_std=True)
    close(
        got_std,
        [0.621059, 0.300803, 0.621059, 1.741956, -2.449136, -2.249778, -1.449137, 1.621058, 0.621059]
        + [0.621059, 0.577350, 0.577350, -1.154700],
    )
    # omega weighs the step level only; omega = 0 is the episode level alone
    half = gigpo.advantages(**BATCH, gamma=0.5, omega=0.5, scale_by_std=False)
    close(half, [e + 0.5 * s for e, s in zip(episode, STEP_MEAN_NORM, strict=True)])
    close(gigpo.advantages(**BATCH, gamma=0.5, omega=0.0, scale_by_std=False), episode)


def test_result_follows_rows_when_trajectories_and_groups_are_reordered():
    # move tau3 (group h) first and interleave the groups; rows of a trajectory stay together
    order = [3, 0, 4, 1, 2]  # new trajectory t = old order[t]
    rows_of = {0: [0, 1, 2, 3], 1: [4, 5, 6], 2: [7, 8, 9], 3: [10, 11], 4: [12]}
    new_rows = [r for old in order for r in rows_of[old]]
    shuffled = dict(
        returns=BATCH["returns"][order],
        group_ids=[BATCH["group_ids"][old] for old in order],
        traj_index=torch.tensor([new for new, old in enumerate(order) for _ in rows_of[old]]),
        step_rewards=BATCH["step_rewards"][new_rows],
        observations=[BATCH["observations"][r] for r in new_rows],
    )
    for weighting in ("step", "trajectory"):
        base = gigpo.advantages(**BATCH, gamma=0.5, episode_weighting=weighting)
        got = gigpo.advantages(**shuffled, gamma=0.5, episode_weighting=weighting)
        close(got, base[new_rows].tolist())


# ---------------------------------------------------------------- invalid-action penalty


PENALTY_BATCH = dict(
    # tau_a: s/0 x/10 (won); tau_b: s/0 y/0 with an invalid action at its second turn
    returns=torch.tensor([10.0, 0.0]),
    group_ids=["g", "g"],
    traj_index=torch.tensor([0, 0, 1, 1]),
    step_rewards=torch.tensor([0.0, 10.0, 0.0, 0.0]),
    observations=["s", "x", "s", "y"],
)


def test_action_penalty_as_verl_agent_applies_it():
    penalty = torch.tensor([0.0, 0.0, 0.0, 0.1])
    # step returns (gamma 0.5): tau_a 5, 10; tau_b 0, 0 - 0.1 (own row only, not discounted back)
    # step groups: s = {5, 0} -> +-2.5; x and y are singletons -> 0 (the penalty vanishes there)
    # episode ("step"): row scores 10, 10, 0, -0.1 -> mean 19.9 / 4 = 4.975
    got = gigpo.advantages(**PENALTY_BATCH, gamma=0.5, scale_by_std=False, action_penalty=penalty)
    close(got, [5.025 + 2.5, 5.025, -4.975 - 2.5, -5.075])
    # episode ("trajectory"): mean of the returns (10, 0) = 5, each row's score minus 5
    got = gigpo.advantages(
        **PENALTY_BATCH, gamma=0.5, scale_by_std=False, action_penalty=penalty, episode_weighting="trajectory"
    )
    close(got, [5 + 2.5, 5.0, -5 - 2.5, -5.1])
    # invalid first turn of tau_b instead: its step return 0 - 0.1 now meets tau_a's 5 in group s
    # (mean 2.45 -> +-2.55); episode scores 10, 10, -0.1, 0 -> mean 4.975
    first = torch.tensor([0.0, 0.0, 0.1, 0.0])
    got = gigpo.advantages(**PENALTY_BATCH, gamma=0.5, scale_by_std=False, action_penalty=first)
    close(got, [5.025 + 2.55, 5.025, -5.075 - 2.55, -4.975])
    with pytest.raises(ValueError, match="action_penalty"):
        gigpo.advantages(**PENALTY_BATCH, action_penalty=torch.zeros(3))


def test_penalty_as_a_reward_is_the_papers_reading():
    # r = -0.1 at tau_b's invalid turn: it is discounted back and summed into R(tau_b) = -0.1
    batch = dict(
        PENALTY_BATCH, returns=torch.tensor([10.0, -0.1]), step_rewards=torch.tensor([0, 10, 0, -0.1])
    )
    # step returns: tau_a 5, 10; tau_b 0 + 0.5 * (-0.1) = -0.05, -0.1; group s = {5, -0.05}, mean 2.475
    # episode (Eq. 3): mean (10 - 0.1) / 2 = 4.95 -> +-5.05
    got = gigpo.advantages(**batch, gamma=0.5, scale_by_std=False, episode_weighting="trajectory")
    close(got, [5.05 + 2.525, 5.05, -5.05 - 2.525, -5.05])


# ---------------------------------------------------------------- edge cases


def test_groups_of_one_and_empty_batches():
    # one trajectory of one step in its group: nothing to compare with at either level
    got = gigpo.advantages(torch.tensor([10.0]), ["g"], torch.tensor([0]), torch.tensor([10.0]), ["s"])
    assert got.tolist() == [0.0]
    empty = gigpo.advantages(torch.tensor([]), [], torch.tensor([], dtype=torch.long), torch.tensor([]), [])
    assert empty.numel() == 0
    with pytest.raises(ValueError, match="per-row inputs disagree"):
        gigpo.advantages(torch.tensor([1.0]), ["g"], torch.tensor([0, 0]), torch.tensor([0.0, 1.0]), ["s"])
    with pytest.raises(ValueError, match="traj_index"):
        gigpo.episode_advantages(torch.tensor([1.0]), ["g"], torch.tensor([1]))
    with pytest.raises(ValueError, match="weighting"):
        gigpo.episode_advantages(torch.tensor([1.0]), ["g"], torch.tensor([0]), weighting="token")


def test_equal_returns_give_exactly_zero_at_every_level():
    # A group whose episodes all scored 0.7 has nothing to compare. In float32 the mean of nine 0.7s is
    # off by an ulp, and dividing that by std + 1e-6 (std ~ 1e-8) gave every row +0.056 (measured before
    # the statistics moved to float64); -0.1 (every turn invalid) gave +0.0074.
    for value in (0.7, -0.1, 0.9):
        returns = torch.full((9,), value)
        assert grpo.advantages(returns, ["g"] * 9).tolist() == [0.0] * 9
        for weighting in ("step", "trajectory"):
            got = gigpo.episode_advantages(returns, ["g"] * 9, list(range(9)), weighting=weighting)
            assert got.tolist() == [0.0] * 9 and got.dtype == torch.float32
        assert gigpo.step_advantages(returns, [0] * 9).tolist() == [0.0] * 9
