"""Every prompt of the reflective agent, in one place: the actor's memory block and the reflector's input.

Two models talk through text (Retroformer, arXiv 2308.02151, Sec. 4.1; Reflexion, arXiv 2303.11366):

* the **actor** plays the task with the env's usual prompt (:mod:`agentrl.agents.llm`), and on a
  retry its first user message starts with :func:`memory_block`: the last reflections written about
  its earlier failed trials of the same task;
* the **reflector** (the retrospective LM) reads :func:`trial_summary` of a failed trial (task,
  actions, observations, outcome) under :data:`REFLECTOR_SYSTEM` and answers with a reflection:
  what went wrong and a plan for the next trial.

The wording follows Reflexion's self-reflection prompt (which Retroformer reuses), written for any
text environment rather than for one benchmark. Changing any text here changes what the models see:
keep it stable within a run and record it (``PROMPTS_VERSION``) with the results.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from agentrl.trajectory import Episode

#: Bump when any text below changes; stored in every trial and reflection episode's ``meta``.
PROMPTS_VERSION = 1

REFLECTOR_SYSTEM = (
    "You will be given the record of an earlier attempt at a task in a text environment. The attempt "
    "failed. Do not summarize the environment. Think about the strategy and the path of actions that "
    "was taken, find where it went wrong, and write a short new plan that avoids that mistake, naming "
    "the specific commands that should have been used. For example, if A and B were tried but C was "
    "forgotten, plan to do C with the environment's own commands. The plan will be given to you when "
    "you try the same task again. Answer in at most three sentences."
)

MEMORY_HEADER = "Your memory of earlier attempts at this task (use it to avoid the same mistakes):"

#: How an observation is shown in a trial summary: the last characters of a long one are kept.
MAX_OBSERVATION_CHARS = 400


def memory_block(reflections: Sequence[str]) -> str:
    """The text put before the actor's first user message; ``""`` when there is nothing to remember.

    Reflections are numbered oldest first, as Reflexion shows them ("Attempt 1: ...").
    """
    if not reflections:
        return ""
    lines = [MEMORY_HEADER]
    lines += [f"Attempt {index}: {text.strip()}" for index, text in enumerate(reflections, start=1)]
    return "\n".join(lines)


def trial_summary(trial: Episode, *, first_turn: int = 0, return_value: float | None = None) -> str:
    """The reflector's user message for a failed ``trial``: task, ``> action`` / observation lines, outcome.

    ``first_turn`` > 0 leaves out the earliest turns (the caller shortens a summary that would not
    fit the reflector's context) and says so. ``return_value`` defaults to the episode's return.
    """
    parts = []
    if trial.instruction:
        parts.append(f"Task: {trial.instruction}")
    if first_turn == 0:
        parts.append(_clip(trial.first_observation))
    else:
        parts.append(f"(the first {first_turn} turns are left out)")
    steps = trial.steps
    for index in range(first_turn, len(steps)):
        parts.append(f"> {steps[index].action or '(no command)'}")
        if index + 1 < len(steps):  # a step records the observation it acted on: the answer is the next one's
            parts.append(_clip(steps[index + 1].observation))
    outcome = "failed" if not trial.won else "succeeded"
    value = trial.episode_return if return_value is None else return_value
    why = " (turn budget ran out)" if trial.truncated else ""
    parts.append(
        f"Outcome: the attempt {outcome} after {trial.turns} turns{why}, "
        f"with return {value:g} and progress {trial.progress:.2f}."
    )
    parts.append("Reflection and new plan:")
    return "\n".join(p for p in parts if p)


def reflection_problem(text: str) -> str | None:
    """Why ``text`` cannot serve as a reflection, or ``None`` when it can.

    A usable reflection has at least three words with letters in them and no control characters
    besides newlines and tabs. Anything else (empty output, a lone token, punctuation, binary noise)
    is recorded with this reason and kept out of the actor's prompt.
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in stripped):
        return "control characters"
    words = [w for w in stripped.split() if any(ch.isalpha() for ch in w)]
    if len(words) < 3:
        return f"too short ({len(words)} words with letters, need 3)"
    return None


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_OBSERVATION_CHARS else "..." + text[-MAX_OBSERVATION_CHARS:]
