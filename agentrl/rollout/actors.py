"""Who decides the actions of an episode: a model (policy + LLM agent) or a script (random, expert, oracle).

The :class:`~agentrl.rollout.collector.Collector` plays episodes with any :class:`Actor`; the actor
only decides. Per turn it gets every live episode at once (a model answers them in one batched
``generate`` call) and returns one :class:`Decision` per episode: an action, or the reason the episode
must end before acting (the context is full).

* :class:`ModelActor`: a :class:`~agentrl.policies.base.Policy` and an
  :class:`~agentrl.agents.llm.LLMAgent`; the agent writes the episode's transcript as it samples.
* :class:`ScriptedActor`: a :class:`~agentrl.agents.scripted.ScriptedAgent` per episode. Given an
  ``LLMAgent`` to ``record`` with, it also writes each scripted action into that agent's token layout
  as the completion ``<action>A</action><eos>`` (no log-probs): expert demonstrations shaped exactly
  like sampled episodes, for supervised warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrl.agents.llm import AgentEpisode, LLMAgent
from agentrl.agents.scripted import ScriptedAgent
from agentrl.core import TextEnv
from agentrl.policies.base import Completion, Policy, SamplingParams


@dataclass
class Decision:
    """What an actor decided for one live episode this turn."""

    action: str | None  # the env action; None = end the episode now (see ``truncate``/``error``)
    truncate: str | None = None  # end as truncated before acting, for this reason (``context_length``)
    error: str | None = None  # the actor could not act (the episode fails with this error)
    info: dict[str, Any] = field(default_factory=dict)  # merged into the step's info (finish_reason, parse_error)
    tokens: int = 0  # ids generated for this decision


@dataclass
class Live:
    """One live episode as an actor sees it: its env, the last observation and info, and the actor's state."""

    env: TextEnv
    obs: str
    info: dict[str, Any]
    state: Any = None


class Actor(Protocol):
    """Decides actions for live episodes; see the module docstring."""

    name: str  # recorded as ``Episode.agent``
    version: int | None  # the policy version acting now (recorded per step), None for scripts

    def start(self, live: Live, seed: int) -> None:
        """Set ``live.state`` for a new episode (after ``env.reset``)."""
        ...

    def act(self, lives: list[Live]) -> list[Decision]:
        """One decision per live episode, in order; the time it takes counts as generation time."""
        ...

    def observe(self, live: Live) -> None:
        """The env answered (``live.obs``/``live.info`` are the new ones) and the episode goes on."""
        ...

    def finish(self, live: Live) -> dict[str, Any]:
        """The episode ended: its token side and metadata (``transcripts``, ``meta``) to keep."""
        ...


class ModelActor:
    """A policy and an LLM agent: one batched ``generate`` per turn, exact tokens in the transcripts."""

    def __init__(self, policy: Policy, agent: LLMAgent, sampling: SamplingParams, *, max_context: int | None = None):
        caps = policy.capabilities
        if agent.admissible_only and not caps.constrained:
            raise ValueError(
                f"the agent decodes admissible actions only, but {type(policy).__name__} has no constrained decoding "
                "(use HFPolicy, or an agent without admissible_only)"
            )
        if not caps.chat_input and agent.tokenizer is None:
            raise ValueError(f"{type(policy).__name__} takes token ids: give the agent a tokenizer")
        self.policy = policy
        self.agent = agent
        self.sampling = sampling
        self.max_context = max_context or policy.max_context
        self.name = policy.name
        self.stats = {"generate_calls": 0, "generate_seconds": 0.0, "tokens_generated": 0}

    @property
    def version(self) -> int | None:
        return self.policy.version

    def start(self, live: Live, seed: int) -> None:
        live.state = self.agent.start(live.obs, live.info)

    def act(self, lives: list[Live]) -> list[Decision]:
        import time

        chat = self.policy.capabilities.chat_input
        decisions: list[Decision | None] = []
        asking: list[tuple[int, Any]] = []
        for index, live in enumerate(lives):
            prompt = self.agent.messages(live.state) if chat else self.agent.prompt_ids(live.state)
            if not chat and self.max_context is not None and len(prompt) + self.sampling.max_new_tokens > self.max_context:
                decisions.append(Decision(None, truncate="context_length"))
            else:
                decisions.append(None)
                asking.append((index, prompt))
        if asking:
            prompts = [prompt for _, prompt in asking]
            version = self.policy.version
            start = time.perf_counter()
            if chat:
                completions = self.policy.generate_messages(prompts, self.sampling)  # type: ignore[attr-defined]
            elif self.agent.admissible_only:
                choices = [self.agent.choices(lives[index].state) for index, _ in asking]
                completions = self.policy.generate(prompts, self.sampling, choices=choices)  # type: ignore[call-arg]
            else:
                completions = self.policy.generate(prompts, self.sampling)
            self.stats["generate_calls"] += 1
            self.stats["generate_seconds"] += time.perf_counter() - start
            for (index, _), completion in zip(asking, completions, strict=True):
                decisions[index] = self._decide(lives[index].state, completion, version)
        return decisions  # type: ignore[return-value]

    def _decide(self, state: AgentEpisode, completion: Completion, version: int | None) -> Decision:
        if completion.meta.get("context_overflow"):  # the server refused the prompt: the context is full
            return Decision(None, truncate="context_length")
        action = self.agent.act(state, completion, version=version, sampling=self.sampling)
        info: dict[str, Any] = {"finish_reason": completion.finish_reason}
        if not state.last_parse_ok:
            info.update(parse_error=True, invalid_action=True)
        if (completion.token_ids is None or self.agent.tokenizer is None) and completion.text is not None:
            state.meta.setdefault("response_text", []).append(completion.text)  # text in, text out: keep the text
        self.stats["tokens_generated"] += completion.num_tokens
        return Decision(action, info=info, tokens=completion.num_tokens)

    def observe(self, live: Live) -> None:
        self.agent.observe(live.state, live.obs, live.info)

    def finish(self, live: Live) -> dict[str, Any]:
        state: AgentEpisode | None = live.state
        if state is None:
            return {}
        meta: dict[str, Any] = {"layout": state.layout}
        if state.layout_reason:
            meta["layout_reason"] = state.layout_reason
        if "response_text" in state.meta:
            meta["response_text"] = state.meta["response_text"]
        return {"transcripts": state.transcripts, "meta": meta}


class ScriptedActor:
    """A scripted agent (a fresh one per episode, from ``make_agent``), optionally recorded as tokens.

    With ``record``, each action also goes into ``record``'s token layout as the completion
    ``<action>A</action><eos>``: a demonstration shaped exactly like a sampled episode (its
    transcripts have no behaviour log-probs, so they are for supervised training).
    """

    def __init__(self, make_agent: Callable[[], ScriptedAgent], *, record: LLMAgent | None = None, name: str | None = None):
        self.make_agent = make_agent
        self.record = record
        self.name = name or make_agent().name
        self.version = None
        if record is not None:
            tokenizer = record.tokenizer
            if tokenizer is None:
                raise ValueError("recording demonstrations needs an LLMAgent with a tokenizer")
            self._eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def start(self, live: Live, seed: int) -> None:
        agent = self.make_agent()
        agent.reset(live.env, seed=seed)
        tokens = self.record.start(live.obs, live.info) if self.record is not None else None
        live.state = (agent, tokens)

    def act(self, lives: list[Live]) -> list[Decision]:
        return [self._decide(live) for live in lives]

    def _decide(self, live: Live) -> Decision:
        agent, tokens = live.state
        try:
            action = agent.act(live.obs, live.info)
        except Exception as exc:  # a failing agent fails its episode, never the run
            return Decision(None, error=f"{type(exc).__name__}: {exc}")
        if tokens is not None:  # the env gets the action as the agent parses it back, like a sampled one
            assert self.record is not None
            self.record.prompt_ids(tokens)  # the prompt this demonstration turn answers (per-step layout)
            ids = self.record.encode(f"<action>{action}</action>") + self._eos
            action = self.record.act(tokens, Completion(ids, None, "stop"))
        return Decision(action)

    def observe(self, live: Live) -> None:
        if self.record is not None:
            self.record.observe(live.state[1], live.obs, live.info)

    def finish(self, live: Live) -> dict[str, Any]:
        tokens = live.state[1] if live.state is not None else None
        if tokens is None:
            return {}
        return {"transcripts": tokens.transcripts, "meta": {"layout": tokens.layout}}
