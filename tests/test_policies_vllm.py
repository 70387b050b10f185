"""vLLM backend: runs where vllm imports and a GPU is present; skipped with the reason elsewhere.

What is checked against transformers (float32 both sides): the behaviour log-probs of sampled tokens,
and that after a weight sync through vLLM's documented hooks (the worker extension's
``collective_rpc`` for full weights, a ``LoRARequest`` for adapters, sleep/wake) the engine computes
the learner's new distribution, not the old one.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vllm is not installed (optional extra agentrl[vllm], GPU only)")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA device"),
]

ENGINE = {"dtype": "float32", "gpu_memory_utilization": 0.2, "enforce_eager": True}


def hf_logprobs(model, prompt: list[int], completion: list[int]):
    ids = torch.tensor([prompt + completion], device=next(model.parameters()).device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double(), -1)
    return logp.gather(-1, torch.tensor(completion, device=logp.device)[:, None]).squeeze(-1).cpu()


def engine_gap(policy, model, prompts) -> float:
    """Largest |vLLM logprob - transformers logprob| over a sampled completion of each prompt."""
    from agentrl.policies import SamplingParams

    completions = policy.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0, stop_token_ids=()))
    gap = 0.0
    for prompt, completion in zip(prompts, completions, strict=True):
        assert len(completion.token_ids) == 8 and completion.finish_reason == "length"
        expected = hf_logprobs(model, prompt, completion.token_ids)
        gap = max(gap, (torch.tensor(completion.logprobs, dtype=torch.float64) - expected).abs().max().item())
    return gap


@pytest.fixture(scope="module")
def prompts(tiny_chat_model):
    from agentrl.policies.sources import load_tokenizer

    tokenizer = load_tokenizer(tiny_chat_model)
    return [tokenizer("You see a fridge.", add_special_tokens=False)["input_ids"], [5, 6, 7, 8]]


def test_vllm_logprobs_match_transformers(tiny_chat_model, prompts):
    from transformers import AutoModelForCausalLM

    from agentrl.policies.vllm import VLLMPolicy

    policy = VLLMPolicy(tiny_chat_model, **ENGINE)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float32)
    assert engine_gap(policy, model, prompts) < 1e-3


def test_vllm_runs_published_full_weights_and_survives_sleep(tiny_chat_model, prompts, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentrl.distributed.weights import WeightPublisher
    from agentrl.policies.vllm import VLLMPolicy

    policy = VLLMPolicy(tiny_chat_model, sleep_mode=True, **ENGINE)
    old = AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float32)
    new = AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float32)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = WeightPublisher(tmp_path).publish(new.state_dict(), 1)
    policy.sleep()  # as the recipe does around the learner's update
    policy.wake_up()
    policy.load_published(path, 1)
    assert policy.version == 1
    assert engine_gap(policy, new, prompts) < 1e-3  # the new weights, exactly
    assert engine_gap(policy, old, prompts) > 1e-2  # not the old ones (nor a stale prefix cache)


def test_vllm_runs_published_lora_adapters(tiny_chat_model, prompts, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentrl.distributed.weights import WeightPublisher, publish_weights
    from agentrl.policies.vllm import VLLMPolicy
    from agentrl.training.config import LearnerConfig, LoRAConfig
    from agentrl.training.learner import Learner

    policy = VLLMPolicy(tiny_chat_model, enable_lora=True, max_lora_rank=8, **ENGINE)
    learner = Learner(AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float32).cuda(),
                      LearnerConfig(lora=LoRAConfig(r=8, alpha=16)))  # fmt: skip
    publisher = WeightPublisher(tmp_path)
    for version in (1, 2):  # two versions: the second must replace the first
        with torch.no_grad():
            for name, p in learner.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn_like(p))
        learner.step = version
        policy.load_published(publish_weights(publisher, learner), version)
        assert engine_gap(policy, learner.model.eval(), prompts) < 1e-3
    with learner.model.disable_adapter():
        assert engine_gap(policy, learner.model, prompts) > 1e-2
