"""Policies from a model spec: a Hugging Face model (directory or Hub id), ``vllm:MODEL``, or a URL.

Which string names which model is decided in one place, :mod:`agentrl.policies.sources`.
"""

from __future__ import annotations

from typing import Any

from agentrl.policies.sources import load_tokenizer


def load_policy(
    spec: str,
    *,
    tokenizer: str | None = None,
    api_key: str | None = None,
    seed: int = 0,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Return ``(policy, tokenizer)`` for ``spec``.

    * ``http://...`` / ``https://...``: an OpenAI-compatible server. With ``tokenizer`` (a local
      tokenizer directory or a Hub id) prompts go out as token ids (token-exact); without, the chat
      endpoint is used and the returned tokenizer is ``None`` (text-only evaluation).
    * ``vllm:MODEL``: a vLLM engine on ``MODEL`` (a local directory or a Hub id).
    * anything else: a Hugging Face model, a local directory or a Hub id (:func:`model_source`).

    A model that cannot be found or a server that does not answer raises one :class:`PolicyError`.
    """
    if spec.startswith(("http://", "https://")):
        from agentrl.policies.openai import OpenAIPolicy

        if tokenizer is None:
            return OpenAIPolicy(spec, api_key=api_key, mode="chat"), None
        return OpenAIPolicy(spec, api_key=api_key, mode="completions"), load_tokenizer(tokenizer)
    if spec.startswith("vllm:"):
        from agentrl.policies.vllm import VLLMPolicy

        policy = VLLMPolicy(spec[len("vllm:") :], seed=seed)
        return policy, load_tokenizer(tokenizer) if tokenizer else policy.tokenizer
    from agentrl.policies.hf import HFPolicy

    policy = HFPolicy(spec, device=device, seed=seed, tokenizer=load_tokenizer(tokenizer) if tokenizer else None)
    return policy, policy.tokenizer
