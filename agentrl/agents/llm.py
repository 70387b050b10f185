"""The LLM agent: prompts per environment, the action parser, and exact token bookkeeping.

The agent turns an episode into token ids for a policy and a sampled completion into an env action.
It never decodes and re-tokenises a sampled turn: in the **concat** layout each turn's prompt is

    prompt_ids[t + 1] = prompt_ids[t] + response_ids[t] + encode(delta[t + 1])

where ``delta`` is the text the chat template adds after the sampled response (the end of the
assistant turn if the model did not sample it, the new user message with the observation, the
generation prompt), tokenised once. So each prompt is a prefix of the next and one sequence per
episode carries every turn (loss mask 1 on sampled ids only).

Some chat templates rewrite earlier turns when rendered again (Qwen3 drops ``<think>`` blocks of
past assistant turns). Then the concat prefix would no longer be what the template means; the agent
detects it (once per tokenizer with a probe, and again every turn by a text prefix check) and
switches that episode to the **per-step** layout: each turn's prompt is the template rendered afresh
over a window of the last ``history`` turns, tokenised once, and recorded verbatim as the prompt the
policy saw. ``episode.meta["layout"]`` says which layout an episode has and why.

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
from typing import Any, Literal

Layout = Literal["concat", "per_step"]

ACTION_PATTERN = re.compile(r"<action>(.*?)</action>", re.DOTALL)
ACTION_STOP = "</action>"
FORMAT_REMINDER = "Your reply had no <action>...</action> command, so nothing happened."


def parse_action(text: str) -> str | None:
    """The command inside the first ``<action>...</action>`` of ``text``; ``None`` when there is none."""
    match = ACTION_PATTERN.search(text or "")
    if match is None:
        return None
    action = " ".join(match.group(1).split())
    return action or None


@dataclass(frozen=True)
class PromptFormat:
    """How an environment is presented to a model."""

    system: str  # the system prompt
    list_admissible: bool = True  # append the admissible actions (when the env gives them) to each observation
    max_admissible: int = 60  # list at most this many admissible actions


_ACTION_RULE = (
    "Reply with exactly one command inside <action>...</action>, for example <action>look</action>. "
    "You may think briefly before the action tag."
)

PROMPT_FORMATS: dict[str, PromptFormat] = {
    "textworld": PromptFormat(
        "You are playing a text adventure game. Reach the goal stated in the task by typing game commands. "
        + _ACTION_RULE
    ),
    "alfworld": PromptFormat(
        "You are a household robot in a simulated home. Complete the task by interacting with objects and "
        "receptacles. " + _ACTION_RULE
    ),
    "scienceworld": PromptFormat(
        "You are an agent in a simulated science laboratory and home. Complete the science task step by step. "
        + _ACTION_RULE,
        max_admissible=40,
    ),
    "webshop": PromptFormat(
        "You are shopping on a web store for the user's request. Use search[query] and click[button] commands. "
        + _ACTION_RULE
    ),
    "mle": PromptFormat(
        "You are a machine-learning engineer solving a task in a sandbox. " + _ACTION_RULE, list_admissible=False
    ),
}
DEFAULT_FORMAT = PromptFormat("You are an agent acting in a text environment. " + _ACTION_RULE)


def prompt_format_for(env_id: str) -> PromptFormat:
    """The prompt format of an env id or alias (``agentrl/TextWorld-v0``, ``textworld``)."""
    key = env_id.lower().split("/")[-1].split("-v")[0]
    return PROMPT_FORMATS.get(key, DEFAULT_FORMAT)


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
    prompt_ids: list[int] | None = None  # concat: the running sequence the policy sees next
    prompt_text: str = ""  # concat: the template text that prompt_ids stand for
    last_parse_ok: bool = True
    admissible: list[str] | None = None  # the admissible actions shown in the current prompt
    meta: dict[str, Any] = field(default_factory=dict)


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

    def start(self, obs: str, info: dict[str, Any]) -> AgentEpisode:
        """Begin an episode from the env's first observation and info."""
        instruction = info.get("instruction")
        first = self._user_text(obs, info, instruction=instruction)
        episode = AgentEpisode(instruction, [Turn(first)], self.layout, self.layout_reason, admissible=self._shown(info))
        if episode.layout == "concat":
            episode.prompt_text = self._render(episode.turns)
            episode.prompt_ids = self._encode(episode.prompt_text)
        return episode

    def prompt_ids(self, episode: AgentEpisode) -> list[int]:
        """The exact ids to give the policy for the current turn."""
        if episode.layout == "concat":
            assert episode.prompt_ids is not None
            return list(episode.prompt_ids)
        if self.tokenizer is None:
            raise ValueError("this agent has no tokenizer: it can only build chat messages")
        return self._encode(self.tokenizer.apply_chat_template(self.messages(episode), tokenize=False, add_generation_prompt=True))

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
        return [self._encode(f"<action>{action}</action>") for action in episode.admissible]

    def act(self, episode: AgentEpisode, response_ids: list[int] | None, text: str | None = None) -> str:
        """Record a sampled completion and return the env action (``""`` when unparseable)."""
        if response_ids is not None and self.tokenizer is not None:
            content_ids = response_ids[:-1] if response_ids and response_ids[-1] in self.eos_ids else response_ids
            text = self.tokenizer.decode(content_ids)
        text = text or ""
        episode.turns[-1].assistant = text
        action = parse_action(text)
        episode.last_parse_ok = action is not None
        episode.meta["_last_response_ids"] = response_ids
        return action or ""

    def observe(self, episode: AgentEpisode, obs: str, info: dict[str, Any]) -> None:
        """Add the env's answer as the next user turn and extend the prompt ids by its delta only."""
        user = self._user_text(obs, info, reminder=not episode.last_parse_ok)
        response_ids = episode.meta.pop("_last_response_ids", None)
        episode.turns.append(Turn(user))
        episode.admissible = self._shown(info)
        if episode.layout != "concat":
            return
        assert episode.prompt_ids is not None
        new_text = self._render(episode.turns)
        content = episode.turns[-2].assistant or ""
        delta = self._delta(episode.prompt_text, content, response_ids, new_text)
        if delta is None or response_ids is None:
            episode.layout = "per_step"
            episode.layout_reason = "chat template changed an earlier turn" if response_ids is not None else "no token ids"
            episode.prompt_ids = None
            return
        episode.prompt_ids = episode.prompt_ids + list(response_ids) + self._encode(delta)
        episode.prompt_text = new_text

    # -- helpers --------------------------------------------------------------------------------

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

    def _encode(self, text: str) -> list[int]:
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
