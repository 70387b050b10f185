"""vLLM backend: runs where vllm imports and a GPU is present; skipped with the reason elsewhere."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="vllm is not installed (optional extra agentrl[vllm], GPU only)")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA device"),
]


def test_vllm_logprobs_match_transformers(tiny_chat_model):
    from transformers import AutoModelForCausalLM

    from agentrl.policies import SamplingParams
    from agentrl.policies.vllm import VLLMPolicy

    policy = VLLMPolicy(tiny_chat_model, dtype="float32", gpu_memory_utilization=0.2, enforce_eager=True)
    tokenizer = policy.tokenizer
    prompts = [tokenizer("You see a fridge.", add_special_tokens=False)["input_ids"], [5, 6, 7, 8]]
    completions = policy.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0, stop_token_ids=()))
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model, dtype=torch.float32)
    for prompt, completion in zip(prompts, completions, strict=True):
        assert len(completion.token_ids) == 8 and completion.finish_reason == "length"
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double(), -1)
        expected = logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(completion.logprobs, dtype=torch.float64), expected, atol=1e-3, rtol=0)
