"""The policy interface: token ids in, sampled token ids (with their log-probabilities) out.

Every inference backend (transformers, vLLM, an OpenAI-compatible server) implements
``generate(prompts, sampling) -> list[Completion]``. Prompts are token ids, never text: the rollout
owns tokenisation so that the ids a learner trains on are exactly the ids the policy saw and
sampled (see DESIGN.md, "Tokens in, tokens out").

Log-probabilities and entropies are those of the distribution each token was drawn from: the
temperature-scaled ``softmax(logits / temperature)``, restricted to the allowed tokens and
renormalised under constrained decoding, truncated and renormalised under top-k / top-p (for
``temperature == 0`` they are those of ``softmax(logits)``). The settings are recorded with the
tokens (:func:`sampling_settings`), so a learner recomputes that very distribution and importance
ratios start at exactly 1 for on-policy data (DESIGN.md, "The learner trains the distribution that
acted").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from agentrl.errors import AgentrlError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion per prompt."""

    max_new_tokens: int = 64  # generation stops after this many sampled tokens (finish_reason "length")
    temperature: float = 1.0  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling mass kept
    top_k: int = 0  # keep the k most likely tokens; 0 = no limit
    stop: tuple[str, ...] = ()  # stop strings; the completion ends with (and includes) the first one seen
    stop_token_ids: tuple[int, ...] | None = None  # None = the tokenizer's / model's end-of-sequence ids
    seed: int | None = None  # None = the backend's own running generator
    return_entropies: bool = False  # also return the entropy of the sampling distribution per token
    top_logprobs: int = 0  # also return the k most likely tokens of each step's distribution (ids, logprobs)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))


def sampling_settings(sampling: SamplingParams) -> dict[str, float | int]:
    """The settings that define the distribution a token is drawn from (recorded with the tokens)."""
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}


@dataclass
class Completion:
    """One sampled continuation of one prompt.

    ``token_ids`` are the sampled ids verbatim (including a sampled end-of-turn token or the tokens
    of a stop string); ``logprobs[i]`` is the behaviour log-probability of ``token_ids[i]``.
    ``loss_mask[i]`` is 0 where constrained decoding left only one possible token (the constrained
    policy had no choice there, so the token carries no policy gradient), else 1; ``None`` = all 1.
    ``allowed[i]`` is the set of token ids constrained decoding allowed at token ``i`` (``None`` where
    decoding was free; the whole field is ``None`` without constraints).
    ``text`` is the decoded completion when the backend has it (a chat endpoint that returns no ids
    has only ``text``, and ``token_ids`` is then ``None``: such completions are for evaluation only).
    ``top_logprobs[i]`` (with ``SamplingParams.top_logprobs``) lists ``(token_id, logprob)`` of the most
    likely tokens at step ``i``, most likely first.

    ``meta["context_overflow"] = True`` (with ``finish_reason "length"`` and no tokens) says the prompt
    did not fit the model's context (a remote server answered HTTP 400 for it): nothing was sampled, and
    the rollout ends that episode as truncated (``truncated_reason "context_length"``), as it does
    when its own context check fires first.
    """

    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: FinishReason
    entropies: list[float] | None = None
    text: str | None = None
    meta: dict = field(default_factory=dict)
    loss_mask: list[int] | None = None
    allowed: list[list[int] | None] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else 0


@dataclass(frozen=True)
class Capabilities:
    """What a policy can do, declared once by the backend (callers read it instead of probing)."""

    token_ids: bool = True  # completions carry the sampled ids (False: a text-only chat endpoint)
    entropies: bool = False  # SamplingParams.return_entropies is honoured
    constrained: bool = False  # generate(..., choices=...) restricts decoding to given completions
    chat_input: bool = False  # takes chat messages (generate_messages) instead of token ids
    weight_updates: bool = False  # load_published(path, version) makes it run a learner's published version


@runtime_checkable
class Policy(Protocol):
    """An inference backend. ``version`` counts weight updates (recorded on every rollout step).

    ``capabilities`` says which optional calls and fields it supports; ``max_context`` (tokens, or
    ``None`` when unknown) bounds prompt + new tokens.
    """

    name: str
    version: int
    capabilities: Capabilities
    max_context: int | None

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order. Never re-tokenises: ``token_ids`` are what was sampled."""
        ...


class PolicyError(AgentrlError, RuntimeError):
    """A backend could not serve a request (server down, bad credentials, timeout, bad model path)."""
