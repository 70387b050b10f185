"""The environment contract: every agentrl environment is a :class:`TextEnv`.

A ``TextEnv`` is a ``gymnasium.Env[str, str]`` for multi-turn text tasks. The base class owns the
bookkeeping that every environment must get exactly right (turn counting, the ``max_turns`` budget,
the required ``info`` keys, task selection from a seeded RNG, refusing to step a finished episode),
so that a concrete environment only implements what is specific to its benchmark:

* ``task_ids(split)``: the fixed, ordered task panel of a split;
* ``_reset_task(task_id) -> (obs, info)``: start an episode on one task;
* ``_step(action) -> (obs, reward, terminated, info)``: one turn;
* optionally ``expert_action()`` and ``_close()``.

Promises made to callers (checked by :func:`agentrl.check_env`):

* ``reset(seed=s, options={"task": t})`` returns the same first observation every time; without a
  task, the env's own ``np_random`` picks one from its split, so the same seed picks the same task.
* ``info`` always carries ``task_id``, ``turn``, ``won``, ``progress`` (in [0, 1], 1.0 when won),
  ``invalid_action`` and ``admissible_actions`` (a list, or ``None`` when the env does not compute
  them); the reset ``info`` also carries ``instruction`` when the task has a goal text.
* ``step`` accepts any string. A bad action yields an observation that says why and
  ``invalid_action=True``; it never raises. ``step`` after the episode ended raises
  :class:`EpisodeOver`.
* ``truncated`` is True exactly when the turn budget ran out before the task ended.
* ``close()`` frees everything and may be called any number of times.
"""

from __future__ import annotations

import abc
import string
import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces

#: Keys present in every ``info`` dict returned by ``reset`` and ``step``.
REQUIRED_INFO_KEYS: tuple[str, ...] = (
    "task_id",
    "turn",
    "won",
    "progress",
    "invalid_action",
    "admissible_actions",
)

#: Longest action text handed to an engine; longer input is cut (and flagged) before it gets there.
MAX_ACTION_CHARS = 1_000


class EpisodeOver(RuntimeError):
    """``step`` was called on an episode that already terminated or was truncated; call ``reset``."""


class TextSpace(spaces.Text):
    """A Text space that contains any unicode string up to ``max_length`` characters.

    Gymnasium's ``Text`` checks every character against a fixed charset (alphanumeric by default),
    which rejects real prose. The charset here is only used to ``sample``.
    """

    def __init__(self, max_length: int = 1 << 20, seed: int | None = None):
        charset = string.ascii_letters + string.digits + string.punctuation + " éßø→中"
        super().__init__(max_length=max_length, min_length=0, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


def clean_action(action: Any, max_chars: int = MAX_ACTION_CHARS) -> tuple[str, str | None]:
    """Make any input safe to hand to a text engine.

    Returns ``(text, problem)``: ``text`` is a single line without control characters, squeezed
    whitespace, at most ``max_chars`` long; ``problem`` is ``None`` or a short reason the action is
    unusable as given (not a string, empty, too long). Envs decide what a problem means for them;
    most treat it as an invalid action.
    """
    if not isinstance(action, str):
        return "", f"action must be a string, got {type(action).__name__}"
    too_long = len(action) > max_chars
    text = action[: max_chars * 2]
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    text = " ".join(text.split())[:max_chars]
    if too_long:
        return text, f"action is longer than {max_chars} characters"
    if not text:
        return "", "empty action"
    return text, None


@dataclass(frozen=True)
class PromptSpec:
    """How an environment asks to be presented to a language model: the env author's one place for it.

    An agent builds its system prompt from ``description`` plus its own action format, and shows the
    admissible actions (at most ``max_admissible``) with each observation when ``list_admissible``.
    """

    description: str  # what the agent is and what it must do, in one or two sentences
    list_admissible: bool = True  # show the admissible actions (when the env gives them) with each observation
    max_admissible: int = 60  # show at most this many admissible actions


class TextEnv(gym.Env[str, str], abc.ABC):
    """Base class of every agentrl environment (see the module docstring for the contract)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    #: Splits this env knows; the first is the default.
    splits: ClassVar[tuple[str, ...]] = ("train", "valid", "test")
    #: How a language-model agent presents this env (system prompt, admissible-action listing).
    prompt: ClassVar[PromptSpec] = PromptSpec("You are an agent acting in a text environment.")

    def __init__(self, *, split: str | None = None, max_turns: int = 50, render_mode: str | None = None):
        split = split or self.splits[0]
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(self.splits)}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.split = split
        self.max_turns = int(max_turns)
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.task_id: str | None = None
        self.turn = 0
        self._done = True
        self._last_obs = ""

    # -- what a concrete env implements -------------------------------------------------------

    @abc.abstractmethod
    def task_ids(self, split: str | None = None) -> list[str]:
        """The fixed, ordered task panel of ``split`` (default: this env's split)."""

    @abc.abstractmethod
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        """Start an episode on ``task_id``; raise ``ValueError`` naming valid choices for an unknown id."""

    @abc.abstractmethod
    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """One turn: ``(obs, reward, terminated, info)``. Never raises for a bad ``action``."""

    def expert_action(self) -> str | None:
        """An expert's next action, or ``None`` where the benchmark has no expert."""
        return None

    def task_type(self, task_id: str) -> str | None:
        """The kind of task ``task_id`` is (ALFWorld's six task types, ScienceWorld's 30 tasks), or ``None``.

        Evaluations report results per kind and spread a shortened panel over the kinds. Must not start
        an episode (it is asked about whole panels).
        """
        return None

    def _close(self) -> None:
        """Free engine resources. Called at most once per ``close``; must tolerate a half-built env."""

    # -- the contract, implemented once ---------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        task_id = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset option(s): {', '.join(sorted(options))}; only 'task' is accepted")
        if task_id is None:
            panel = self.task_ids(self.split)
            if not panel:
                raise RuntimeError(f"{type(self).__name__} has no tasks in split {self.split!r}")
            task_id = panel[int(self.np_random.integers(len(panel)))]
        task_id = str(task_id)
        obs, info = self._reset_task(task_id)
        self.task_id = task_id
        self.turn = 0
        self._done = False
        self._last_obs = obs
        return obs, self._complete_info(info)

    def step(self, action: str):
        if self._done:
            raise EpisodeOver(
                "this episode is over (terminated, truncated or never reset); call reset() first"
            )
        self.turn += 1
        obs, reward, terminated, info = self._step(action)
        truncated = (not terminated) and self.turn >= self.max_turns
        self._done = bool(terminated or truncated)
        self._last_obs = obs
        return obs, float(reward), bool(terminated), bool(truncated), self._complete_info(info)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._done = True
        self._close()

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_obs
        return None

    @property
    def episode_over(self) -> bool:
        """True between the end of an episode and the next ``reset``."""
        return self._done

    def _complete_info(self, info: dict[str, Any]) -> dict[str, Any]:
        info.setdefault("won", False)
        info.setdefault("progress", 1.0 if info["won"] else 0.0)
        info.setdefault("invalid_action", False)
        info.setdefault("admissible_actions", None)
        info["task_id"] = self.task_id
        info["turn"] = self.turn
        info["won"] = bool(info["won"])
        info["progress"] = float(info["progress"])
        return info
