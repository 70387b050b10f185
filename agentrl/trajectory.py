"""Plain records of what happened in an episode: the one currency between rollout, store and learner.

These are dataclasses with no behaviour beyond appending and summaries, so every part of agentrl
(scripted evaluation, LLM rollouts, the SQL store, trainers) can produce or consume them without
importing each other.

Two sides of an episode:

* :class:`Step` is the text side of one agent turn: the observation acted on, the action sent, what
  the env answered, timings. It holds no token ids.
* :class:`Transcript` is the token side: one id sequence exactly as the policy read and produced it,
  with per-token fields (turn, sampled or not, loss mask, behaviour log-prob and entropy, policy
  version) and room for per-token extras (the allowed-token set of constrained decoding). The agent
  appends to it as it samples; the store saves it as it is; the learner packs it directly; exports
  are views of it. An episode in the *concat* layout has one transcript (each turn's prompt is the
  sequence so far); a chat template that rewrites earlier turns, or a windowed history (*per-step*
  layout), gives one transcript per window. Memory and storage are linear in the number of turns.

Token fields are absent (``transcripts == []``) for agents that do not use a model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Extras key of constrained decoding: ``extras["allowed"][position]`` = the token ids that were
#: allowed when the token at ``position`` was sampled (sorted).
ALLOWED = "allowed"


def jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """An env ``info`` dict as JSON data (what a step records): other values become their ``str``."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, str | int | float | bool | type(None)):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = [v if isinstance(v, str | int | float | bool | type(None)) else str(v) for v in value]
        elif isinstance(value, dict):
            out[key] = jsonable(value)
        else:
            out[key] = str(value)
    return out


@dataclass
class Transcript:
    """One token sequence as a policy read and wrote it; every per-token list has ``len(ids)`` entries.

    * ``turns[i]``: the agent turn token ``i`` belongs to (the prompt text before turn ``t``'s
      response and that response are both turn ``t``);
    * ``sampled[i]``: 1 when the policy sampled it, 0 for prompt text (template, observations);
    * ``loss_mask[i]``: 1 when the learner trains on it (sampled, and the policy had a choice);
    * ``logprobs[i]``: behaviour log-probability of a sampled token under the distribution it was
      drawn from (0.0 on prompt tokens); ``None`` for the whole transcript when the producer had
      none (an expert demonstration);
    * ``entropies[i]``: entropy of that distribution; ``None`` when it was not recorded;
    * ``versions[i]``: the policy version that sampled it (-1 on prompt tokens, or unknown);
    * ``extras``: per-token extras, ``name -> {position: value}`` (JSON data), e.g. :data:`ALLOWED`;
    * ``sampling``: the sampling settings the sampled tokens were drawn with (``temperature``,
      ``top_p``, ``top_k``), so that a learner recomputes the same distribution.
    """

    ids: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    entropies: list[float] | None = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    extras: dict[str, dict[int, Any]] = field(default_factory=dict)
    sampling: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def append_prompt(self, ids: Iterable[int], turn: int) -> None:
        """Append text the policy reads (template and env text): not sampled, never trained on."""
        ids = [int(i) for i in ids]
        n = len(ids)
        self.ids += ids
        self.turns += [turn] * n
        self.sampled += [0] * n
        self.loss_mask += [0] * n
        if self.logprobs is not None:
            self.logprobs += [0.0] * n
        if self.entropies is not None:
            self.entropies += [0.0] * n
        self.versions += [-1] * n

    def append_sampled(
        self,
        ids: Sequence[int],
        turn: int,
        *,
        logprobs: Sequence[float] | None,
        entropies: Sequence[float] | None = None,
        loss_mask: Sequence[int] | None = None,
        version: int | None = None,
        allowed: Sequence[Sequence[int] | None] | None = None,
    ) -> None:
        """Append ids the policy produced, verbatim, with their behaviour statistics.

        Missing ``logprobs`` (or ``entropies``) drop that field for the whole transcript: a learner
        must then recompute them rather than train on zeros. ``allowed[j]`` is the allowed-token set
        of constrained decoding at response token ``j`` (``None`` where decoding was free).
        """
        n = len(ids)
        for name, values in (("logprobs", logprobs), ("entropies", entropies), ("loss_mask", loss_mask), ("allowed", allowed)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} sampled ids")
        start = len(self.ids)
        self.ids += [int(i) for i in ids]
        self.turns += [turn] * n
        self.sampled += [1] * n
        self.loss_mask += [int(m) for m in loss_mask] if loss_mask is not None else [1] * n
        if logprobs is None and n:
            self.logprobs = None
        elif self.logprobs is not None and logprobs is not None:
            self.logprobs += [float(v) for v in logprobs]
        if entropies is None and n:
            self.entropies = None
        elif self.entropies is not None and entropies is not None:
            self.entropies += [float(v) for v in entropies]
        self.versions += [-1 if version is None else int(version)] * n
        if allowed is not None:
            sets = self.extras.setdefault(ALLOWED, {})
            for j, ids_allowed in enumerate(allowed):
                if ids_allowed is not None:
                    sets[start + j] = sorted(int(i) for i in ids_allowed)

    def spans(self) -> dict[int, tuple[int, int, int]]:
        """``turn -> (first, response_start, end)``: the turn's tokens are ``ids[first:end]``, its
        response (the sampled ids) ``ids[response_start:end]``; turns without a response are left out."""
        out: dict[int, tuple[int, int, int]] = {}
        first: dict[int, int] = {}
        for i, (turn, sampled) in enumerate(zip(self.turns, self.sampled, strict=True)):
            first.setdefault(turn, i)
            if sampled:
                start = out[turn][1] if turn in out else i
                out[turn] = (first[turn], start, i + 1)
        return out

    def check(self) -> None:
        """Raise ``ValueError`` unless every per-token field has one entry per id."""
        n = len(self.ids)
        for name in ("turns", "sampled", "loss_mask", "logprobs", "entropies", "versions"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"transcript: {len(values)} {name} for {n} ids")
        for name, values in self.extras.items():
            if any(not 0 <= int(p) < n for p in values):
                raise ValueError(f"transcript: extras[{name!r}] names a position outside the {n} ids")


@dataclass
class TurnTokens:
    """A view of one turn in its transcript: what the policy read (``prompt_ids``) and sampled."""

    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float] | None
    entropies: list[float] | None
    transcript: int  # index of the transcript in ``episode.transcripts``


@dataclass
class Step:
    """One agent turn: the observation acted on, the action taken, and what the env answered."""

    observation: str  # the observation the agent saw before acting
    action: str  # the action text sent to env.step
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # env info returned by this step
    env_seconds: float = 0.0  # wall time of env.step
    generation_seconds: float = 0.0  # wall time the policy took to produce the action
    policy_version: int | None = None  # weights version that produced this turn (model agents)


@dataclass
class Episode:
    """A whole episode on one task, in turn order."""

    env_id: str
    task_id: str
    split: str | None = None
    seed: int | None = None
    group_id: str | None = None  # episodes of the same task sampled together (GRPO groups)
    agent: str = ""  # agent or model name
    policy_version: int | None = None
    instruction: str | None = None
    first_observation: str = ""
    steps: list[Step] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)  # the token side (model agents)
    won: bool = False
    progress: float = 0.0
    error: str | None = None  # set when the episode failed for a reason outside the task
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def episode_return(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def turns(self) -> int:
        return len(self.steps)

    @property
    def truncated(self) -> bool:
        return bool(self.steps) and self.steps[-1].truncated

    @property
    def invalid_actions(self) -> int:
        return sum(bool(s.info.get("invalid_action")) for s in self.steps)

    @property
    def tokens_generated(self) -> int:
        return sum(sum(t.sampled) for t in self.transcripts)

    def turn_tokens(self) -> dict[int, TurnTokens]:
        """``turn -> TurnTokens`` for every turn with sampled ids (a view of the transcripts)."""
        out: dict[int, TurnTokens] = {}
        for index, transcript in enumerate(self.transcripts):
            for turn, (_, start, end) in transcript.spans().items():
                out[turn] = TurnTokens(
                    prompt_ids=transcript.ids[:start],
                    response_ids=transcript.ids[start:end],
                    loss_mask=transcript.loss_mask[start:end],
                    logprobs=None if transcript.logprobs is None else transcript.logprobs[start:end],
                    entropies=None if transcript.entropies is None else transcript.entropies[start:end],
                    transcript=index,
                )
        return out
