"""The learner on a tiny Qwen2 (random weights, built from a config) and synthetic episodes."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from agentrl.algorithms import duration, empg, grpo
from agentrl.testing import token_episode
from agentrl.training.batch import NoUsableEpisodesError, build_batch, collate, micro_batches
from agentrl.training.config import LearnerConfig, LoRAConfig
from agentrl.training.learner import Learner
from agentrl.training.logprobs import IGNORE, token_logprobs_entropy
from agentrl.training.metrics import MetricsLogger, read_metrics
from agentrl.training.optim import warmup_cosine
from agentrl.trajectory import Episode, Step

transformers = pytest.importorskip("transformers")

VOCAB = 300


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run ~20x faster on one thread on a shared 2-core machine (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def turn(prompt, response, reward=0.0, loss_mask=None, logprobs=None, entropies=None, env_seconds=0.0) -> dict:
    return dict(prompt=prompt, response=response, reward=reward, loss_mask=loss_mask, logprobs=logprobs,
                entropies=entropies, env_seconds=env_seconds)  # fmt: skip


def episode(group, turns, won=False, layout="concat", **kw) -> Episode:
    return token_episode(turns, layout=layout, task_id=str(group), group_id=str(group), won=won, **kw)


def bandit_batch() -> list[Episode]:
    """One prompt, two answers: the 1-token answer [10] pays 1, the 3-token answer [20, 21, 22] pays 0."""
    prompt = [1, 2, 3, 4]
    return [
        episode("g", [turn(prompt, [10], reward=1.0)], won=True),
        episode("g", [turn(prompt, [20, 21, 22], reward=0.0)]),
    ]


def multi_turn_batch(seed: int = 0, layout: str = "concat", logprobs: bool = False) -> list[Episode]:
    """Two groups of two 2-3 turn episodes with random ids, some masked tokens, entropies and durations."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, VOCAB, (n,), generator=g).tolist()

    episodes = []
    for k in range(4):
        turns = []
        prompt = ids(6)
        for t in range(2 + k % 2):
            response = ids(3 + (k + t) % 3)
            mask = [1] * len(response)
            mask[-1] = t % 2  # a non-sampled token inside some responses
            turns.append(
                turn(
                    prompt,
                    response,
                    reward=float(k in (0, 3)) * (t + 1),
                    loss_mask=mask,
                    logprobs=[-1.0 - 0.01 * j for j in range(len(response))] if logprobs else None,
                    entropies=[0.5 + 0.1 * (k + t + j) for j in range(len(response))],
                    env_seconds=0.5 + k + t,
                )
            )
            prompt = prompt + response + ids(4)  # the next prompt extends this turn's ids
        episodes.append(episode(f"group{k // 2}", turns, won=k in (0, 3), layout=layout))
    return episodes


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def response_logprob(model, prompt, response) -> float:
    ids = torch.tensor([prompt + response], device=next(model.parameters()).device)
    targets = torch.full_like(ids, IGNORE)
    targets[0, len(prompt) - 1 : len(prompt) - 1 + len(response)] = torch.tensor(response)
    with torch.no_grad():
        logp, _ = token_logprobs_entropy(model, ids, torch.ones_like(ids), targets)
    return logp.sum().item()


# ---------------------------------------------------------------- pieces


def test_token_logprobs_entropy_matches_full_forward():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0  # right padding
    targets = torch.full_like(ids, IGNORE)
    targets[:, :4] = ids[:, 1:5]
    logp, ent = token_logprobs_entropy(model, ids, attention, targets, temperature=0.7)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits.double() / 0.7  # [2, 7, V]
    ref_all = logits.log_softmax(-1)
    ref_logp = ref_all[:, :4].gather(-1, ids[:, 1:5, None]).squeeze(-1)
    ref_ent = -(ref_all.exp() * ref_all).sum(-1)[:, :4]
    torch.testing.assert_close(logp[:, :4].double(), ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[:, :4].double(), ref_ent, atol=1e-5, rtol=1e-5)
    assert logp[:, 4:].abs().sum().item() == 0.0 and ent[:, 4:].abs().sum().item() == 0.0


def test_batch_aligns_responses_with_scoring_positions():
    ep = episode("g", [turn([7, 8], [30, 31], loss_mask=[1, 0], logprobs=[-1.0, -2.0]), turn([7, 8, 30, 31, 9], [])])
    batch = build_batch([ep])
    assert batch.n_steps == 1  # the empty response is not a step
    tensors = collate(batch, [0], pad_id=0, device=torch.device("cpu"))
    # sequence 7 8 30 31 9: position 1 scores 30, position 2 scores 31
    assert tensors["input_ids"].tolist() == [[7, 8, 30, 31, 9]]
    assert tensors["targets"].tolist() == [[IGNORE, 30, 31, IGNORE, IGNORE]]
    assert tensors["step_pos"].tolist() == [[1, 2]]
    assert tensors["mask"].tolist() == [[1.0, 0.0]] and tensors["old_logp"].tolist() == [[-1.0, -2.0]]
    assert micro_batches([10, 4, 6, 3], [0, 1, 2, 3], max_tokens=12) == [[0], [2, 1], [3]]


def test_batch_packs_each_transcript_as_one_sequence():
    turns = [
        turn([1, 2], [3]),  # sequence 1 2 3
        turn([1, 2, 3, 4], [5, 6]),  # extends it: 1 2 3 4 5 6
        turn([9, 5, 6, 7], [8]),  # a windowed prompt: a new transcript
    ]
    batch = build_batch([episode("g", turns), episode("h", [turn([1, 2, 3, 4, 5, 6, 0], [1])])])
    assert batch.sequences == [[1, 2, 3, 4, 5, 6], [9, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 0, 1]]
    assert batch.seq_traj == [0, 0, 1] and batch.step_seq == [0, 0, 1, 2] and batch.step_start == [2, 4, 4, 7]
    tensors = collate(batch, [0], pad_id=0, device=torch.device("cpu"))
    # position 1 scores 3; positions 3, 4 score 5, 6
    assert tensors["targets"].tolist() == [[IGNORE, 3, IGNORE, 5, 6, IGNORE]]
    assert tensors["step_pos"].tolist() == [[1, 0], [3, 4]] and tensors["mask"].tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"agg": "seq-mean-token-mean", "terms": ["kl", "epo"], "options": {"kl": {"coef": 0.2}, "epo": {"lam": 0.5}},
          "total_steps": 10}],
)
def test_concat_transcripts_give_the_per_step_update_on_fewer_tokens(overrides):
    results = {}
    for layout in ("per_step", "concat"):
        model = tiny_model()
        learner = Learner(model, LearnerConfig(lr=1e-3, **overrides))
        for _ in range(2):
            (metrics,) = learner.update(multi_turn_batch(layout=layout))
        results[layout] = (metrics, flat_params(model))
    (per_step, params_step), (concat, params_concat) = results["per_step"], results["concat"]
    # per-step rows: 9+17 | 10+19+26 | 11+18 | 9+17+26 = 162 ids; concat: the last rows 17+26+18+26 = 87
    assert per_step["total_tokens"] == 162 and concat["total_tokens"] == 87
    assert per_step["sequences"] == 10 and concat["sequences"] == 4
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        assert concat[key] == pytest.approx(per_step[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(params_concat, params_step, atol=1e-5, rtol=0)


def test_batches_reject_bad_episodes_with_clear_errors():
    with pytest.raises(NoUsableEpisodesError, match="no usable episodes"):
        build_batch([episode("g", [turn([1], [2])], error="sandbox died")])
    with pytest.raises(NoUsableEpisodesError, match="no usable episodes"):
        build_batch([Episode(env_id="e", task_id="t", steps=[Step(observation="o", action="look")])])  # no tokens
    broken = episode("g", [turn([1], [2], logprobs=[-1.0])])
    broken.transcripts[0].logprobs.append(-1.0)
    with pytest.raises(ValueError, match="3 logprobs for 2 ids"):
        build_batch([broken])
    with pytest.raises(ValueError, match="non-finite behaviour logprob"):
        build_batch([episode("g", [turn([1], [2], logprobs=[float("nan")])])])


def test_warmup_cosine_by_hand():
    f = warmup_cosine(warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    # warm-up 1/2, 2/2; then cos over 4 steps: 0.1 + 0.9 * 0.5 * (1 + cos(pi * p)), p = 0, 1/4, 1/2, 3/4, 1
    expected = (
        [0.5, 1.0] + [0.1 + 0.45 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)] + [0.1]
    )
    assert [f(s) for s in range(8)] == pytest.approx(expected)


# ---------------------------------------------------------------- the update


def test_on_policy_loss_by_hand_and_bandit_update_moves_towards_the_winner():
    model = tiny_model()
    prompt = [1, 2, 3, 4]
    before_win, before_lose = (
        response_logprob(model, prompt, [10]),
        response_logprob(model, prompt, [20, 21, 22]),
    )
    learner = Learner(model, LearnerConfig(lr=1e-2, max_grad_norm=0.0))
    model.eval()  # as a policy sharing the model would leave it
    (metrics,) = learner.update(bandit_batch())  # no stored logprobs: old = current, ratio 1
    assert not model.training  # the caller's mode is restored
    # GRPO: returns (1, 0): mean 0.5, Bessel std sqrt(0.5): A = (+0.5, -0.5) / (sqrt(0.5) + 1e-6)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    # token-mean over 4 tokens of -A * ratio: (-a * 1 + a * 3) / 4
    assert metrics["pg_loss"] == pytest.approx(2 * a / 4, abs=1e-5)
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"])
    assert metrics["success_rate"] == 0.5 and metrics["policy_version"] == 1 == learner.step
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert response_logprob(model, prompt, [10]) > before_win + 0.05
    assert response_logprob(model, prompt, [20, 21, 22]) < before_lose - 0.05


def test_covariance_losses_in_the_learner():
    # on-policy KL-Cov: ratio 1 and |log pi - log pi_old| = 0, so the loss is the plain on-policy value
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    (metrics,) = Learner(tiny_model(), LearnerConfig(lr=1e-2, policy_loss="kl_cov")).update(bandit_batch())
    assert metrics["pg_loss"] == pytest.approx(2 * a / 4, abs=1e-5)
    model = tiny_model()
    prompt = [1, 2, 3, 4]
    before = response_logprob(model, prompt, [10])
    learner = Learner(model, LearnerConfig(lr=1e-2, policy_loss="clip_cov", options={"clip_cov": {"cov_low": 0.0}}))
    (metrics,) = learner.update(bandit_batch())
    # 4 tokens, one dropped at most: the loss is the on-policy value or that value minus one token's term
    assert metrics["pg_loss"] == pytest.approx(2 * a / 4, abs=1e-5) or metrics["pg_loss"] in (
        pytest.approx(3 * a / 4, abs=1e-5),
        pytest.approx(a / 4, abs=1e-5),
    )
    assert response_logprob(model, prompt, [10]) > before
    with pytest.raises(ValueError, match="unknown policy_loss 'nope'"):
        Learner(tiny_model(), LearnerConfig(policy_loss="nope"))
    with pytest.raises(ValueError, match="invalid micro_batch_tokens=0"):
        Learner(tiny_model(), LearnerConfig(micro_batch_tokens=0))


def test_zero_advantages_give_zero_loss_and_leave_weights_unchanged():
    model = tiny_model()
    batch = bandit_batch()
    batch[1].steps[0].reward = 1.0  # equal returns in the group: every advantage is 0
    before = flat_params(model)
    (metrics,) = Learner(model, LearnerConfig(lr=1e-2)).update(batch)
    assert metrics["pg_loss"] == 0.0 and metrics["grad_norm"] == 0.0
    assert torch.equal(flat_params(model), before)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"agg": "seq-mean-token-mean"},
        {"terms": ["epo"], "options": {"epo": {"lam": 0.5}}, "total_steps": 10},
        {"terms": ["kl"], "options": {"kl": {"coef": 0.3}}, "shaping": ["empg", "duration"], "advantage": "dr_grpo"},
    ],
    ids=["token-mean", "seq-mean", "epo", "kl-empg-duration"],
)
def test_micro_batching_gives_the_full_batch_update(overrides):
    results = []
    for micro_tokens in (10_000, 40):  # one pass vs 1-4 rows per micro-batch
        model = tiny_model()
        learner = Learner(model, LearnerConfig(lr=1e-3, micro_batch_tokens=micro_tokens, **overrides))
        for _ in range(2):  # the second step has an EPO reference and a policy != KL reference
            (metrics,) = learner.update(multi_turn_batch())
        results.append((metrics, flat_params(model)))
    (full, params_full), (micro, params_micro) = results
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        assert micro[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(params_micro, params_full, atol=1e-5, rtol=0)  # Adam: ~1% of an lr step


def test_learner_advantages_wire_grpo_empg_and_durations():
    learner = Learner(tiny_model(), LearnerConfig(shaping=["empg", "duration"], options={"empg": {"zeta": 0.2}}))
    episodes = multi_turn_batch()
    batch = build_batch(episodes)
    returns = torch.tensor([e.episode_return for e in episodes])
    step_adv = grpo.advantages(returns, [e.group_id for e in episodes])[batch.traj_index]
    views = [v for e in episodes for v in e.turn_tokens().values()]
    step_entropy = torch.tensor(
        [sum(h for h, m in zip(v.entropies, v.loss_mask, strict=True) if m) / sum(v.loss_mask) for v in views]
    )
    expected = empg.modulate_advantages(step_adv, step_entropy, batch.traj_index, zeta=0.2)
    expected = expected * duration.weights([s.env_seconds for e in episodes for s in e.steps])
    torch.testing.assert_close(learner.advantages(batch), expected)


def test_epo_terms_history_and_kl_reference():
    model = tiny_model()
    cfg = LearnerConfig(lr=1e-3, total_steps=4, terms=["kl", "epo"], options={"kl": {"coef": 0.1}, "epo": {"lam": 0.01, "alpha": 0.1}})
    learner = Learner(model, cfg)
    (first,) = learner.update(multi_turn_batch())
    # step 0: policy == reference (k3 = 0), no entropy history (no penalty), beta_0 = 2
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)
    assert first["epo_reference"] is None and first["epo_smooth"] == 0.0 and first["epo_beta"] == 2.0
    assert first["loss"] == pytest.approx(first["pg_loss"] - 0.01 * first["epo_entropy"], abs=1e-6)
    assert learner.terms[1].history.history == [pytest.approx(first["entropy"])]
    (second,) = learner.update(multi_turn_batch(seed=1))
    assert second["epo_reference"] == pytest.approx(first["entropy"])
    assert second["epo_beta"] == pytest.approx(1 + math.exp(-3 * 1 / 2))
    assert second["kl"] > 0
    expected = (
        second["pg_loss"]
        + 0.1 * second["kl"]
        - 0.01 * (second["epo_entropy"] - second["epo_beta"] * second["epo_smooth"])
    )
    assert second["loss"] == pytest.approx(expected, abs=1e-6)


def test_non_finite_loss_skips_the_step_with_a_warning(caplog):
    model = tiny_model()
    batch = bandit_batch()
    batch[0].steps[0].reward = float("inf")  # a reward bug: GRPO advantages become NaN
    before = flat_params(model)
    learner = Learner(model, LearnerConfig(lr=1e-2))
    with caplog.at_level(logging.WARNING, logger="agentrl.training"):
        (metrics,) = learner.update(batch)
    assert metrics["skipped"] is True and learner.step == 0 and learner.skipped_steps == 1
    assert "non-finite" in caplog.text
    assert torch.equal(flat_params(model), before)
    (metrics,) = learner.update(bandit_batch())  # the next good batch trains normally
    assert metrics["skipped"] is False and learner.step == 1


def test_resume_gives_the_same_next_step(tmp_path):
    cfg = LearnerConfig(
        lr=1e-3, warmup_steps=1, total_steps=5, mini_batches=2, terms=["epo"], max_grad_norm=0.5
    )
    learner = Learner(tiny_model(), cfg)
    learner.update(multi_turn_batch(seed=0))
    learner.save_checkpoint(tmp_path / "ckpt")
    expected = learner.update(multi_turn_batch(seed=1))
    resumed = Learner(tiny_model(), cfg)  # the same initial model, then the checkpoint
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step == 2 and resumed.terms[0].history.history == learner.terms[0].history.history[:2]
    got = resumed.update(multi_turn_batch(seed=1))
    assert [m["rows"] for m in got] == [m["rows"] for m in expected]  # same mini-batch shuffle
    for a, b in zip(got, expected, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == b["lr"]
    torch.testing.assert_close(flat_params(resumed.model), flat_params(learner.model), atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match="no learner checkpoint"):
        resumed.load_checkpoint(tmp_path / "nowhere")


def test_lora_trains_adapters_only_and_exports_a_merged_model(tmp_path):
    pytest.importorskip("peft")
    model = tiny_model()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = LearnerConfig(lr=1e-2, lora=LoRAConfig(r=4, alpha=8), terms=["kl"], options={"kl": {"coef": 0.1}},
                        gradient_checkpointing=True)
    learner = Learner(model, cfg)
    prompt = [1, 2, 3, 4]
    before = response_logprob(learner.model, prompt, [10])
    learner.update(bandit_batch())
    (metrics,) = learner.update(bandit_batch())
    assert metrics["kl"] > 0  # the reference is the base model with adapters off
    assert response_logprob(learner.model, prompt, [10]) > before
    for name, param in learner.model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
        else:
            assert not param.requires_grad
            assert torch.equal(
                param.detach(), base_before[name.replace("base_model.model.", "").replace(".base_layer", "")]
            )
    export = learner.export_pretrained(tmp_path / "policy")
    merged = transformers.AutoModelForCausalLM.from_pretrained(export)
    assert response_logprob(merged, prompt, [10]) == pytest.approx(
        response_logprob(learner.model, prompt, [10]), abs=1e-4
    )
    learner.save_checkpoint(tmp_path / "ckpt")
    state = torch.load(tmp_path / "ckpt" / "learner.pt", weights_only=True)
    assert state["model"] and all("lora_" in k for k in state["model"])


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path / "run")
    learner = Learner(tiny_model(), LearnerConfig(lr=1e-3), logger=logger)
    learner.update(bandit_batch())
    learner.update(bandit_batch())
    logger.close()
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["success_rate"] == 0.5 and records[0]["episodes"] == 2
    assert records[0]["trained_tokens"] == 4 and records[0]["total_tokens"] == 5 + 7
    assert records[0]["tokens_per_s"] > 0
    if pytest.importorskip("tensorboard"):
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_gradient_checkpointing_gives_the_same_update():
    params = []
    for checkpointing in (False, True):
        model = tiny_model()
        learner = Learner(model, LearnerConfig(lr=1e-3, gradient_checkpointing=checkpointing))
        (metrics,) = learner.update(multi_turn_batch())
        params.append((metrics["grad_norm"], flat_params(model)))
    assert params[1][0] == pytest.approx(params[0][0], rel=1e-5)
    torch.testing.assert_close(params[1][1], params[0][1], atol=1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_update_on_gpu_matches_fp32_and_learns():
    prompt = [1, 2, 3, 4]
    losses = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model().cuda()
        before = response_logprob(model, prompt, [10])
        learner = Learner(model, LearnerConfig(lr=1e-2, precision=precision))
        (metrics,) = learner.update(bandit_batch())
        losses[precision] = metrics["pg_loss"]
        assert response_logprob(model, prompt, [10]) > before
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=2e-2)


def test_training_on_episodes_read_back_from_the_sqlite_store(tmp_path):
    from agentrl.store import open_store

    episodes = multi_turn_batch(logprobs=True)  # behaviour log-probs as a sampler would have stored them
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        run_id = store.start_run("learner-test", env_id="agentrl/Test-v0", kind="train")
        store.write_episodes(run_id, episodes)
        stored = store.read_episodes(run_id)
    results = []
    for batch in (episodes, stored):
        model = tiny_model()
        (metrics,) = Learner(model, LearnerConfig(lr=1e-3, shaping=["empg"])).update(batch)
        results.append((metrics, flat_params(model)))
    assert results[1][0]["loss"] == results[0][0]["loss"]  # the store round trip is exact
    assert torch.equal(results[1][1], results[0][1])


@pytest.mark.parametrize("tied", [True, False])
def test_fused_head_kernel_gives_the_same_loss_and_gradients(tied):
    """Issue 7.4: scoring through agentrl.kernels (no full logits) equals the full-logits reference."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agentrl.training.logprobs import token_logprobs_entropy

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=301, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config)
    input_ids = torch.randint(0, 301, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0
    targets = torch.roll(input_ids, -1, dims=1)
    targets[:, :4] = -100  # prompt positions are not scored
    targets[2, 7:] = -100
    results = []
    for fused in (True, False):
        model.zero_grad()
        logp, ent = token_logprobs_entropy(model, input_ids, attention_mask, targets, 0.8, fused=fused)
        loss = -(logp.sum() + 0.3 * ent.sum())
        loss.backward()
        results.append((logp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp_f, en_f, g_f), (lp_r, en_r, g_r) = results
    torch.testing.assert_close(lp_f, lp_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(en_f, en_r, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_f, g_r, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
