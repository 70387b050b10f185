"""Chat-format SFT rows: every sampled turn as the policy read and wrote it, decoded with its tokenizer.

A row is one agent turn that has sampled ids (a model's completion, or an expert demonstration
recorded as tokens). Its text is decoded from the transcript, never rebuilt from the parsed action:

* ``prompt``: the turn's prompt ids decoded, which is the chat template's rendering the policy was
  given (system prompt, history, generation prompt; special tokens kept as text);
* ``completion``: the sampled ids decoded: reasoning, ``<action>`` tags and, when the model sampled
  it, the end-of-turn token (``ends_turn``). Without it, the completion is exactly the text the
  agent parsed its action from (:func:`agentrl.agents.llm.response_text`);
* ``messages``: the same turn as system/user/assistant messages for trainers that apply their own
  template, or ``None`` when they cannot be recovered exactly (see :func:`prompt_messages`);
* ``prompt_ids`` / ``completion_ids``: the exact ids, and ``retokenizes``: whether tokenising
  ``prompt + completion`` again gives these ids. Text cannot always carry ids: a sampled turn may
  spell a word with tokens the tokenizer would merge, and BPE merges can cross the prompt/completion
  boundary. Train on the token-level export (``level="transcript"``) where the ids must be exact.

Decoding and template rendering use the tokenizer the policy used; nothing here loads one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import TemplateError

from agentrl.agents.llm import response_text
from agentrl.trajectory import Episode

#: Stand-ins for the unknown message contents when the template is rendered as a skeleton; private
#: use code points, which no template rewrites.
_SLOT = "\ue000agentrl-slot-{}\ue001"


def sft_rows(episode_id: int, episode: Episode, tokenizer: Any) -> Iterator[dict[str, Any]]:
    """One row per turn with sampled ids, in transcript order (see the module docstring)."""
    eos = tokenizer.eos_token_id
    answered: dict[int, str] = {}  # turn -> the assistant text the agent read (for later turns' messages)
    per_step, window = episode.meta.get("layout") == "per_step", None
    for position, transcript in enumerate(episode.transcripts):
        for turn, (_, start, end) in sorted(transcript.spans().items()):
            prompt_ids, completion_ids = transcript.ids[:start], transcript.ids[start:end]
            prompt = tokenizer.decode(prompt_ids, clean_up_tokenization_spaces=False)
            completion = tokenizer.decode(completion_ids, clean_up_tokenization_spaces=False)
            content = response_text(tokenizer, completion_ids)
            earlier = [answered[t] for t in sorted(answered) if t < turn]
            windows = _window_order(window, len(earlier)) if per_step else None
            messages = prompt_messages(tokenizer, prompt, earlier, windows=windows)
            if messages is not None:
                window = (len(messages) - 2) // 2  # the earlier turns this prompt showed
                messages.append({"role": "assistant", "content": content})
            answered[turn] = content
            step = episode.steps[turn] if turn < len(episode.steps) else None
            retokenized = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
            yield {
                "episode_id": episode_id,
                "env_id": episode.env_id,
                "task_id": episode.task_id,
                "split": episode.split,
                "seed": episode.seed,
                "group_id": episode.group_id,
                "agent": episode.agent,
                "won": episode.won,
                "episode_return": episode.episode_return,
                "turn": turn,
                "position": position,
                "policy_version": None if step is None else step.policy_version,
                "reward": None if step is None else step.reward,
                "invalid_action": None if step is None else bool(step.info.get("invalid_action")),
                "finish_reason": None if step is None else step.info.get("finish_reason"),
                "prompt": prompt,
                "completion": completion,
                "ends_turn": bool(completion_ids) and eos is not None and completion_ids[-1] == eos,
                "messages": messages,
                "prompt_ids": prompt_ids,
                "completion_ids": completion_ids,
                "retokenizes": list(retokenized) == prompt_ids + completion_ids,
            }


def prompt_messages(
    tokenizer: Any, prompt: str, earlier: list[str], *, windows: Iterable[int] | None = None
) -> list[dict[str, str]] | None:
    """Messages ``[system, user, (assistant, user)*]`` whose rendering with the generation prompt is ``prompt``.

    ``earlier`` are the assistant texts of the turns before, oldest first (known exactly: decoded
    from the transcript). The template is rendered once as a skeleton, with stand-ins for the
    unknown system and user contents, and ``prompt`` is cut at the skeleton's literal pieces.
    ``windows``: how many of the earlier turns the prompt may show, tried in order (the per-step
    layout shows a window of the last turns); default: all of them (the concat layout).

    A reading is returned only when it is the one way to cut ``prompt`` and rendering it gives
    ``prompt`` exactly (so it is what the policy saw, e.g. trimmed where the template trims);
    otherwise ``None``, never a guess: a template that transforms contents (the stand-ins do not
    survive it), or env text that imitates the template's turn markers (an observation that prints
    a fake conversation, which cuts two ways), gives ``None``.
    """
    for window in (len(earlier),) if windows is None else windows:
        if 0 <= window <= len(earlier):
            messages = _cut(tokenizer, prompt, earlier[len(earlier) - window :])
            if messages is not None:
                return messages
    return None


def _window_order(previous: int | None, turns: int) -> list[int]:
    """Windows to try for a per-step turn with ``turns`` earlier turns: the last turn's window grown by
    one, then kept (an agent's history window grows to its cap, then slides), then every other one."""
    likely = [] if previous is None else [previous + 1, previous]
    return likely + [w for w in range(turns, -1, -1) if w not in likely]


def _cut(tokenizer: Any, prompt: str, assistants: list[str]) -> list[dict[str, str]] | None:
    roles = ["system", "user"]
    for _ in assistants:
        roles += ["assistant", "user"]
    answers = iter(assistants)
    skeleton = [{"role": role, "content": next(answers) if role == "assistant" else _SLOT.format(i)}
                for i, role in enumerate(roles)]  # fmt: skip
    slots = [m["content"] for m in skeleton if m["role"] != "assistant"]
    try:
        rendered = tokenizer.apply_chat_template(skeleton, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        return None
    pieces = []  # the literal text before each slot, and (``tail``) after the last one
    rest = rendered
    for slot in slots:
        head, found, rest = rest.partition(slot)
        if not found or (pieces and not head) or slot in rest:  # a slot dropped or repeated, or two unknowns adjacent
            return None
        pieces.append(head)
    head, tail = pieces[0], rest
    if not (prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail)):
        return None
    start, end = len(head), len(prompt) - len(tail)
    # Where each separator starts, read from the left (earliest) and from the right (latest): every
    # reading lies between the two, so when they agree the reading is the only one.
    earliest, pos = [], start
    for piece in pieces[1:]:
        at = prompt.find(piece, pos, end)
        if at < 0:
            return None
        earliest.append(at)
        pos = at + len(piece)
    latest, limit = [], end
    for piece in reversed(pieces[1:]):
        at = prompt.rfind(piece, start, limit)
        latest.append(at)
        limit = at
    if earliest != latest[::-1]:
        return None
    bounds = [start] + [at + len(piece) for at, piece in zip(earliest, pieces[1:], strict=True)]
    contents = [prompt[a:b] for a, b in zip(bounds, earliest + [end], strict=True)]
    unknown = iter(contents)
    messages = [{"role": m["role"], "content": m["content"] if m["role"] == "assistant" else next(unknown)} for m in skeleton]
    try:
        again = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        return None
    return messages if again == prompt else None
