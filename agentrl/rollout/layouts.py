"""Training layouts built from recorded episodes, with the drift checks a learner relies on.

* :func:`concat_sequence`: one sequence per episode (the last turn's prompt + its response), loss
  mask 1 exactly on the sampled ids of every turn, behaviour logprobs/entropies aligned to it.
  Raises :class:`LayoutError` unless every turn's prompt is a prefix of the sequence and its sampled
  ids sit right after it: a learner never trains on ids that differ from what was seen and sampled.
* :func:`per_step_rows`: one row per turn (``prompt_ids + response_ids``), always valid.
* :func:`training_rows`: concat when the episode was built in that layout, per-step otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.trajectory import Episode


class LayoutError(ValueError):
    """An episode's token ids do not form the requested layout."""


@dataclass
class TrainingRow:
    """One training sequence: ``input_ids`` with a per-token ``loss_mask`` and aligned behaviour stats.

    ``logprobs[i]`` / ``entropies[i]`` belong to ``input_ids[i]`` (0.0 where ``loss_mask[i] == 0``);
    ``turns[i]`` is the turn index of a sampled token and -1 for prompt tokens.
    """

    input_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    entropies: list[float] | None
    turns: list[int]
    policy_versions: list[int | None]


def _token_steps(episode: Episode):
    steps = [s for s in episode.steps if s.response_ids is not None]
    if len(steps) != len(episode.steps):
        raise LayoutError(f"episode {episode.task_id}: some steps carry no token ids (a text-only chat policy)")
    return steps


def concat_sequence(episode: Episode) -> TrainingRow:
    """The concat layout of ``episode`` (see module docstring)."""
    if episode.meta.get("layout", "concat") != "concat":
        reason = episode.meta.get("layout_reason", "")
        raise LayoutError(f"episode {episode.task_id} was built per step ({reason}); use per_step_rows")
    steps = _token_steps(episode)
    if not steps:
        raise LayoutError(f"episode {episode.task_id} has no steps")
    with_entropy = all(s.entropies is not None for s in steps)
    ids: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    entropies: list[float] = []
    turns: list[int] = []
    for index, step in enumerate(steps):
        prompt = step.prompt_ids or []
        if prompt[: len(ids)] != ids:
            raise LayoutError(f"episode {episode.task_id}: turn {index} prompt does not extend the previous turns")
        delta = prompt[len(ids) :]
        ids += delta
        mask += [0] * len(delta)
        logprobs += [0.0] * len(delta)
        entropies += [0.0] * len(delta)
        turns += [-1] * len(delta)
        response = step.response_ids or []
        ids += response
        mask += list(step.loss_mask or [1] * len(response))
        logprobs += list(step.logprobs or [0.0] * len(response))
        entropies += list(step.entropies or [0.0] * len(response))
        turns += [index] * len(response)
    return TrainingRow(ids, mask, logprobs, entropies if with_entropy else None, turns, [s.policy_version for s in steps])


def per_step_rows(episode: Episode) -> list[TrainingRow]:
    """One row per turn: the exact prompt the policy saw (mask 0) and its sampled ids (mask 1)."""
    rows = []
    for index, step in enumerate(_token_steps(episode)):
        prompt, response = list(step.prompt_ids or []), list(step.response_ids or [])
        rows.append(
            TrainingRow(
                input_ids=prompt + response,
                loss_mask=[0] * len(prompt) + list(step.loss_mask or [1] * len(response)),
                logprobs=[0.0] * len(prompt) + list(step.logprobs or [0.0] * len(response)),
                entropies=[0.0] * len(prompt) + list(step.entropies) if step.entropies is not None else None,
                turns=[-1] * len(prompt) + [index] * len(response),
                policy_versions=[step.policy_version],
            )
        )
    return rows


def training_rows(episode: Episode) -> list[TrainingRow]:
    """Concat (one row) when the episode was built in the concat layout, else per-step rows."""
    _token_steps(episode)
    if episode.meta.get("layout", "concat") == "concat":
        return [concat_sequence(episode)]
    return per_step_rows(episode)
