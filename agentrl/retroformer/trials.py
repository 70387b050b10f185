"""The trial loop, the ratings, and the batch the retrospective LM is trained on.

Per task ``k`` the frozen actor plays up to ``trials`` trials (Retroformer and Reflexion use 4):

1. trial ``i`` runs for every task not solved yet (one :class:`~agentrl.rollout.collector.Collector`
   pass, batched across tasks), the actor's prompt opening with that task's last reflections;
2. a task solved in trial ``i`` is done: it gets no reflection and no rating, and success@j counts it
   for every ``j >= i``;
3. after a failed trial ``i < trials`` the reflector writes a reflection; a usable one joins the task's
   memory, an empty or garbage one is recorded (``meta["usable"] = False``) and the next trial runs
   without it;
4. once trial ``i + 1`` is played, the reflection written after trial ``i`` is rated
   ``G_{k,i+1} - G_{k,i}`` (:func:`ratings`) and becomes its one step's reward.

The last trial gets no reflection (no next trial could rate it). An episode that failed outside the
task (``error`` set: the env crashed) ends its task's chain: nothing after it could be compared.

Everything lands in the store when known: trial episodes right after their trial (``meta``: kind,
trial index, chain id, the reflections in the prompt), reflection episodes once rated (``meta``: the
trial they reflect on and the one they were rated by, with store ids, both returns and the rating).

Training (:func:`retrospective_batch`): the rated reflections are the learner's episodes, ratings
their returns. They share one ``group_id`` per update, so the learner's GRPO advantage is the
rating normalised **within the batch**, ``A = (r - mean_B r) / (std_B r + eps)`` (the whitening
that Retroformer's PPO applies to its rewards); ``normalize="task"`` groups by task instead, which
compares reflections of the same task only (a task with a single reflection then gets advantage 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.retroformer import prompts
from agentrl.retroformer.agent import Reflector, ReflexionAgent
from agentrl.trajectory import Episode


def ratings(returns: Sequence[float]) -> list[float]:
    """``[G_{i+1} - G_i for i in 0..n-2]``: the rating of the reflection written after each trial but the last."""
    return [float(returns[i + 1]) - float(returns[i]) for i in range(len(returns) - 1)]


def episode_return(episode: Episode) -> float:
    """``G``: the sum of the trial's rewards (the default return of a trial)."""
    return episode.episode_return


@dataclass
class TrialReport:
    """What :func:`run_trials` did, per task and per trial."""

    tasks: list[str]
    trials: int
    returns: dict[str, list[float]]  # task -> G of each trial played
    won: dict[str, list[bool]]  # task -> won flag of each trial played
    trial_episodes: list[Episode] = field(default_factory=list)
    reflections: list[Episode] = field(default_factory=list)  # every reflection written, in order
    seconds: float = 0.0

    def success_at(self) -> list[float]:
        """success@1..N: the fraction of tasks solved within the first j trials (cumulative)."""
        n = len(self.tasks)
        return [
            sum(any(self.won[t][:j]) for t in self.tasks) / n if n else 0.0 for j in range(1, self.trials + 1)
        ]

    def rated(self) -> list[Episode]:
        """The reflections that got a rating (all but those of a chain cut by an error)."""
        return [r for r in self.reflections if "rating" in r.meta]

    def summary(self) -> dict[str, Any]:
        rated = self.rated()
        usable = [r for r in self.reflections if r.meta.get("usable")]
        return {
            "tasks": len(self.tasks),
            "trials": self.trials,
            "success_at": self.success_at(),
            "reflections": len(self.reflections),
            "usable_reflections": len(usable),
            "rated_reflections": len(rated),
            "mean_rating": sum(r.meta["rating"] for r in rated) / len(rated) if rated else None,
            "errors": sum(ep.error is not None for ep in self.trial_episodes),
            "seconds": self.seconds,
        }


def run_trials(
    collector: Any,
    agent: ReflexionAgent,
    reflector: Reflector,
    tasks: Sequence[str],
    *,
    trials: int = 4,
    seed: int = 0,
    return_fn: Callable[[Episode], float] = episode_return,
    store: Any = None,
    trial_run: int | None = None,
    reflection_run: int | None = None,
    chain_prefix: str = "",
) -> TrialReport:
    """Play up to ``trials`` trials of every task with reflections in between (see the module docstring).

    ``collector`` is a :class:`~agentrl.rollout.collector.Collector` whose
    :class:`~agentrl.rollout.actors.ModelActor` has ``agent`` (a :class:`ReflexionAgent`); the loop sets ``agent.memory`` for the tasks. Every trial of a task uses
    the same env seed, so trials differ only by the actor's sampling and its memory. With ``store``
    given, trial episodes go to run ``trial_run`` and reflection episodes to ``reflection_run``.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if len(set(tasks)) != len(tasks):
        raise ValueError("tasks must be distinct: each task is one chain of trials")
    if getattr(collector.actor, "agent", None) is not agent:
        raise ValueError("the collector's ModelActor must be built with the same ReflexionAgent")
    started = time.perf_counter()
    memory: dict[str, list[str]] = {task: [] for task in tasks}
    agent.memory = memory
    report = TrialReport(list(tasks), trials, {t: [] for t in tasks}, {t: [] for t in tasks})
    previous: dict[str, tuple[Episode, int | None]] = {}  # task -> (its last trial, store id)
    pending: dict[str, Episode] = {}  # task -> reflection waiting for the next trial's return
    active = list(tasks)
    for trial in range(trials):
        if not active:
            break
        played = collector.run(active, group_size=1, seed=seed)
        by_task = {ep.task_id: ep for ep in played}
        ordered = [by_task[task] for task in active]
        for episode in ordered:
            task = episode.task_id
            episode.group_id = f"{chain_prefix}{task}"
            episode.meta.update(
                kind="trial", trial=trial, chain=f"{chain_prefix}{task}", prompts_version=prompts.PROMPTS_VERSION,
                reflections=agent.reflections_for(task),
            )  # fmt: skip
            if episode.error is None:
                report.returns[task].append(return_fn(episode))
                report.won[task].append(bool(episode.won))
        ids = _write(store, trial_run, ordered)
        report.trial_episodes.extend(ordered)

        # rate the reflections written after the previous trial, now that this trial is known
        rated = []
        for episode, episode_id in zip(ordered, ids, strict=True):
            reflection = pending.pop(episode.task_id, None)
            if reflection is None or episode.error is not None:
                continue
            before, before_id = previous[episode.task_id]
            g_before, g_after = return_fn(before), return_fn(episode)
            (rating,) = ratings([g_before, g_after])
            reflection.steps[0].reward = rating
            reflection.meta.update(
                rating=rating, return_before=g_before, return_after=g_after, trial=trial - 1,
                trial_episode_id=before_id, next_trial_episode_id=episode_id,
            )  # fmt: skip
            rated.append(reflection)
        _write(store, reflection_run, rated)
        for episode, episode_id in zip(ordered, ids, strict=True):
            previous[episode.task_id] = (episode, episode_id)

        # reflect on this trial's failures (not after the last trial: nothing could rate it)
        failed = [ep for ep in ordered if not ep.won and ep.error is None]
        active = [ep.task_id for ep in failed]
        if trial == trials - 1 or not failed:
            break
        new = reflector.reflect(failed, [return_fn(ep) for ep in failed])
        for trial_episode, reflection in zip(failed, new, strict=True):
            task = trial_episode.task_id
            reflection.group_id = f"{chain_prefix}{task}"
            reflection.meta.update(chain=f"{chain_prefix}{task}", after_trial=trial)
            if reflection.meta["usable"]:
                memory[task].append(reflection.steps[0].action)
            pending[task] = reflection
            report.reflections.append(reflection)
    report.seconds = time.perf_counter() - started
    return report


def retrospective_batch(
    reflections: Sequence[Episode], *, batch_id: str = "batch", normalize: Literal["batch", "task"] = "batch"
) -> list[Episode]:
    """The rated reflections, grouped for the learner's advantage (see the module docstring).

    Returns copies-in-place: ``group_id`` is set to ``retro:<batch_id>`` (batch) or
    ``retro:<batch_id>:<task>`` (task). Unusable reflections are kept: the rating of a garbage
    reflection is what emitting it bought (the next trial ran without help), a signal the
    retrospective LM should learn from. Reflections without a rating are left out.
    """
    if normalize not in ("batch", "task"):
        raise ValueError(f"normalize must be 'batch' or 'task', got {normalize!r}")
    batch = []
    for reflection in reflections:
        if "rating" not in reflection.meta:
            continue
        suffix = "" if normalize == "batch" else f":{reflection.task_id}"
        reflection.group_id = f"retro:{batch_id}{suffix}"
        batch.append(reflection)
    return batch


def _write(store: Any, run_id: int | None, episodes: list[Episode]) -> list[int | None]:
    if store is None or run_id is None or not episodes:
        return [None] * len(episodes)
    return list(store.write_episodes(run_id, episodes))
