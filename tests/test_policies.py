"""The transformers backend against an independent reference: a plain full forward of prompt + completion."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from agentrl.policies import Completion, Policy, SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402

PROMPTS_TEXT = ["You see a fridge.", "Your task is to take the apple from the fridge and put it on the table.", "go"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def policy(tiny_chat_model) -> HFPolicy:
    return HFPolicy(tiny_chat_model, device="cpu")


@pytest.fixture(scope="module")
def prompts(policy) -> list[list[int]]:
    return [policy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in PROMPTS_TEXT]


def reference_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0):
    """Log-probabilities and entropies of ``completion`` under one unpadded, uncached forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double() / temperature
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy, logits


def test_policy_protocol(policy):
    assert isinstance(policy, Policy)
    assert policy.version == 0


@pytest.mark.parametrize("static_cache", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropies_match_a_full_forward(policy, prompts, static_cache, temperature):
    policy.static_cache = static_cache
    try:
        sampling = SamplingParams(max_new_tokens=12, temperature=temperature, seed=3, return_entropies=True, stop_token_ids=())
        completions = policy.generate(prompts, sampling)
    finally:
        policy.static_cache = False
    assert len(completions) == len(prompts)
    for prompt, completion in zip(prompts, completions, strict=True):
        assert isinstance(completion, Completion)
        assert completion.finish_reason == "length" and len(completion.token_ids) == 12
        chosen, entropy, _ = reference_logprobs(policy.model, prompt, completion.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(completion.logprobs, dtype=torch.float64), chosen, atol=2e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(completion.entropies, dtype=torch.float64), entropy, atol=2e-5, rtol=0)


def test_greedy_picks_the_argmax_every_step(policy, prompts):
    completions = policy.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=()))
    for prompt, completion in zip(prompts, completions, strict=True):
        _, _, logits = reference_logprobs(policy.model, prompt, completion.token_ids)
        assert completion.token_ids == logits.argmax(-1).tolist()
    top1 = policy.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, seed=5, stop_token_ids=()))
    assert [c.token_ids for c in top1] == [c.token_ids for c in completions]


def test_seeded_sampling_is_reproducible(policy, prompts):
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11, stop_token_ids=())
    first, again = policy.generate(prompts, sampling), policy.generate(prompts, sampling)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    other = policy.generate(prompts, SamplingParams(max_new_tokens=16, temperature=1.0, seed=12, stop_token_ids=()))
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_first_token_frequencies_follow_the_tempered_softmax(policy, prompts):
    """2,000 one-token samples of one prompt: frequencies within 5 sigma of softmax(logits / T)."""
    n, temperature = 2000, 0.8
    prompt = prompts[0]
    completions = policy.generate([prompt] * n, SamplingParams(max_new_tokens=1, temperature=temperature, seed=0, stop_token_ids=()))
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)
    counts = torch.bincount(torch.tensor([c.token_ids[0] for c in completions]), minlength=probs.numel()).double()
    sigma = (n * probs * (1 - probs)).sqrt()
    assert bool(((counts - n * probs).abs() <= 5 * sigma + 1).all())


def test_top_p_samples_stay_in_the_nucleus(policy, prompts):
    prompt, top_p = prompts[1], 0.5
    completions = policy.generate([prompt] * 300, SamplingParams(max_new_tokens=1, top_p=top_p, seed=1, stop_token_ids=()))
    with torch.no_grad():
        probs = torch.softmax(policy.model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    sorted_probs, order = probs.sort(descending=True)
    keep = int((sorted_probs.cumsum(0) - sorted_probs < top_p).sum())  # smallest prefix with mass >= top_p
    nucleus = set(order[:keep].tolist())
    sampled = {c.token_ids[0] for c in completions}
    assert sampled <= nucleus
    assert len(sampled) > 1 or keep == 1


def test_stop_strings_end_the_completion_right_after_the_stop(policy, prompts):
    tokenizer = policy.tokenizer
    completions = policy.generate(prompts * 4, SamplingParams(max_new_tokens=64, stop=("e",), seed=2, stop_token_ids=()))
    stopped = [c for c in completions if c.finish_reason == "stop"]
    assert stopped, "no completion produced an 'e' within 64 tokens"
    for completion in completions:
        text = tokenizer.decode(completion.token_ids)
        before = tokenizer.decode(completion.token_ids[:-1])
        if completion.finish_reason == "stop":
            assert "e" in text and "e" not in before
        else:
            assert len(completion.token_ids) == 64 and "e" not in text


def test_stop_token_is_kept_and_ends_the_turn(policy, prompts):
    greedy = policy.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=()))
    second = [c.token_ids[1] for c in greedy]
    stopped = policy.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=tuple(second)))
    for completion, full in zip(stopped, greedy, strict=True):
        cut = next(i for i, t in enumerate(full.token_ids) if t in second) + 1
        assert completion.token_ids == full.token_ids[:cut]
        assert completion.finish_reason == "stop"
        assert completion.logprobs == pytest.approx(full.logprobs[:cut], abs=1e-5)


def test_default_stop_is_the_chat_end_of_turn(policy):
    assert policy.eos_ids == (policy.tokenizer.convert_tokens_to_ids("<|im_end|>"),)


def test_load_weights_bumps_the_version(policy, prompts):
    state = {k: v.clone() for k, v in policy.model.state_dict().items()}
    policy.load_weights(state)
    assert policy.version == 1
    policy.load_weights(state, version=7)
    assert policy.version == 7
    policy.version = 0


def test_bad_inputs_are_clear_errors(policy, tmp_path):
    from agentrl.policies import PolicyError

    with pytest.raises(PolicyError, match="not found: no such local directory"):
        HFPolicy(str(tmp_path / "missing"))
    (tmp_path / "no-config").mkdir()
    with pytest.raises(PolicyError, match="not a Hugging Face model directory"):
        HFPolicy(str(tmp_path / "no-config"))
    with pytest.raises(ValueError, match="at least one token"):
        policy.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="exceeds the model context"):
        policy.generate([[1] * policy.max_context], SamplingParams(max_new_tokens=2))
    assert policy.generate([], SamplingParams()) == []


def test_entropy_of_uniform_logits_is_log_vocab():
    from agentrl.policies.hf import _sample

    logits = torch.zeros(2, 50)
    token, logprob, entropy = _sample(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert entropy.tolist() == pytest.approx([math.log(50)] * 2, abs=1e-5)
    assert logprob.tolist() == pytest.approx([-math.log(50)] * 2, abs=1e-5)


# -- constrained decoding (choices) ---------------------------------------------------------------


def restricted_reference(model, prompt: list[int], completion: Completion, temperature: float = 1.0):
    """Float64 ``log q`` and ``H(q)`` of a completion: its tokens' distribution restricted to their allowed
    sets (``completion.allowed``) and renormalised; the full distribution where decoding was free."""
    _, _, logits = reference_logprobs(model, prompt, completion.token_ids, temperature)
    logp, entropy = [], []
    for i, token in enumerate(completion.token_ids):
        allowed = (completion.allowed or [None] * len(completion.token_ids))[i]
        row = logits[i] if allowed is None else logits[i, allowed]
        q = torch.log_softmax(row, -1)
        index = token if allowed is None else allowed.index(token)
        logp.append(q[index].item())
        entropy.append(-(q.exp() * q).sum().item())
    return logp, entropy


def test_choices_restrict_completions_and_record_the_distribution_they_were_drawn_from(policy, prompts):
    """Every completion is one of its prompt's choices; recorded log-probs and entropies are those of q,
    the model's distribution restricted to the allowed tokens (recorded per token) and renormalised."""
    vocab = policy.tokenizer
    options = [vocab(f"<action>{a}</action>", add_special_tokens=False)["input_ids"] for a in ("open fridge", "go east", "take apple from fridge")]
    choices = [options, options[:1], None]
    sampling = SamplingParams(max_new_tokens=20, temperature=1.0, seed=4, return_entropies=True, stop_token_ids=())
    for _ in range(3):
        completions = policy.generate(prompts, sampling, choices=choices)
        assert completions[0].token_ids in options and completions[0].finish_reason == "stop"
        assert completions[1].token_ids == options[0]
        assert completions[2].token_ids not in options and len(completions[2].token_ids) == 20  # unconstrained
        assert completions[2].allowed == [None] * 20
        # loss mask: 0 exactly where the options left one possible next token (the <action> tag, the single option)
        for completion, row in zip(completions, choices, strict=True):
            expected = [int(len({o[i] for o in (row or []) if o[:i] == completion.token_ids[:i]}) != 1) for i in range(len(completion.token_ids))]
            assert completion.loss_mask == expected
            if row is not None:  # the allowed set of every token is the options' next tokens after its prefix
                assert completion.allowed == [sorted({o[i] for o in row if o[:i] == completion.token_ids[:i]})
                                              for i in range(len(completion.token_ids))]  # fmt: skip
        assert 0 < sum(completions[0].loss_mask) < len(completions[0].loss_mask) and sum(completions[1].loss_mask) == 0
        for prompt, completion in zip(prompts, completions, strict=True):
            logq, entropy = restricted_reference(policy.model, prompt, completion)
            assert completion.logprobs == pytest.approx(logq, abs=1e-4)
            assert completion.entropies == pytest.approx(entropy, abs=1e-4)
        # a forced token (one allowed) was taken with probability 1: log q = 0 and H(q) = 0 exactly
        assert completions[1].logprobs == [0.0] * len(options[0]) and completions[1].entropies == [0.0] * len(options[0])
        sampling = SamplingParams(max_new_tokens=20, temperature=1.0, seed=sampling.seed + 1, return_entropies=True, stop_token_ids=())


def test_truncated_sampling_records_the_truncated_distribution(policy, prompts):
    """top-k / top-p: the recorded log-prob is the token's probability in the renormalised nucleus."""
    for sampling in (SamplingParams(max_new_tokens=6, top_k=5, seed=2, return_entropies=True, stop_token_ids=()),
                     SamplingParams(max_new_tokens=6, top_p=0.5, seed=2, return_entropies=True, stop_token_ids=())):  # fmt: skip
        for prompt, completion in zip(prompts, policy.generate(prompts, sampling), strict=True):
            _, _, logits = reference_logprobs(policy.model, prompt, completion.token_ids)
            for i, token in enumerate(completion.token_ids):
                p = torch.softmax(logits[i], -1)
                order = torch.argsort(p, descending=True)
                if sampling.top_k:
                    kept = order[: sampling.top_k]
                else:  # the smallest prefix of the sorted tokens whose mass reaches top_p
                    cumulative = p[order].cumsum(0)
                    kept = order[: int((cumulative < sampling.top_p).sum()) + 1]
                assert token in kept.tolist()
                q = p[kept] / p[kept].sum()
                assert completion.logprobs[i] == pytest.approx(math.log(q[kept.tolist().index(token)].item()), abs=1e-4)
                assert completion.entropies[i] == pytest.approx(-(q * q.log()).sum().item(), abs=1e-4)


def test_choice_frequencies_follow_the_models_renormalised_probabilities(policy, prompts):
    """Two single-token choices a, b: a is drawn with probability p(a) / (p(a) + p(b)) (binomial, 4 sigma)."""
    _, _, logits = reference_logprobs(policy.model, prompts[1], [0])
    p = torch.softmax(logits[0], -1)
    a, b = torch.topk(p, 5).indices[[0, 4]].tolist()  # a likely and a less likely token
    expected = (p[a] / (p[a] + p[b])).item()
    n = 2000
    completions = policy.generate([prompts[1]] * n, SamplingParams(max_new_tokens=3, seed=11, stop_token_ids=()), choices=[[[a], [b]]] * n)
    assert {tuple(c.token_ids) for c in completions} <= {(a,), (b,)}
    share = sum(c.token_ids == [a] for c in completions) / n
    assert abs(share - expected) <= 4 * math.sqrt(expected * (1 - expected) / n)


def test_greedy_with_choices_takes_the_most_likely_allowed_token(policy, prompts):
    _, _, logits = reference_logprobs(policy.model, prompts[0], [0])
    ranked = torch.argsort(logits[0], descending=True).tolist()
    allowed = [[ranked[7]], [ranked[3]], [ranked[20]]]  # not the overall argmax
    (completion,) = policy.generate([prompts[0]], SamplingParams(max_new_tokens=4, temperature=0.0), choices=[allowed])
    assert completion.token_ids == [ranked[3]] and completion.finish_reason == "stop"
    long = allowed[0] * 6  # 6 tokens: cannot end within a budget of 4
    for completion in policy.generate([prompts[0]] * 8, SamplingParams(max_new_tokens=4), choices=[[long, allowed[2]]] * 8):
        assert completion.token_ids == allowed[2]
    with pytest.raises(ValueError, match="one entry per prompt"):
        policy.generate(prompts, SamplingParams(), choices=[allowed])
