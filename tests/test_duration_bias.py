"""Duration-aware updates: the arrival bias each batching has, and the weights that make its gradient unbiased.

The statistical tests run the real actor-learner driver (submission, harvest, the SQLite store, the
batching, the learner's ``dr_grpo``/``duration``/``inclusion`` plug-ins) with simulated bandit
workers on a fake clock (:mod:`agentrl.distributed.simulated`), and compare the learner's gradient
estimate, averaged over the run's batches, with the exact softmax policy gradient
``pi * (mu - pi . mu)``. Each uses one fixed seed and asserts that the right estimator is within
``Z`` standard errors of the exact gradient on every arm and the wrong one is beyond ``Z`` on the
arm it biases most, the sign included.

Power: ``benchmarks/duration_bias.py --power`` replays both configurations below with 40 other
seeds. Window batching (24 windows): the unweighted estimate's z on the slow arm was -9.9 +- 1.5
(mean +- sd), so under normal z this test catches wrong weights with probability
Phi((9.9 - 4) / 1.5) > 0.9999; the inclusion-weighted |z| stayed below 4 in every seed (a false
failure is P(|z| > 4) ~ 6e-5 per arm). Group batching (8 updates): the duration-weighted z on the
crash arm was +13.0 +- 2.1, power > 0.9999; the unweighted |z| stayed below 4 in every seed.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agentrl.distributed.batching import INCLUSION_KEY, GroupBatching, WindowBatching, check_shaping  # noqa: E402
from agentrl.distributed.simulated import Arm, Bandit, mean_estimate, simulate  # noqa: E402
from agentrl.trajectory import Episode, Step  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Z = 4.0  # the threshold, in standard errors
#: The ML-engineering caricature: a crash, a quick program that does best, a slow one that does worse.
BANDIT = Bandit((Arm("crash", 0.5, -1.0), Arm("quick best", 1.0, 1.0, 0.1), Arm("slow mediocre", 6.0, 0.5, 0.1)))
THETA_WINDOW = np.array([0.0, 0.0, -2.0])  # pi = (0.47, 0.47, 0.06): most groups have no slow pull
THETA_GROUP = np.zeros(3)  # pi uniform
GROUP_SIZE = 8


def z_scores(batches, estimator, theta):
    """(mean over batches of the learner's estimate - exact gradient) / its standard error, per arm."""
    mean, se = mean_estimate(batches, estimator, GROUP_SIZE / (GROUP_SIZE - 1))
    return (mean - BANDIT.exact_gradient(theta)) / se


# ------------------------------------------------------------------ the batchings by hand


def group_episodes(call: str, version: int = 0, n: int = 2) -> list[tuple[int, Episode]]:
    return [
        (0, Episode(env_id="bandit", task_id="t", group_id=f"{call}/t", policy_version=version,
                    steps=[Step("o", "a", reward=1.0)], meta={"call": call}))
        for _ in range(n)
    ]  # fmt: skip


def test_window_batching_takes_what_finished_in_the_window_with_the_chance_its_duration_had():
    batching = WindowBatching(window_s=10.0, max_staleness=0, start=100.0)  # deadlines 110, 120, ...
    for call, submitted, finished in [("a", 103.0, 108.0), ("b", 107.0, 112.0), ("c", 111.0, 113.0), ("d", 115.0, 125.0)]:
        batching.add(group_episodes(call))
        batching.arrived(call, submitted, finished)
    assert batching.take(0, now=109.9) is None  # the window is still open
    first = batching.take(0, now=110.0)
    assert {ep.meta["call"] for ep in first} == {"a"}
    assert all(ep.meta[INCLUSION_KEY] == pytest.approx(1 - 5 / 10) for ep in first)  # p(D) = 1 - D / W
    second = batching.take(1, now=120.0)
    assert {ep.meta["call"] for ep in second} == {"c"}  # b started before this window opened: dropped
    assert second[0].meta[INCLUSION_KEY] == pytest.approx(1 - 2 / 10)
    assert batching.stale_skipped == 2 and batching.too_slow == 0
    assert batching.take(2, now=130.0) == [] and batching.too_slow == 1  # d ran a whole window: never usable

    lenient = WindowBatching(window_s=10.0, max_staleness=1, start=100.0)  # one window of staleness
    lenient.add(group_episodes("b"))
    lenient.arrived("b", 107.0, 112.0)
    assert lenient.take(0, now=110.0) == []
    kept = lenient.take(1, now=120.0)
    assert {ep.meta["call"] for ep in kept} == {"b"} and kept[0].meta[INCLUSION_KEY] == 1.0  # clip(2 - 0.5, 0, 1)
    assert lenient.inclusion_probability(15.0) == pytest.approx(0.5)
    assert lenient.inclusion_probability(25.0) == 0.0


def test_group_batching_takes_whole_fresh_groups_oldest_first():
    batching = GroupBatching(groups_per_update=2, max_staleness=1)
    batching.add(group_episodes("old", version=0) + group_episodes("x", version=2))
    assert batching.take(2, now=0.0) is None  # "old" is 2 versions behind: skipped; one fresh group is not enough
    assert batching.stale_skipped == 2
    batching.add(group_episodes("y", version=3))
    batch = batching.take(3, now=0.0)
    assert [ep.meta["call"] for ep in batch] == ["x", "x", "y", "y"]
    assert all(INCLUSION_KEY not in ep.meta for ep in batch)  # every fresh group is used: nothing to weight


# ------------------------------------------------------------------ weights that do not fit


def test_weights_that_do_not_fit_the_batching_are_one_clear_error(tmp_path):
    from agentrl.config import ConfigError
    from agentrl.distributed.actor_learner import ActorLearner
    from agentrl.distributed.simulated import BanditLearner
    from agentrl.distributed.worker import WorkerSpec
    from agentrl.recipes import mle_async

    with pytest.raises(ValueError, match=r"'duration' .* remove 'duration' from the learner's shaping$"):
        check_shaping("group", ["duration"])
    with pytest.raises(ValueError, match=r"'duration' .* use shaping=\['inclusion'\]"):
        check_shaping("window", ["duration"])
    with pytest.raises(ValueError, match=r"batching='group' uses every fresh group"):
        check_shaping("group", ["empg", "inclusion"])
    with pytest.raises(ValueError, match="batching must be one of group, window"):
        check_shaping("windows", [])
    check_shaping("group", ["empg"])
    check_shaping("window", ["inclusion"])

    spec = WorkerSpec(model="m", env="bandit", store="sqlite://", run_id=1, weights_dir=str(tmp_path / "w"))
    with pytest.raises(ValueError, match="remove 'duration'"):
        ActorLearner(BanditLearner(BANDIT, THETA_GROUP, shaping=["duration"]), None, spec, workers=1, group_size=2,
                     groups_per_update=1, sample_task=lambda rng: ("t", "default"))  # fmt: skip
    with pytest.raises(ValueError, match="needs window_s > 0"):
        ActorLearner(BanditLearner(BANDIT, THETA_GROUP, shaping=["inclusion"]), None, spec, workers=1, group_size=2,
                     groups_per_update=1, sample_task=lambda rng: ("t", "default"), batching="window")  # fmt: skip

    cfg = mle_async.Config(model=str(tmp_path / "never-loaded"))
    assert cfg.batching == "group" and cfg.learner.shaping == []  # the default weights nothing
    cfg.learner.shaping = ["duration"]
    with pytest.raises(ConfigError, match="remove 'duration'"):
        mle_async.main(cfg)  # refused before any model, store or Ray is touched
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ the inclusion shaper through the learner


def tiny_model() -> torch.nn.Module:
    import transformers

    config = transformers.Qwen2Config(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def test_inclusion_weights_by_hand_through_the_learner():
    from agentrl.algorithms import grpo
    from agentrl.testing import token_episode
    from agentrl.training.batch import build_batch
    from agentrl.training.config import LearnerConfig
    from agentrl.training.learner import Learner

    def episode(group, reward, p, turns=1):
        ep = token_episode([{"prompt": [1, 2], "response": [3, 4], "reward": reward / turns}] * turns, group_id=group)
        if p is not None:
            ep.meta[INCLUSION_KEY] = p
        return ep

    episodes = [episode("g1", 1.0, 0.5), episode("g1", 0.0, 0.5, turns=2), episode("g2", 1.0, 1.0),
                episode("g2", 0.5, 1.0), episode("g3", 0.2, 0.25), episode("g3", 0.9, 0.25)]  # fmt: skip
    learner = Learner(tiny_model(), LearnerConfig(shaping=["inclusion"]))
    batch = build_batch(episodes)
    adv = learner.advantages(batch)
    # 1/p per trajectory = (2, 2, 1, 1, 4, 4), mean 14/6: weights (6/7, 6/7, 3/7, 3/7, 12/7, 12/7), one per turn
    traj_adv = grpo.advantages(batch.returns, batch.group_ids)
    weights = torch.tensor([6 / 7, 6 / 7, 3 / 7, 3 / 7, 12 / 7, 12 / 7], dtype=traj_adv.dtype)
    torch.testing.assert_close(adv, (traj_adv * weights)[batch.traj_index])
    assert len(adv) == 7  # the two-turn episode's turns both carry its trajectory's weight

    capped = Learner(tiny_model(), LearnerConfig(shaping=["inclusion"], options={"inclusion": {"max_weight": 2.0}}))
    weights = torch.tensor([1.2, 1.2, 0.6, 0.6, 1.2, 1.2], dtype=traj_adv.dtype)  # (2, 2, 1, 1, 2, 2) / (10 / 6)
    torch.testing.assert_close(capped.advantages(batch), (traj_adv * weights)[batch.traj_index])

    unmarked = [episode("g1", 1.0, None), episode("g1", 0.0, None)]
    with pytest.raises(ValueError, match=r"needs each episode's inclusion probability .* batching='window'"):
        learner.advantages(build_batch(unmarked))
    with pytest.raises(ValueError, match=r"inclusion probabilities must be in \(0, 1\]"):
        learner.advantages(build_batch([episode("g1", 1.0, 0.0), episode("g1", 0.0, 0.5)]))


# ------------------------------------------------------------------ the statistical tests


def test_window_batching_biases_the_unweighted_gradient_and_inclusion_weights_remove_it():
    """Slow groups finish outside their window more often: unweighted, the learner under-credits the slow arm."""
    result = simulate(BANDIT, THETA_WINDOW, batching="window", window_s=8.0, max_staleness=0, updates=48, workers=8,
                      group_size=GROUP_SIZE, shaping=["inclusion"], seed=0)  # fmt: skip
    assert len(result.batches) == 48 and result.stats["too_slow_groups"] == 0
    assert result.stats["stale_skipped"] > 0  # the window did drop groups: there is a bias to correct
    weighted, plain = (z_scores(result.batches, name, THETA_WINDOW) for name in ("inclusion", "unweighted"))
    assert np.all(np.abs(weighted) < Z), weighted
    assert plain[2] < -Z, plain


def test_group_batching_needs_no_weights_and_duration_weights_bias_it():
    """Every fresh group is used, so the plain estimate is unbiased; dt weights favour the slow arm over the best one."""
    result = simulate(BANDIT, THETA_GROUP, batching="group", max_staleness=1000, updates=16, workers=8,
                      group_size=GROUP_SIZE, groups_per_update=4, seed=0)  # fmt: skip
    assert result.stats["stale_skipped"] == 0  # no group was lost: the premise of "no weights needed"
    plain, weighted = (z_scores(result.batches, name, THETA_GROUP) for name in ("unweighted", "duration"))
    assert np.all(np.abs(plain) < Z), plain
    assert weighted[0] > Z and weighted[1] < -Z, weighted  # crashes barely penalised, the best arm under-credited
