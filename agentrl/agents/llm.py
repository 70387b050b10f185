"""The LLM agent: prompts per environment, the action parser, and exact token bookkeeping.

The agent turns an episode into token ids for a policy and a sampled completion into an env action.
The agent writes the episode's token side as it goes: a :class:`~agentrl.trajectory.Transcript`
that it extends with the prompt text it shows the policy (loss mask 0) and the ids the policy
sampled, verbatim, with their behaviour statistics. It never decodes and re-tokenises a sampled
turn: in the **concat** layout the transcript is the policy's next prompt,

    prompt[t + 1] = prompt[t] + response[t] + encode(delta[t + 1])

where ``delta`` is the text the chat template adds after the sampled response (the end of the
assistant turn if the model did not sample it, the new user message with the observation, the
generation prompt), tokenised once. One transcript per episode carries every turn.

Some chat templates rewrite earlier turns when rendered again (Qwen3 drops ``<think>`` blocks of
past assistant turns). Then the concat prefix would no longer be what the template means; the agent
detects it (once per tokenizer with a probe, and again every turn by a text prefix check) and
switches that episode to the **per-step** layout: each turn's prompt is the template rendered afresh
over a window of the last ``history`` turns, tokenised once, and that turn gets a transcript of its
own (prompt + response). ``AgentEpisode.layout`` / ``layout_reason`` say which layout an episode has
and why.

Constrained decoding (``admissible_only=True``): the agent also gives, per turn, the admissible
actions shown in the prompt as token ids of ``<action>A</action>`` (:meth:`LLMAgent.choices`), and a
policy that supports it (:class:`~agentrl.policies.HFPolicy`) samples only among them. A small model
then learns which action to take without first having to learn to spell one; the ids it samples are
still the ids trained on (tokens the constraint forced get loss mask 0).

Action format: the model answers with ``<action>COMMAND</action>`` (reasoning before it is allowed).
Output without a complete, non-empty action tag is sent to the env as an empty action, which every
env answers with ``invalid_action=True``; the agent tells the model what went wrong on the next turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agentrl.core import PromptSpec, TextEnv
from agentrl.policies.base import sampling_settings
from agentrl.trajectory import Transcript

if TYPE_CHECKING:
    from agentrl.policies.base import Completion, SamplingParams

Layout = Literal["concat", "per_step"]

ACTION_PATTERN = re.compile(r"<action>(.*?)</action>", re.DOTALL)
ACTION_STOP = "</action>"
FORMAT_REMINDER = "Your reply had no <action>...</action> command, so nothing happened."
#: The action format this agent parses, appended to every environment's description.
ACTION_RULE = (
    "Reply with exactly one command inside <action>...</action>, for example <action>look</action>. "
    "You may think briefly before the action tag."
)


def parse_action(text: str) -> str | None:
    """The command inside the first ``<action>...</action>`` of ``text``; ``None`` when there is none."""
    match = ACTION_PATTERN.search(text or "")
    if match is None:
        return None
    action = " ".join(match.group(1).split())
    return action or None


def response_text(tokenizer: Any, ids: list[int]) -> str:
    """The text an agent reads a sampled response as (and parses its action from): the decoded ids
    without a final end-of-turn token (the tokenizer's EOS, which the chat template renders itself).

    The one definition, shared by :meth:`LLMAgent.act` and the chat export
    (:mod:`agentrl.store.chat`), so that exported completions are exactly what the agent read. The
    text is the tokens' text verbatim: no clean-up of spaces before punctuation, which some
    tokenizers do by default and which would make it differ from what the model wrote.
    """
    eos = tokenizer.eos_token_id
    content = ids[:-1] if ids and eos is not None and ids[-1] == eos else ids
    return tokenizer.decode(content, clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class PromptFormat:
    """How an environment is presented to a model: the full system prompt and the action listing."""

    system: str  # the system prompt
    list_admissible: bool = True  # append the admissible actions (when the env gives them) to each observation
    max_admissible: int = 60  # list at most this many admissible actions

    @classmethod
    def for_env(cls, spec: PromptSpec) -> PromptFormat:
        """The format of an env's :class:`~agentrl.core.PromptSpec`: its description plus our action rule."""
        return cls(f"{spec.description} {ACTION_RULE}", spec.list_admissible, spec.max_admissible)


DEFAULT_FORMAT = PromptFormat.for_env(TextEnv.prompt)


def prompt_format_for(env_id: str) -> PromptFormat:
    """The prompt format of a registered env id or alias (the env class's ``prompt``); the default
    format for an id that is not registered or an entry point that is not a class."""
    from agentrl.registry import UnknownEnvError, env_class

    try:
        cls = env_class(env_id)
    except UnknownEnvError:
        return DEFAULT_FORMAT
    spec = getattr(cls, "prompt", None)
    return PromptFormat.for_env(spec) if isinstance(spec, PromptSpec) else DEFAULT_FORMAT


@dataclass
class Turn:
    user: str  # the user message of this turn (observation, and the task on the first turn)
    assistant: str | None = None  # the decoded completion text, once sampled


@dataclass
class AgentEpisode:
    """Per-episode agent state (the agent object itself holds none)."""

    instruction: str | None
    turns: list[Turn]
    layout: Layout
    layout_reason: str | None = None
    transcripts: list[Transcript] = field(default_factory=list)  # the token side, appended as the episode goes
    prompt_text: str = ""  # concat: the template text the open transcript stands for
    pending_prompt: list[int] | None = None  # per-step: the prompt ids given to the policy this turn
    last_parse_ok: bool = True
    admissible: list[str] | None = None  # the admissible actions shown in the current prompt
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def turn(self) -> int:
        """Index of the current turn (the one the next completion answers)."""
        return len(self.turns) - 1

    @property
    def open_transcript(self) -> Transcript | None:
        """Concat: the transcript that is the policy's next prompt; ``None`` in the per-step layout."""
        return self.transcripts[-1] if self.layout == "concat" and self.transcripts else None


class LLMAgent:
    """Builds prompts with the tokenizer's chat template and parses actions from completions.

    ``layout``: ``"concat"`` (default; full history, exact prefix property) or ``"per_step"``
    (each prompt rendered afresh over the last ``history`` turns, as in verl-agent). ``history`` is
    only used by the per-step layout (``None`` = all turns). ``admissible_only`` restricts decoding to
    the admissible actions listed in the prompt (see :meth:`choices`).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        *,
        layout: Layout = "concat",
        history: int | None = None,
        admissible_only: bool = False,
    ):
        if layout not in ("concat", "per_step"):
            raise ValueError(f"unknown layout {layout!r}; choose concat or per_step")
        if tokenizer is not None and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template")
        self.tokenizer = tokenizer
        self.format = prompt_format
        self.history = history
        self.admissible_only = admissible_only
        if admissible_only and (tokenizer is None or not prompt_format.list_admissible):
            raise ValueError("admissible_only needs a tokenizer and a prompt format that lists the admissible actions")
        # Without a tokenizer the agent only builds chat messages (for text-only chat endpoints).
        self.rewrites_history = template_rewrites_history(tokenizer) if tokenizer is not None else False
        self.layout: Layout = "per_step" if self.rewrites_history or tokenizer is None else layout
        self.layout_reason = None
        if self.layout != layout:
            self.layout_reason = "chat template rewrites earlier turns" if tokenizer is not None else "no tokenizer"
        eos = tokenizer.eos_token_id if tokenizer is not None else None
        self.eos_ids = {int(eos)} if eos is not None else set()

    # -- episode lifecycle ----------------------------------------------------------------------

    def start(self, obs: str, info: dict[str, Any], *, preamble: str | None = None) -> AgentEpisode:
        """Begin an episode from the env's first observation and info (``preamble`` opens the first
        user message, e.g. a reflective agent's memory)."""
        instruction = info.get("instruction")
        first = self._user_text(obs, info, instruction=instruction)
        if preamble:
            first = f"{preamble}\n\n{first}"
        episode = AgentEpisode(instruction, [Turn(first)], self.layout, self.layout_reason, admissible=self._shown(info))
        if episode.layout == "concat":
            self._open_transcript(episode)
        return episode

    def prompt_ids(self, episode: AgentEpisode) -> list[int]:
        """The exact ids to give the policy for the current turn."""
        transcript = episode.open_transcript
        if transcript is not None:
            return list(transcript.ids)
        if self.tokenizer is None:
            raise ValueError("this agent has no tokenizer: it can only build chat messages")
        text = self.tokenizer.apply_chat_template(self.messages(episode), tokenize=False, add_generation_prompt=True)
        episode.pending_prompt = self.encode(text)
        return list(episode.pending_prompt)

    def messages(self, episode: AgentEpisode) -> list[dict[str, str]]:
        """The chat messages of the current turn: system prompt and the last ``history`` turns."""
        window = episode.turns if self.history is None else episode.turns[-(self.history + 1) :]
        instruction = episode.instruction if window[0] is not episode.turns[0] else None
        return self._messages(window, instruction)

    def choices(self, episode: AgentEpisode) -> list[list[int]] | None:
        """With ``admissible_only``: the token ids of ``<action>A</action>`` for each admissible action shown.

        ``None`` (decode freely) without ``admissible_only`` or when the env listed no actions. The ids
        are those the tokenizer gives the whole string, as in a demonstration, so a constrained sample
        and an expert's turn are the same ids for the same action.
        """
        if not self.admissible_only or not episode.admissible:
            return None
        return [self.encode(f"<action>{action}</action>") for action in episode.admissible]

    def act(
        self,
        episode: AgentEpisode,
        completion: Completion,
        *,
        version: int | None = None,
        sampling: SamplingParams | None = None,
    ) -> str:
        """Record a completion (its ids go into the transcript verbatim) and return the env action.

        The action is ``""`` when the completion has no complete ``<action>`` tag. A completion
        without token ids (a text-only chat endpoint) is recorded as text only.
        """
        ids = completion.token_ids
        text = completion.text
        if ids is not None and self.tokenizer is not None:
            text = response_text(self.tokenizer, ids)
            self._record(episode, completion, version, sampling)
        text = text or ""
        episode.turns[-1].assistant = text
        action = parse_action(text)
        episode.last_parse_ok = action is not None
        episode.meta["_last_response_ids"] = ids
        return action or ""

    def observe(self, episode: AgentEpisode, obs: str, info: dict[str, Any]) -> None:
        """Add the env's answer as the next user turn; in concat, extend the transcript by its delta only."""
        user = self._user_text(obs, info, reminder=not episode.last_parse_ok)
        response_ids = episode.meta.pop("_last_response_ids", None)
        episode.turns.append(Turn(user))
        episode.admissible = self._shown(info)
        transcript = episode.open_transcript
        if transcript is None:
            return
        new_text = self._render(episode.turns)
        content = episode.turns[-2].assistant or ""
        delta = self._delta(episode.prompt_text, content, response_ids, new_text)
        if delta is None or response_ids is None:
            episode.layout = "per_step"
            episode.layout_reason = "chat template changed an earlier turn" if response_ids is not None else "no token ids"
            return
        transcript.append_prompt(self.encode(delta), episode.turn)
        episode.prompt_text = new_text

    # -- helpers --------------------------------------------------------------------------------

    def _open_transcript(self, episode: AgentEpisode) -> None:
        episode.prompt_text = self._render(episode.turns)
        transcript = Transcript()
        transcript.append_prompt(self.encode(episode.prompt_text), episode.turn)
        episode.transcripts.append(transcript)

    def _record(self, episode: AgentEpisode, completion: Completion, version: int | None, sampling: SamplingParams | None) -> None:
        """Append the sampled ids to the open transcript (concat) or to a new one for this turn (per-step)."""
        transcript = episode.open_transcript
        if transcript is None:
            if episode.pending_prompt is None:
                raise ValueError("act() before prompt_ids(): the per-step layout records the prompt it gave the policy")
            transcript = Transcript()
            transcript.append_prompt(episode.pending_prompt, episode.turn)
            episode.transcripts.append(transcript)
            episode.pending_prompt = None
        settings = None if sampling is None else sampling_settings(sampling)
        if transcript.sampling is None:
            transcript.sampling = settings
        elif settings is not None and settings != transcript.sampling:
            raise ValueError(f"one transcript sampled with two settings: {transcript.sampling} then {settings}")
        assert completion.token_ids is not None
        transcript.append_sampled(
            completion.token_ids, episode.turn, logprobs=completion.logprobs, entropies=completion.entropies,
            loss_mask=completion.loss_mask, version=version, allowed=completion.allowed,
        )  # fmt: skip

    def _delta(self, prev_text: str, content: str, response_ids: list[int] | None, new_text: str) -> str | None:
        """Template text after the sampled response, or ``None`` if the template rewrote history."""
        head = prev_text + content
        if not new_text.startswith(head):
            return None
        rest = new_text[len(head) :]
        if response_ids and response_ids[-1] in self.eos_ids:
            eos_text = self.tokenizer.decode([response_ids[-1]])
            if not rest.startswith(eos_text):
                return None  # the template does not end the turn with the token the model sampled
            rest = rest[len(eos_text) :]
        return rest

    def _user_text(self, obs: str, info: dict[str, Any], *, instruction: str | None = None, reminder: bool = False) -> str:
        parts = []
        if instruction:
            parts.append(f"Task: {instruction}")
        parts.append(f"{FORMAT_REMINDER}\n{obs}" if reminder else obs)
        shown = self._shown(info)
        if shown:
            parts.append("Admissible actions: " + ", ".join(shown))
        return "\n\n".join(p for p in parts if p)

    def _shown(self, info: dict[str, Any]) -> list[str] | None:
        """The admissible actions the prompt lists (at most ``max_admissible``), or ``None``."""
        admissible = info.get("admissible_actions")
        if not (self.format.list_admissible and admissible):
            return None
        return list(admissible)[: self.format.max_admissible]

    def _messages(self, turns: list[Turn], instruction: str | None = None) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.format.system}]
        for index, turn in enumerate(turns):
            user = turn.user if not (index == 0 and instruction) else f"Task: {instruction}\n\n{turn.user}"
            messages.append({"role": "user", "content": user})
            if turn.assistant is not None:
                messages.append({"role": "assistant", "content": turn.assistant})
        return messages

    def _render(self, turns: list[Turn]) -> str:
        return self.tokenizer.apply_chat_template(self._messages(turns), tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as this agent tokenises prompt text (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def template_rewrites_history(tokenizer: Any) -> bool:
    """True when rendering a longer conversation changes the text of earlier turns (probe)."""
    system = {"role": "system", "content": "s"}
    first = {"role": "user", "content": "u1"}
    reply = {"role": "assistant", "content": "<think>r</think>\n<action>a</action>"}
    second = {"role": "user", "content": "u2"}
    before = tokenizer.apply_chat_template([system, first], tokenize=False, add_generation_prompt=True)
    after = tokenizer.apply_chat_template([system, first, reply, second], tokenize=False, add_generation_prompt=True)
    return not after.startswith(before + reply["content"])
