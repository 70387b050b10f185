"""``agentrl model tiny DIR``: a model to train and evaluate without downloading anything."""

from __future__ import annotations

import subprocess

import pytest

from agentrl.testing import installed_cli

pytest.importorskip("torch")
pytest.importorskip("textworld")


def test_model_tiny_writes_a_loadable_model_whose_tokenizer_knows_the_env(tmp_path):
    import agentrl
    from agentrl.policies import HFPolicy, SamplingParams

    target = tmp_path / "tiny"
    out = subprocess.run([installed_cli(), "model", "tiny", str(target), "--tasks", "3", "--layers", "2"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    policy = HFPolicy(str(target))
    params = sum(p.numel() for p in policy.model.parameters())
    assert f"{params / 1e6:.2f} M parameters" in out.stdout and policy.model.config.num_hidden_layers == 2
    env = agentrl.make("textworld", split="train")
    try:
        _, info = env.reset(options={"task": env.task_ids()[0]})
    finally:
        env.close()
    from agentrl.testing import tiny_tokenizer

    # trained on the env's text, its tokenizer spends fewer tokens on the env's actions than one trained without it
    actions = info["admissible_actions"]
    ours = sum(len(policy.tokenizer.encode(a)) for a in actions)
    generic = sum(len(tiny_tokenizer(vocab_size=2000).encode(a)) for a in actions)
    words = sum(len(a.split()) for a in actions)
    assert ours < generic and ours <= 1.5 * words, (ours, generic, words)
    (completion,) = policy.generate([policy.tokenizer.encode("You are in a kitchen.")], SamplingParams(max_new_tokens=4))
    assert completion.num_tokens >= 1 and policy.tokenizer.chat_template  # a chat model: agents render prompts with it

    again = subprocess.run([installed_cli(), "model", "tiny", str(target)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists and is not an empty directory" in again.stderr
