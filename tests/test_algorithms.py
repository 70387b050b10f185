"""Algorithms against hand-computed values from the papers' equations (arithmetic written out)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms import covariance, duration, empg, entropy, epo, grpo, kl, ppo

# ---------------------------------------------------------------- GRPO / Dr.GRPO


def test_grpo_advantages_by_hand():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 5.0])
    groups = ["a", "a", "a", "b", "b", "c"]
    # group a: mean 1/3, deviations (2/3, -1/3, -1/3), Bessel var (4/9 + 1/9 + 1/9) / 2 = 1/3
    std_a = math.sqrt(1 / 3)
    # group b: mean 1.5, deviations (-0.5, 0.5), Bessel var 0.5 / 1
    std_b = math.sqrt(0.5)
    eps = 1e-6
    expected = [
        (2 / 3) / (std_a + eps),
        (-1 / 3) / (std_a + eps),
        (-1 / 3) / (std_a + eps),
        -0.5 / (std_b + eps),
        0.5 / (std_b + eps),
        0.0,  # group of one
    ]
    got = grpo.advantages(returns, groups)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-6)


def test_dr_grpo_centres_without_std_and_groups_need_not_be_contiguous():
    returns = torch.tensor([3.0, 10.0, 1.0, 20.0])
    groups = torch.tensor([7, 9, 7, 9])
    got = grpo.advantages(returns, groups, scale_by_std=False)
    torch.testing.assert_close(got, torch.tensor([1.0, -5.0, -1.0, 5.0]))


def test_grpo_edge_cases_equal_returns_single_group_of_one_and_empty():
    assert grpo.advantages(torch.tensor([2.0, 2.0, 2.0]), ["g"] * 3).tolist() == [0.0, 0.0, 0.0]
    assert grpo.advantages(torch.tensor([4.0]), ["only"]).tolist() == [0.0]
    assert grpo.advantages(torch.tensor([]), []).numel() == 0
    with pytest.raises(ValueError, match="group ids"):
        grpo.advantages(torch.tensor([1.0, 2.0]), ["a"])


# ---------------------------------------------------------------- PPO-clip


def _ppo_case():
    # old policy log-prob 0 everywhere, so ratio = exp(logp).
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.0]]))
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, adv, mask


def test_clip_loss_token_mean_and_seq_mean_by_hand():
    logp, old, adv, mask = _ppo_case()
    # row 0, A=+1: max(-r, -clip(r, 0.8, 1.2)): r=1.5 -> -1.2 ; r=0.5 -> -0.5 ; r=1.1 -> -1.1
    # row 1, A=-1: max(r, clip(r)):            r=1.5 ->  1.5 ; r=0.5 ->  0.8 ; (masked)
    row0, row1 = [-1.2, -0.5, -1.1], [1.5, 0.8]
    token_mean = (sum(row0) + sum(row1)) / 5
    seq_mean = (sum(row0) / 3 + sum(row1) / 2) / 2
    got_tok = ppo.clip_loss(logp, old, adv, mask)
    got_seq = ppo.clip_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    assert got_tok.item() == pytest.approx(token_mean, abs=1e-6)
    assert got_seq.item() == pytest.approx(seq_mean, abs=1e-6)


def test_clip_loss_asymmetric_clip_per_token_advantages_and_gradient():
    logp, old, _, mask = _ppo_case()
    logp = logp.clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])  # per token, same as per row
    loss = ppo.clip_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # only r=1.5 with A=+1 changes: -clip(1.5, 0.8, 1.28) = -1.28
    assert loss.item() == pytest.approx((-1.28 - 0.5 - 1.1 + 1.5 + 0.8) / 5, abs=1e-6)
    loss.backward()
    # d/dlogp of -A*r is -A*r where unclipped; 0 where the clip is active or masked.
    expected_grad = torch.tensor([[0.0, -0.5, -1.1], [1.5, 0.0, 0.0]]) / 5
    torch.testing.assert_close(logp.grad, expected_grad)
    frac = ppo.clip_fraction(logp.detach(), old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert frac.item() == pytest.approx(2 / 5)  # (A>0, r=1.5>1.28) and (A<0, r=0.5<0.8)


def test_clip_loss_zero_advantage_is_zero_and_masked_garbage_is_ignored():
    logp, old, _, mask = _ppo_case()
    assert ppo.clip_loss(logp, old, torch.zeros(2), mask).item() == 0.0
    old = old.clone()
    old[1, 2] = float("nan")  # masked position
    logp = logp.clone()
    logp[1, 2] = float("inf")
    loss = ppo.clip_loss(logp, old, torch.tensor([1.0, -1.0]), mask)
    assert math.isfinite(loss.item())
    with pytest.raises(ValueError, match="unknown aggregation"):
        ppo.clip_loss(logp, old, torch.zeros(2), mask, agg="sum")


def test_seq_mean_skips_fully_masked_rows():
    token_loss = torch.tensor([[2.0, 4.0], [100.0, 100.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert ppo.aggregate(token_loss, mask, "seq-mean-token-mean").item() == 3.0
    assert ppo.aggregate(token_loss, torch.zeros(2, 2), "token-mean").item() == 0.0


# ---------------------------------------------------------------- entropy


def test_token_entropy_by_hand_and_step_entropy():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    h = entropy.token_entropy(probs.log())
    # 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 ; uniform over 3 = ln 3
    torch.testing.assert_close(h, torch.tensor([1.5 * math.log(2), math.log(3)]))
    assert entropy.token_entropy(probs.log().to(torch.bfloat16)).dtype == torch.float32
    token_h = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert entropy.step_entropy(token_h, mask).tolist() == [1.5, 4.0, 0.0]


# ---------------------------------------------------------------- EMPG


def test_empg_two_trajectories_by_hand():
    # trajectory A: 2 steps, A_traj = +1 ; trajectory B: 3 steps, A_traj = -1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    h = torch.tensor([0.5, 1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    traj = ["A", "A", "B", "B", "B"]
    # H~ = (H - 0) / (2 - 0 + 1e-8)
    hn = [x / (2.0 + 1e-8) for x in (0.5, 1.0, 0.0, 2.0, 1.0)]
    e = [math.exp(-x) for x in hn]  # k = 1
    g = [x / (sum(e) / 5) for x in e]  # mean g = 1
    f_next = [e[1], 0.0, e[3], e[4], 0.0]  # k' = 1; next step of the same trajectory; 0 at the end
    a_mod = [g[i] * adv[i].item() + 0.1 * f_next[i] for i in range(5)]
    expected = [a - sum(a_mod) / 5 for a in a_mod]
    got = empg.modulate_advantages(adv, h, traj)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert got.sum().item() == pytest.approx(0.0, abs=1e-12)
    # approximate values, for a reader: g ~ (1.159, 0.903, 1.488, 0.547, 0.903)
    assert g[2] == pytest.approx(1 / 0.6719484, rel=1e-6)


def test_empg_k_and_zeta_change_the_result_as_the_equations_say():
    adv = torch.tensor([1.0, -1.0])
    h = torch.tensor([0.0, 1.0])
    # one trajectory of 2 steps; H~ = (0, 1/(1+1e-8)); k=2: g ∝ (1, e^-2); k'=0.5: f_next = (e^-0.5, 0)
    e = [1.0, math.exp(-2 / (1 + 1e-8))]
    g = [x / (sum(e) / 2) for x in e]
    a_mod = [g[0] * 1.0 + 0.3 * math.exp(-0.5 / (1 + 1e-8)), g[1] * -1.0]
    expected = torch.tensor([a - sum(a_mod) / 2 for a in a_mod])
    got = empg.modulate_advantages(adv, h, [0, 0], k=2.0, k_future=0.5, zeta=0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_empg_edge_cases():
    # one step: H~ = 0, g = 1, no next step -> A_mod = A, centred -> 0
    assert empg.modulate_advantages(torch.tensor([0.7]), torch.tensor([3.0]), ["x"]).tolist() == [0.0]
    # equal entropies: H~ = 0, g = 1, f = 1 -> A_mod = A + 0.1 * has_next
    adv = torch.tensor([1.0, 1.0, -1.0])
    got = empg.modulate_advantages(adv, torch.full((3,), 0.4), ["a", "a", "b"])
    a_mod = [1.0 + 0.1, 1.0, -1.0]
    torch.testing.assert_close(got, torch.tensor([a - sum(a_mod) / 3 for a in a_mod]))
    # steps of a trajectory must be contiguous
    with pytest.raises(ValueError, match="contiguous"):
        empg.modulate_advantages(torch.zeros(3), torch.zeros(3), ["a", "b", "a"])
    # no gradient flows into the entropy
    h = torch.tensor([0.1, 0.9], requires_grad=True)
    assert not empg.modulate_advantages(torch.tensor([1.0, -1.0]), h, [0, 1]).requires_grad


# ---------------------------------------------------------------- EPO


def _epo_batch():
    token_h = torch.tensor(
        [
            [0.2, 0.4, 7.0],  # traj a, turn 0: mean 0.3 (third token masked)
            [1.0, 3.0, 2.0],  # traj a, turn 1: mean 2.0
            [0.5, 5.0, 5.0],  # traj b, turn 0: mean 0.5 (one token)
            [9.0, 9.0, 9.0],  # traj b, turn 1: fully masked -> not a turn
        ],
        requires_grad=True,
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    return token_h, mask, ["a", "a", "b", "b"]


def test_epo_trajectory_entropy_nested_mean_by_hand():
    token_h, mask, traj = _epo_batch()
    # traj a: (0.3 + 2.0) / 2 = 1.15 ; traj b: 0.5 (its masked turn does not count) ; mean 0.825
    got = epo.trajectory_entropy(token_h, mask, traj)
    assert got.item() == pytest.approx(0.825, abs=1e-6)
    got.backward()
    # dL_H/dH: traj a turn 0 tokens 1/2 * 1/2 * 1/2 ; turn 1 tokens 1/2 * 1/2 * 1/3 ; traj b 1/2 * 1 * 1
    expected = torch.tensor([[1 / 8, 1 / 8, 0], [1 / 12, 1 / 12, 1 / 12], [1 / 2, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(token_h.grad, expected)


def test_epo_smoothing_penalty_by_hand_and_its_gradient():
    token_h, mask, traj = _epo_batch()
    # reference 0.75, kappa_l = 0.5, kappa_r = 2: corridor [0.375, 1.5]; alpha = 0.1
    # traj a turn 0: H 0.2 -> 0.1*(0.375-0.2)=0.0175 ; 0.4 -> 0 ; mean 0.00875
    # traj a turn 1: 1.0 -> 0 ; 3.0 -> 0.1*1.5=0.15 ; 2.0 -> 0.1*0.5=0.05 ; mean 0.2/3
    # traj b turn 0: 0.5 -> 0 ; mean 0
    expected = ((0.00875 + 0.2 / 3) / 2 + 0.0) / 2
    got = epo.smoothing_penalty(token_h, mask, traj, reference=0.75, kappa_l=0.5, kappa_r=2.0, alpha=0.1)
    assert got.item() == pytest.approx(expected, abs=1e-7)
    got.backward()
    grad = token_h.grad
    assert grad[0, 0].item() == pytest.approx(-0.1 / 8)  # below the corridor: pushes entropy up
    assert grad[1, 1].item() == pytest.approx(0.1 / 12)  # above: pushes it down
    assert grad[1, 0].item() == 0.0 and grad[0, 1].item() == 0.0  # inside the corridor
    assert epo.smoothing_penalty(token_h, mask, traj, reference=None).item() == 0.0  # step 0
    detached = epo.smoothing_penalty(token_h, mask, traj, 0.75, 0.5, 2.0, 0.1, detach=True)
    assert detached.item() == pytest.approx(expected, abs=1e-7) and not detached.requires_grad


def test_epo_beta_history_and_total_loss():
    assert epo.beta(0, 10) == 2.0
    assert epo.beta(5, 10) == pytest.approx(1 + math.exp(-3.0))
    assert epo.beta(5, 11) == pytest.approx(1 + math.exp(-3.0))  # floor(11/2) = 5
    assert epo.beta(4, 10, gamma=1.0) == pytest.approx(1 + math.exp(-0.8))
    assert epo.beta(3, 1) == pytest.approx(1 + math.exp(-9.0))  # K < 2: floor taken as 1
    with pytest.raises(ValueError):
        epo.beta(-1, 10)
    history = epo.EntropyHistory()
    assert history.reference is None  # step 0: no penalty
    history.update(1.0)
    assert history.reference == 1.0
    history.update(torch.tensor(2.0))
    assert history.reference == 1.5
    restored = epo.EntropyHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.reference == 1.5
    with pytest.raises(ValueError):
        history.update(float("nan"))
    total = epo.loss(torch.tensor(0.5), torch.tensor(2.0), torch.tensor(0.1), beta_k=1.5, lam=0.01)
    assert total.item() == pytest.approx(0.5 - 0.01 * (2.0 - 1.5 * 0.1))


def test_epo_turn_weights_sum_to_one_over_valid_turns():
    w = epo.turn_weights(torch.tensor([[1], [1], [1], [0]]), [0, 0, 1, 2])
    torch.testing.assert_close(w, torch.tensor([0.25, 0.25, 0.5, 0.0]))


# ---------------------------------------------------------------- KL and durations


def test_k3_by_hand_and_against_exact_kl():
    assert kl.k3(torch.tensor([0.3]), torch.tensor([0.3])).item() == 0.0
    # log r = ln 2: 2 - ln 2 - 1
    assert kl.k3(torch.tensor([0.0]), torch.tensor([math.log(2)])).item() == pytest.approx(1 - math.log(2))
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = kl.k3(p.log()[samples], q.log()[samples]).mean().item()
    assert estimate == pytest.approx(exact, abs=0.01)


def test_duration_weights_by_hand_and_guards():
    torch.testing.assert_close(duration.weights(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    # measured mean (2 + 4) / 2 = 3 fills the missing and zero entries: (2, 3, 3, 4) / 3
    torch.testing.assert_close(
        duration.weights([2.0, None, 0.0, 4.0]), torch.tensor([2 / 3, 1.0, 1.0, 4 / 3])
    )
    torch.testing.assert_close(duration.weights([0.0, float("nan")]), torch.ones(2))
    assert duration.weights([]).numel() == 0
    with pytest.raises(ValueError, match=">= 0"):
        duration.weights([1.0, -2.0])


# ---------------------------------------------------------------- Clip-Cov / KL-Cov


def _cov_case():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    old = logp - 0.1  # ratio e^0.1 ~ 1.105, inside the PPO clip
    adv = torch.tensor([[2.0, 1.0], [-1.0, -1.0]])
    mask = torch.ones(2, 2)
    return logp, old, adv, mask


def test_token_covariance_by_hand():
    logp, _, adv, mask = _cov_case()
    # mean log pi = -2.5 -> (1.5, 0.5, -0.5, -1.5); mean A = 0.25 -> (1.75, 0.75, -1.25, -1.25)
    expected = torch.tensor([[1.5 * 1.75, 0.5 * 0.75], [-0.5 * -1.25, -1.5 * -1.25]])
    torch.testing.assert_close(covariance.token_covariance(logp, adv, mask), expected)
    masked = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # means over 3 tokens: log pi -2, A 2/3
    got = covariance.token_covariance(logp, adv, masked)
    torch.testing.assert_close(got, torch.tensor([[1 * (4 / 3), 0.0], [-1 * (-5 / 3), 0.0]]))


def test_kl_cov_penalises_only_the_top_covariance_token():
    logp, old, adv, mask = _cov_case()
    logp = logp.clone().requires_grad_(True)
    r = math.exp(0.1)
    # covariances (2.625, 0.375, 0.625, 1.875): k_ratio 0.25 of 4 tokens -> token (0, 0) only
    loss = covariance.kl_cov_loss(logp, old, adv, mask, k_ratio=0.25, kl_coef=1.0)
    assert loss.item() == pytest.approx((-r * (2 + 1 - 1 - 1) + 0.1) / 4, abs=1e-6)
    loss.backward()
    expected_grad = torch.tensor([[-2 * r + 1.0, -r], [r, r]]) / 4  # d|x|/dx = +1 on the penalised token
    torch.testing.assert_close(logp.grad, expected_grad)


def test_clip_cov_drops_the_gradient_of_mid_covariance_tokens():
    logp, old, adv, mask = _cov_case()
    logp = logp.clone().requires_grad_(True)
    r = math.exp(0.1)
    # cov in (0.5, 2.0): tokens (1, 0) = 0.625 and (1, 1) = 1.875; clip_ratio 0.5 of 4 -> both dropped
    loss = covariance.clip_cov_loss(logp, old, adv, mask, clip_ratio=0.5, cov_low=0.5, cov_high=2.0)
    assert loss.item() == pytest.approx((-2 * r - r) / 4, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 * r, -r], [0.0, 0.0]]) / 4)
    # the default ratio drops max(1, int(2e-4 * 4)) = 1 of the two candidates, chosen at random
    # (both candidates have A = -1 and token loss +r, so either choice gives (-2r - r + r) / 4)
    one = covariance.clip_cov_loss(logp.detach(), old, adv, mask, cov_low=0.5, cov_high=2.0)
    assert one.item() == pytest.approx(-2 * r / 4, abs=1e-6)
    # no candidate in range: plain PPO-clip
    plain = covariance.clip_cov_loss(logp.detach(), old, adv, mask, cov_low=10.0, cov_high=20.0)
    assert plain.item() == pytest.approx(ppo.clip_loss(logp.detach(), old, adv, mask).item())
