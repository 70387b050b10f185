"""The learner trains the distribution that acted (issue 18): constrained decoding, stale data, sampling
settings, schedules, EMPG over trainable turns, Clip-Cov / KL-Cov selection per mini-batch.

References are independent: float64 full-logits forwards of the same model, and hand computations.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentrl.algorithms import empg  # noqa: E402
from agentrl.testing import token_episode  # noqa: E402
from agentrl.training.batch import build_batch, collate  # noqa: E402
from agentrl.training.config import LearnerConfig  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402
from agentrl.training.logprobs import IGNORE, token_logprobs_entropy  # noqa: E402
from agentrl.trajectory import ALLOWED  # noqa: E402

VOCAB = 97
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0, tied: bool = False) -> torch.nn.Module:
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Float64 logits ``[len(ids), V]`` of an independent copy of ``model`` (position t predicts t + 1)."""
    reference = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return reference(input_ids=torch.tensor([ids])).logits[0]


# -------------------------------------------------------------------------- constrained decoding: q


@pytest.mark.parametrize("tied", [False, True])
def test_log_q_and_its_gradient_equal_a_float64_reference(tied):
    model = tiny_model(tied=tied)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 9), generator=g)
    targets = torch.full_like(ids, IGNORE)
    targets[:, 3:8] = ids[:, 4:9]
    # positions 3, 5 of row 0 and 6 of row 1 are constrained; the target is always in its set
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 3] = mask[0, 5] = mask[1, 6] = True
    sets = [sorted({int(ids[0, 4]), 7, 11}), sorted({int(ids[0, 6]), 13}), sorted({int(ids[1, 7]), 2, 3, 5})]
    allowed_ids = torch.full((3, 4), -1, dtype=torch.long)
    for row, s in enumerate(sets):
        allowed_ids[row, : len(s)] = torch.tensor(s)
    temperature = torch.tensor([0.7, 1.3])
    logp, ent = token_logprobs_entropy(model, ids, torch.ones_like(ids), targets, temperature, allowed=(mask, allowed_ids))
    (logp.sum() + 0.5 * ent.sum()).backward()
    got_grads = [p.grad.clone() for p in model.parameters()]
    reference = copy.deepcopy(model).double()
    reference.zero_grad()
    logits = reference(input_ids=ids).logits / temperature.double().view(2, 1, 1)  # [2, 9, V]
    want_logp, want_ent = torch.zeros(2, 9, dtype=torch.float64), torch.zeros(2, 9, dtype=torch.float64)
    k = 0
    for b in range(2):
        for t in range(3, 8):
            row = logits[b, t]
            if mask[b, t]:
                row = row[torch.tensor(sets[k])]
                index = sets[k].index(int(targets[b, t]))
                k += 1
            else:
                index = int(targets[b, t])
            q = torch.log_softmax(row, -1)
            want_logp[b, t] = q[index]
            want_ent[b, t] = -(q.exp() * q).sum()
    (want_logp.sum() + 0.5 * want_ent.sum()).backward()
    torch.testing.assert_close(logp.double(), want_logp.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent.detach(), atol=1e-5, rtol=1e-5)
    for got, want in zip(got_grads, (p.grad for p in reference.parameters()), strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def policy(tiny_chat_model):
    from agentrl.policies.hf import HFPolicy

    return HFPolicy(tiny_chat_model, device="cpu", seed=0)


def constrained_rollouts(policy, temperature: float = 1.0):
    """Real constrained TextWorld rollouts of the tiny model (per-step layout, admissible actions only)."""
    pytest.importorskip("textworld")
    import agentrl
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.policies import SamplingParams
    from agentrl.rollout import Collector, ModelActor

    agent = LLMAgent(policy.tokenizer, prompt_format_for("textworld"), layout="per_step", history=0, admissible_only=True)
    sampling = SamplingParams(max_new_tokens=32, temperature=temperature, stop=(ACTION_STOP,), return_entropies=True)
    with Collector(lambda: agentrl.make("textworld", split="valid", max_turns=2), ModelActor(policy, agent, sampling),
                   env_id="agentrl/TextWorld-v0", max_parallel=4) as collector:  # fmt: skip
        return collector.run(["easy/100000", "easy/100001"], group_size=2, seed=3)


def learner_logprobs(learner: Learner, episodes) -> tuple[list[float], list[float]]:
    """(current, behaviour) log-probs of every trained token, through the learner's own scoring path."""
    batch = build_batch(episodes)
    tensors = collate(batch, range(len(batch.sequences)), learner.pad_token_id, learner.device)
    with torch.no_grad():
        logp, _ = learner._score(learner.model, tensors)
    logp = logp[tensors["step_seq"], tensors["step_pos"]]
    current, behaviour = [], []
    for k, i in enumerate(tensors["steps"]):
        for j, m in enumerate(batch.loss_masks[i]):
            if m:
                current.append(logp[k, j].item())
                behaviour.append(batch.behaviour_logprobs[i][j])
    return current, behaviour


def test_on_policy_ratio_is_one_and_after_an_update_it_is_q_new_over_q_old(policy):
    episodes = constrained_rollouts(policy)
    for ep in episodes:  # a random tiny model never wins: give each group a winner so the update moves q
        ep.steps[-1].reward = float(ep.seed % 2)
    trained = [t for ep in episodes for t in ep.transcripts]
    assert all(t.extras.get(ALLOWED) for t in trained)
    learner = Learner(copy.deepcopy(policy.model), LearnerConfig(lr=5e-3, total_steps=1), pad_token_id=policy.pad_id)
    current, behaviour = learner_logprobs(learner, episodes)
    assert len(current) >= 5  # the free choices (most tokens of an action are forced)
    ratio = torch.exp(torch.tensor(current, dtype=torch.float64) - torch.tensor(behaviour, dtype=torch.float64))
    assert (ratio - 1).abs().max().item() < 1e-5  # the learner recomputes exactly what the sampler drew from
    learner.update(episodes)
    new, _ = learner_logprobs(learner, episodes)
    got = torch.exp(torch.tensor(new, dtype=torch.float64) - torch.tensor(behaviour, dtype=torch.float64))
    # independently: q over each token's recorded allowed set, from float64 full logits, before and after
    expected = []
    for transcript in trained:
        before, after = full_logits(policy.model, transcript.ids), full_logits(learner.model, transcript.ids)
        for i, (s, m) in enumerate(zip(transcript.sampled, transcript.loss_mask, strict=True)):
            if s and m:
                allowed = transcript.extras[ALLOWED][i]
                index = allowed.index(transcript.ids[i])
                q_old = torch.log_softmax(before[i - 1, allowed], -1)[index]
                q_new = torch.log_softmax(after[i - 1, allowed], -1)[index]
                expected.append(torch.exp(q_new - q_old).item())
    assert sorted(got.tolist()) == pytest.approx(sorted(expected), abs=1e-4)
    assert max(abs(r - 1) for r in expected) > 1e-3  # the update moved q: the comparison is not trivially 1 = 1


def test_sampling_temperature_travels_with_the_data_and_truncation_is_refused(policy):
    episodes = constrained_rollouts(policy, temperature=0.6)
    assert all(t.sampling["temperature"] == 0.6 for ep in episodes for t in ep.transcripts)
    learner = Learner(copy.deepcopy(policy.model), LearnerConfig(), pad_token_id=policy.pad_id)
    current, behaviour = learner_logprobs(learner, episodes)  # no learner temperature to set or to get wrong
    assert max(abs(a - b) for a, b in zip(current, behaviour, strict=True)) < 1e-5
    truncated = copy.deepcopy(episodes[0])
    truncated.transcripts[0].sampling = {"temperature": 1.0, "top_p": 0.9, "top_k": 0}
    with pytest.raises(ValueError, match="top_p=0.9.*cannot recompute a truncated distribution"):
        build_batch([truncated])
    truncated.transcripts[0].sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 0}
    with pytest.raises(ValueError, match="sampled greedily"):
        build_batch([truncated])


# -------------------------------------------------------------------------- decoupled PPO


def two_token_batch(behaviour: list[float], versions: int = 0):
    """One group: a rewarded answer [10, 11] (A > 0) and an unrewarded one [20, 21] (A < 0)."""
    prompt = [1, 2, 3, 4]
    return [
        token_episode([dict(prompt=prompt, response=[10, 11], reward=1.0, logprobs=behaviour[:2], version=versions)], group_id="g"),
        token_episode([dict(prompt=prompt, response=[20, 21], reward=0.0, logprobs=behaviour[2:], version=versions)], group_id="g"),
    ]


def model_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    logits = full_logits(model, prompt + response)
    logp = torch.log_softmax(logits, -1)
    return [logp[len(prompt) - 1 + j, token].item() for j, token in enumerate(response)]


def test_on_policy_the_loss_is_plain_ppo_clip_against_the_behaviour_logprobs():
    model = tiny_model()
    prompt = [1, 2, 3, 4]
    behaviour = model_logprobs(model, prompt, [10, 11]) + model_logprobs(model, prompt, [20, 21])
    learner = Learner(model, LearnerConfig(lr=1e-2, total_steps=1))
    (metrics,) = learner.update(two_token_batch(behaviour, versions=0))  # fresh: sampled by version 0 = learner.step
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # GRPO advantages +-a
    ratios = [math.exp(c - b) for c, b in zip(behaviour, behaviour, strict=True)]  # current == behaviour: 1
    assert metrics["stale_steps"] == 0 and metrics["behaviour_weight"] == 1.0
    assert metrics["pg_loss"] == pytest.approx((-a * ratios[0] - a * ratios[1] + a * ratios[2] + a * ratios[3]) / 4, abs=1e-6)


def test_stale_tokens_are_clipped_around_the_proximal_policy_with_a_truncated_behaviour_weight():
    model = tiny_model()
    prompt = [1, 2, 3, 4]
    proximal = model_logprobs(model, prompt, [10, 11]) + model_logprobs(model, prompt, [20, 21])
    # behaviour log-probs of an older policy: token 0 was more likely then (w < 1), token 2 (A < 0) far less
    # likely (w = e^12: unbounded in the old loss, ratio pi/pi_behaviour >> 1 on the pessimistic side)
    behaviour = [proximal[0] + 0.7, proximal[1] - 0.2, proximal[2] - 12.0, proximal[3] + 0.1]
    cap = 5.0
    learner = Learner(model, LearnerConfig(lr=1e-2, total_steps=2, importance_cap=cap))
    learner.step = 3  # the learner is 3 versions ahead of the behaviour policy (version 0)
    (metrics,) = learner.update(two_token_batch(behaviour, versions=0))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    w = [min(math.exp(p - b), cap) for p, b in zip(proximal, behaviour, strict=True)]
    assert w[2] == cap and w[0] < 1 < w[1]
    # first optimizer step: current weights = proximal, ratio 1 inside the clip: loss = mean(-A * w)
    assert metrics["stale_steps"] == 2
    assert metrics["pg_loss"] == pytest.approx((-a * w[0] - a * w[1] + a * w[2] + a * w[3]) / 4, abs=1e-5)
    assert metrics["behaviour_weight"] == pytest.approx(sum(w) / 4, abs=1e-5)
    assert metrics["clip_frac"] == 0.0


def test_the_proximal_policy_is_the_weights_at_the_start_of_the_update_across_mini_batches():
    """Two mini-batches (two optimizer steps): both are clipped around the start-of-update weights."""
    model = tiny_model()
    start = copy.deepcopy(model)
    prompt = [1, 2, 3, 4]
    answers = ([10, 11], [20, 21], [30, 31], [40, 41])
    batch = [
        token_episode([dict(prompt=prompt, response=r, reward=float(k % 2), logprobs=[-3.0, -3.0], version=0)], group_id=str(k // 2))
        for k, r in enumerate(answers)
    ]  # fmt: skip
    learner = Learner(model, LearnerConfig(lr=0.5, total_steps=2, mini_batches=2, seed=1))
    learner.step = 1  # version-0 data is stale
    first, second = learner.update(batch)
    assert second["approx_kl"] > 0.01  # the first step moved the weights the second mini-batch is scored with
    proximal = dict(zip(map(tuple, build_batch(batch).response_ids), learner._proximal, strict=True))
    for r in answers:
        assert proximal[tuple(r)] == pytest.approx(model_logprobs(start, prompt, r), abs=1e-5)
    fresh = two_token_batch([-1.0] * 4, versions=learner.step)
    learner.update(fresh)
    assert learner._proximal == build_batch(fresh).behaviour_logprobs  # fresh: the behaviour log-probs themselves


# -------------------------------------------------------------------------- schedules


def test_the_schedule_follows_the_run_and_training_past_it_warns(caplog):
    cfg = LearnerConfig(lr=1e-3, mini_batches=2, epochs=3)
    assert cfg.for_run(50).total_steps == 300 and LearnerConfig(total_steps=7).for_run(50).total_steps == 7
    from agentrl.recipes.textworld_grpo import Config

    recipe = Config(model="m", iterations=50)
    assert recipe.learner.total_steps is None and recipe.learner.for_run(recipe.iterations).total_steps == 50
    learner = Learner(tiny_model(), LearnerConfig(lr=1e-3, total_steps=1))
    with caplog.at_level(logging.WARNING, logger="agentrl.training"):
        learner.update(two_token_batch([-1.0] * 4))
        assert "past the end" not in caplog.text
        learner.update(two_token_batch([-1.0] * 4))
        learner.update(two_token_batch([-1.0] * 4))
    assert caplog.text.count("past the end of the learning-rate schedule") == 1
    with pytest.raises(ValueError, match="epo needs the run's length"):
        Learner(tiny_model(), LearnerConfig(terms=["epo"]))


# -------------------------------------------------------------------------- EMPG over trainable turns


def test_empg_runs_over_trainable_turns_only():
    # trajectory 0: turns 0 (H 0.2), 1 (every token forced: not trainable), 2 (H 1.0); trajectory 1: turn 0 (H 0.6)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    entropy = torch.tensor([0.2, 0.0, 1.0, 0.6])
    traj = torch.tensor([0, 0, 0, 1])
    trainable = torch.tensor([True, False, True, True])
    got = empg.modulate_advantages(adv, entropy, traj, trainable=trainable)
    # by hand over the trainable steps (0.2, 1.0 | 0.6): H~ = (0, 1 | 0.5)
    h = torch.tensor([0.0, 1.0, 0.5]) / (1 + 1e-8)
    g = torch.exp(-h)
    g = g / g.mean()
    f_next = torch.tensor([math.exp(-h[1].item()), 0.0, 0.0])  # the next *trainable* step of trajectory 0 is turn 2
    modulated = g * torch.tensor([1.0, 1.0, -1.0]) + 0.1 * f_next
    expected = modulated - modulated.mean()
    torch.testing.assert_close(got[[0, 2, 3]], expected, atol=1e-6, rtol=0)
    assert got[1].item() == 1.0  # multiplies no token
    wrong = empg.modulate_advantages(adv, entropy, traj)  # counting the forced turn with entropy 0
    assert abs(wrong[0].item() - expected[0].item()) > 0.1


def test_the_learner_marks_forced_turns_untrainable_for_empg():
    prompt = [1, 2, 3]
    turns = [dict(prompt=prompt, response=[5, 6], logprobs=[-1.0, -1.0], entropies=[0.2, 0.2], reward=0.0),
             dict(prompt=prompt + [5, 6, 7], response=[8], logprobs=[0.0], entropies=[0.0], loss_mask=[0]),
             dict(prompt=prompt + [5, 6, 7, 8, 9], response=[10], logprobs=[-1.0], entropies=[1.0], reward=1.0)]  # fmt: skip
    batch = build_batch([
        token_episode(turns, group_id="g"),
        token_episode([dict(prompt=prompt, response=[5], logprobs=[-1.0], entropies=[0.6])], group_id="g"),
    ])  # fmt: skip
    learner = Learner(tiny_model(), LearnerConfig(shaping=["empg"]))
    steps = learner.steps_view(batch)
    assert steps.trainable.tolist() == [True, False, True, True]
    grpo = torch.tensor([1.0, 1.0, 1.0, -1.0]) * (0.5 / (math.sqrt(0.5) + 1e-6))
    expected = empg.modulate_advantages(grpo, steps.entropy, steps.traj_index, trainable=steps.trainable)
    torch.testing.assert_close(learner.advantages(batch), expected)


# -------------------------------------------------------------------------- Clip-Cov / KL-Cov per mini-batch


def many_turns(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for k in range(6):
        prompt = torch.randint(3, VOCAB, (5,), generator=g).tolist()
        response = torch.randint(3, VOCAB, (4 + k % 3,), generator=g).tolist()
        logprobs = (-1.0 - torch.rand(len(response), generator=g)).tolist()
        episodes.append(token_episode([dict(prompt=prompt, response=response, logprobs=logprobs, reward=float(k % 3))],
                                      group_id=str(k // 3)))  # fmt: skip
    return episodes


@pytest.mark.parametrize(
    "loss", [("clip_cov", {"clip_ratio": 0.2, "cov_low": -1e9, "cov_high": 1e9}), ("kl_cov", {"k_ratio": 0.2})]
)
def test_covariance_token_selection_does_not_depend_on_the_micro_batch_split(loss):
    name, options = loss
    results = []
    for micro_tokens in (10_000, 12):  # one pass vs one sequence per micro-batch
        model = tiny_model()
        learner = Learner(model, LearnerConfig(lr=1e-2, policy_loss=name, options={name: options},
                                               micro_batch_tokens=micro_tokens, seed=5))  # fmt: skip
        (metrics,) = learner.update(many_turns())
        results.append((metrics, torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    (full, params_full), (micro, params_micro) = results
    assert micro["sequences"] == full["sequences"] == 6
    assert micro["pg_loss"] == pytest.approx(full["pg_loss"], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(params_micro, params_full, atol=1e-4, rtol=0)  # Adam: 1% of an lr step
