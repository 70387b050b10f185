"""Build a policy from a command-line model spec (``agentrl eval --model ...``, ``agentrl serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.policies.base import PolicyError


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
      tokenizer directory) prompts go out as token ids (token-exact); without, the chat endpoint is
      used and the returned tokenizer is ``None`` (text-only evaluation).
    * ``vllm:PATH``: a vLLM engine on ``PATH``.
    * anything else: a local Hugging Face model directory.

    A path that does not exist or a server that does not answer raises one :class:`PolicyError`.
    """
    if spec.startswith(("http://", "https://")):
        from agentrl.policies.openai import OpenAIPolicy

        if tokenizer is None:
            return OpenAIPolicy(spec, api_key=api_key, mode="chat"), None
        return OpenAIPolicy(spec, api_key=api_key, mode="completions"), _load_tokenizer(tokenizer)
    if spec.startswith("vllm:"):
        from agentrl.policies.vllm import VLLMPolicy

        path = spec[len("vllm:") :]
        policy = VLLMPolicy(path, seed=seed)
        return policy, _load_tokenizer(tokenizer) if tokenizer else policy.tokenizer
    if not Path(spec).exists():
        raise PolicyError(f"model {spec!r} not found: pass a local model directory, vllm:PATH or an http(s) URL")
    from agentrl.policies.hf import HFPolicy

    policy = HFPolicy(spec, device=device, seed=seed, tokenizer=_load_tokenizer(tokenizer) if tokenizer else None)
    return policy, policy.tokenizer


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise PolicyError(f"tokenizer {path!r} is not a local directory")
    return AutoTokenizer.from_pretrained(path)
