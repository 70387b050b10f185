"""GiGPO as the learner's ``gigpo`` advantage plug-in, and the ``entropy`` loss term, on synthetic episodes.

The batch goes through the real path (``build_batch`` -> ``Learner.steps_view`` -> plug-in); the
expected values are written out by hand from the paper's equations (arXiv 2505.10978, Eqs. 3, 5-8)
or come from the pure functions of :mod:`agentrl.algorithms.gigpo`, which ``tests/test_gigpo.py``
checks by hand and against verl-agent's own output.
"""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms import empg, epo, gigpo, registry
from agentrl.testing import token_episode
from agentrl.training.batch import build_batch, collate
from agentrl.training.config import LearnerConfig
from agentrl.training.learner import Learner
from agentrl.training.logprobs import token_logprobs_entropy

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def turn(observation: str, reward: float, response=(5, 6), entropy: float = 1.0) -> dict:
    return dict(prompt=[1, 2, 3], response=list(response), reward=reward, observation=observation,
                entropies=[entropy] * len(response))  # fmt: skip


def batch_episodes():
    """Group g: three trajectories that share the anchor state "start"; group h: one trajectory.

    tau1: start/0, hall/2 (no sampled tokens: not a step), room/4   return 6
    tau2: start/0, room/1                                            return 1
    tau3: start/0, attic/0, cellar/0                                 return 0
    tau4 (group h): start/3                                          return 3
    Entropies differ per step so that EMPG has something to modulate.
    """
    episodes = [
        [turn("start", 0, entropy=0.5), turn("hall", 2, response=()), turn("room", 4, entropy=2.0)],
        [turn("start", 0, entropy=1.0), turn("room", 1, entropy=0.2)],
        [turn("start", 0, entropy=3.0), turn("attic", 0, entropy=1.5), turn("cellar", 0, entropy=0.9)],
        [turn("start", 3, entropy=0.7)],
    ]
    groups = ["g", "g", "g", "h"]
    return [
        token_episode(t, layout="per_step", task_id=g, group_id=g)
        for t, g in zip(episodes, groups, strict=True)
    ]


# Rows of the batch (steps): tau1 start, room; tau2 start, room; tau3 start, attic, cellar; tau4 start.
# gamma = 0.5, discounted over every turn: tau1 R_0 = 0 + 0.5 * 2 + 0.25 * 4 = 2 (the hall's 2 counts), R_2 = 4.
STEP_RETURNS = [2.0, 4.0, 0.5, 1.0, 0.0, 0.0, 0.0, 3.0]
OBSERVATIONS = ["start", "room", "start", "room", "start", "attic", "cellar", "start"]
# Mean-only (F = 1), episode statistics over rows ("step"): group g row scores 6, 6, 1, 1, 0, 0, 0 -> mean 2,
# so A^E = 4, -1, -2; tau4 alone in h -> 0.
# Step groups: g/start {2, 0.5, 0} mean 5/6 -> 7/6, -1/3, -5/6; g/room {4, 1} mean 2.5 -> +-1.5;
# g/attic, g/cellar and h/start are singletons -> 0 (h's "start" is not g's: step groups stay inside a group).
HAND_MEAN_ONLY = [4 + 7 / 6, 4 + 1.5, -1 - 1 / 3, -1 - 1.5, -2 - 5 / 6, -2.0, -2.0, 0.0]
OPTIONS = {"gamma": 0.5, "scale_by_std": False, "invalid_penalty": 0.0}


def learner_for(gigpo_options=None, other_options=None, **config) -> Learner:
    """A learner with the ``gigpo`` advantage (``OPTIONS`` unless given) and other plug-ins' options."""
    options = {"gigpo": gigpo_options or OPTIONS, **(other_options or {})}
    return Learner(tiny_model(), LearnerConfig(advantage="gigpo", options=options, **config))


def close(got: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(
        got.to(torch.float64), torch.as_tensor(expected, dtype=torch.float64), rtol=0, atol=atol
    )


def test_learner_gives_the_hand_computed_gigpo_advantages():
    episodes = batch_episodes()
    batch = build_batch(episodes)
    assert batch.turn == [0, 2, 0, 1, 0, 1, 2, 0]  # the hall (turn 1 of tau1) is no step
    assert batch.episode_rewards[0] == [0.0, 2.0, 4.0]
    close(
        gigpo.returns_over_turns(batch.episode_rewards, batch.traj_index, batch.turn, gamma=0.5), STEP_RETURNS
    )
    # the rows' own rewards alone would lose the hall's reward: tau1 R_0 = 0.25 * 4 = 1, not 2
    rows_only = gigpo.discounted_returns(torch.tensor(batch.rewards), batch.traj_index, 0.5, turn=batch.turn)
    assert rows_only[0].item() == pytest.approx(1.0)

    close(learner_for().advantages(batch), HAND_MEAN_ONLY)
    # with std (verl-agent's ALFWorld mode) and gamma 0.95: the pure functions on the same rows
    options = {"gamma": 0.95, "invalid_penalty": 0.0}
    step_returns = [0.95 * 2 + 0.95**2 * 4, 4.0, 0.95 * 1, 1.0, 0.0, 0.0, 0.0, 3.0]
    expected = gigpo.advantages_from_step_returns(
        torch.tensor([6.0, 1.0, 0.0, 3.0]), ["g", "g", "g", "h"], [0, 0, 1, 1, 2, 2, 2, 3], torch.tensor(step_returns),
        OBSERVATIONS,
    )  # fmt: skip
    close(learner_for(options).advantages(batch), expected)
    # the paper's Eq. 3 weighting: group g's returns (6, 1, 0) have mean 7/3 (rows gave 2)
    trajectory = learner_for({**OPTIONS, "episode_weighting": "trajectory"}).advantages(batch)
    close(
        trajectory,
        [11 / 3 + 7 / 6, 11 / 3 + 1.5, -4 / 3 - 1 / 3, -4 / 3 - 1.5, -7 / 3 - 5 / 6, -7 / 3, -7 / 3, 0.0],
    )


def test_invalid_action_penalty_comes_from_the_step_info():
    episodes = batch_episodes()
    episodes[1].steps[1].info["parse_error"] = True  # tau2's "room" turn had no action tag: a format error
    episodes[2].steps[0].info["invalid_action"] = True  # tau3 sent an inadmissible command: valid format
    batch = build_batch(episodes)
    # penalty 0.1 on tau2's room row only (verl-agent penalises format errors): row scores 6, 6, 1, 0.9, 0, 0, 0,
    # mean 13.9/7; its step return 1 - 0.1 = 0.9 meets tau1's 4 (mean 2.45 -> +-1.55)
    mean = 13.9 / 7
    hand = [
        6 - mean + 7 / 6,
        6 - mean + 1.55,
        1 - mean - 1 / 3,
        0.9 - mean - 1.55,
        -mean - 5 / 6,
        -mean,
        -mean,
        0.0,
    ]
    close(learner_for({**OPTIONS, "invalid_penalty": 0.1}).advantages(batch), hand)
    # invalid_key="invalid_action" penalises tau3's first turn instead
    penalty = torch.tensor([0, 0, 0, 0, 0.1, 0, 0, 0])
    expected = gigpo.advantages_from_step_returns(
        batch.returns, batch.group_ids, batch.traj_index, torch.tensor(STEP_RETURNS), batch.observations,
        scale_by_std=False, action_penalty=penalty,
    )  # fmt: skip
    got = learner_for({**OPTIONS, "invalid_penalty": 0.1, "invalid_key": "invalid_action"}).advantages(batch)
    close(got, expected)
    # the recipes' reward scale multiplies the env rewards, not the penalty: no penalty -> exactly 10x
    close(
        learner_for({**OPTIONS, "reward_scale": 10.0}).advantages(batch),
        [10 * a for a in HAND_MEAN_ONLY],
        atol=1e-4,
    )


def test_gigpo_update_trains_on_its_advantages():
    """On-policy (ratio 1) PPO-clip's loss is minus the token-mean advantage: 2 tokens per step here."""
    learner = learner_for()
    (metrics,) = learner.update(batch_episodes())
    assert metrics["pg_loss"] == pytest.approx(-sum(HAND_MEAN_ONLY) / len(HAND_MEAN_ONLY), abs=1e-5)
    assert metrics["rows"] == 8 and metrics["adv_max"] == pytest.approx(5.5, abs=1e-5)


def test_empg_modulates_the_combined_gigpo_advantage():
    batch = build_batch(batch_episodes())
    learner = learner_for(shaping=["empg"], other_options={"empg": {"zeta": 0.2}})
    entropy = torch.tensor(
        [0.5, 2.0, 1.0, 0.2, 3.0, 1.5, 0.9, 0.7]
    )  # the rows' token-mean behaviour entropies
    expected = empg.modulate_advantages(torch.tensor(HAND_MEAN_ONLY), entropy, batch.traj_index, zeta=0.2)
    close(learner.advantages(batch), expected)


def test_epo_term_adds_to_the_gigpo_policy_loss():
    episodes = batch_episodes()
    learner = learner_for(terms=["epo"], lr=1e-3, total_steps=10)
    batch = build_batch(episodes)
    tensors = collate(batch, list(range(len(batch.sequences))), 0, torch.device("cpu"))
    with torch.no_grad():  # the current policy's entropies, before the update changes it
        _, ent = token_logprobs_entropy(
            learner.model, tensors["input_ids"], tensors["attention_mask"], tensors["targets"]
        )
    seq, pos = tensors["step_seq"], tensors["step_pos"]
    l_h = epo.trajectory_entropy(ent[seq, pos], tensors["mask"], batch.traj_index[tensors["steps"]])
    (metrics,) = learner.update(episodes)
    assert metrics["epo_entropy"] == pytest.approx(l_h.item(), rel=1e-4)
    assert metrics["pg_loss"] == pytest.approx(-sum(HAND_MEAN_ONLY) / len(HAND_MEAN_ONLY), abs=1e-5)
    # L = L_PPO(A_GiGPO) - lambda (L_H - beta_0 L_smooth), and step 0 has no entropy history: L_smooth = 0
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"] - 1e-3 * l_h.item(), abs=1e-6)


def test_gigpo_options_are_checked_when_the_learner_is_built():
    assert "gigpo" in registry.names("advantage") and "entropy" in registry.names("term")
    with pytest.raises(registry.AlgorithmConfigError, match=r"gamma must be in \[0, 1\]"):
        learner_for({"gamma": 1.5})
    with pytest.raises(registry.AlgorithmConfigError, match="learner.options.gigpo.episode_weighting"):
        learner_for({"episode_weighting": "token"})
    with pytest.raises(registry.AlgorithmConfigError, match="did you mean 'learner.options.gigpo.omega'"):
        learner_for({"omgea": 1.0})


# ---------------------------------------------------------------- the entropy bonus term


def test_entropy_term_is_minus_coef_times_the_token_mean_entropy_and_raises_it():
    # one group whose two trajectories earn the same: GRPO advantages are 0, only the bonus trains
    episodes = [token_episode([dict(prompt=[1, 2, 3], response=r, reward=1.0)], task_id="g", group_id="g")
                for r in ([5, 6, 7], [8, 9])]  # fmt: skip
    model = tiny_model()
    batch = build_batch(episodes)
    tensors = collate(batch, list(range(len(batch.sequences))), 0, torch.device("cpu"))

    def token_mean_entropy() -> float:
        with torch.no_grad():
            _, ent = token_logprobs_entropy(
                model, tensors["input_ids"], tensors["attention_mask"], tensors["targets"]
            )
        mask = tensors["mask"]
        return ((ent[tensors["step_seq"], tensors["step_pos"]] * mask).sum() / mask.sum()).item()

    before = token_mean_entropy()
    learner = Learner(model, LearnerConfig(lr=1e-4, terms=["entropy"], options={"entropy": {"coef": 0.5}}))
    (metrics,) = learner.update(episodes)
    assert metrics["entropy_bonus"] == pytest.approx(before, rel=1e-5)
    assert metrics["pg_loss"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["loss"] == pytest.approx(-0.5 * before, rel=1e-5)
    after = token_mean_entropy()  # measured: 4.15322 -> 4.15348 (max log 64 = 4.15888)
    assert after > before  # the bonus's gradient raises the entropy
