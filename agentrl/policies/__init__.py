"""Policies: inference backends behind one ``generate(prompts, sampling)`` interface.

Backends import their heavy dependencies lazily: ``from agentrl.policies import HFPolicy`` does not
import torch until a policy is built.
"""

from __future__ import annotations

from typing import Any

from agentrl.policies.base import Capabilities, Completion, Policy, PolicyError, SamplingParams

__all__ = ["Capabilities", "Completion", "HFPolicy", "OpenAIPolicy", "Policy", "PolicyError", "SamplingParams", "VLLMPolicy", "load_policy"]


def __getattr__(name: str) -> Any:
    if name == "HFPolicy":
        from agentrl.policies.hf import HFPolicy

        return HFPolicy
    if name == "OpenAIPolicy":
        from agentrl.policies.openai import OpenAIPolicy

        return OpenAIPolicy
    if name == "VLLMPolicy":
        from agentrl.policies.vllm import VLLMPolicy

        return VLLMPolicy
    if name == "load_policy":
        from agentrl.policies.loading import load_policy

        return load_policy
    raise AttributeError(name)
