"""How the actor-learner driver turns arriving groups into batches, and each group's chance of being used.

A batch gives an unbiased policy-gradient estimate when every group a worker started had the same
chance of ending up in a batch, whatever it played; when that chance depends on the group (on how
long it ran, say), each used group must be weighted by the inverse of its chance (Horvitz-Thompson)
or the gradient leans toward the groups that were easy to include. Two batchings:

``group`` (:class:`GroupBatching`, the default)
    Workers keep two groups queued each; the learner takes whole groups, oldest first, once
    ``groups_per_update`` of them (at most ``max_staleness`` policy versions old) are in. Every
    group that arrives fresh is used, whatever it played and however long it took, so no weight
    is needed and none is applied: duration weights here would only bias the gradient (see
    ``benchmarks/duration_bias.py``). One caveat: a group that arrives staler than
    ``max_staleness`` is skipped, and slow groups go stale more often, so size ``max_staleness``
    for the slowest groups (``async/stale_skipped`` counts the skipped episodes; it should stay 0).

``window`` (:class:`WindowBatching`)
    The arrival model of duration-aware updates (arXiv 2509.01684): every worker loops over single
    groups (one in flight, the next submitted as soon as one returns), and the learner takes
    whatever finished within a wall-clock window. Windows close at the deadlines ``t0 + k * W``
    (``W = window_s``, on the driver's clock); at each deadline the learner takes every group that
    finished (was harvested) by it and was submitted no earlier than ``(S + 1) * W`` before it
    (``S = max_staleness``, counted in windows); older groups are dropped. So a group whose
    submission falls at phase ``u`` in ``[0, W)`` of the window grid and that runs ``D`` seconds
    (submission to harvest) is used iff ``u + D <= (S + 1) * W``. Each worker's first group is
    submitted after a uniform random offset in ``[0, W)``, and every later one as soon as the
    previous returns; then every submission's phase is uniform on ``[0, W)`` and independent of
    what the group plays (``(u + D) mod W`` is uniform when ``u`` is and ``D`` does not depend on
    ``u``). Hence the inclusion probability of a group of duration ``D``::

        p(D) = clip(S + 1 - D / W, 0, 1)

    Slow groups are under-represented by exactly ``p(D)``; a used group carries it in
    ``episode.meta["inclusion_probability"]`` and the ``inclusion`` shaper
    (:mod:`agentrl.algorithms.duration`) weights it by ``1 / p``. Groups that run ``(S + 1) * W``
    or longer are never used and no weight can bring them back: they are counted
    (``async/too_slow_groups``) and the driver warns. The derivation holds exactly when
    submission follows harvest without delay and an update takes no time (the simulation in
    ``benchmarks/duration_bias.py``); in a real run the driver harvests between updates, so
    ``p`` is approximate when an update takes a sizeable part of ``W``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agentrl.trajectory import Episode

BATCHINGS = ("group", "window")

#: Shaping plug-ins that correct an arrival model, and the batching each one belongs to.
_ARRIVAL_SHAPERS = {"duration", "inclusion"}

#: ``episode.meta`` key: P(the episode's group was used), set by :class:`WindowBatching`.
INCLUSION_KEY = "inclusion_probability"


def check_shaping(batching: str, shaping: Sequence[str]) -> None:
    """Refuse arrival-model weights that do not match ``batching`` (one ``ValueError`` line with the fix).

    ``duration`` (``dt / mean(dt)``, the paper's estimator) corrects an arrival rate proportional
    to ``pi(a) / dt_a``, which agentrl's workers never produce: each group is sampled afresh, so
    completions arrive in proportion to the policy whatever they cost. ``inclusion`` corrects what
    :class:`WindowBatching` drops and needs its recorded probabilities.
    """
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
    if "duration" in shaping:
        raise ValueError(
            "learner shaping 'duration' (dt / mean dt, arXiv 2509.01684) assumes actors spend their time on each "
            "action in proportion to the policy; agentrl's workers sample every group afresh, so results already "
            "arrive in proportion to the policy and the weights would bias the gradient (benchmarks/duration_bias.py): "
            + ("remove 'duration' from the learner's shaping" if batching == "group"
               else "use shaping=['inclusion'], which corrects what the time window drops")
        )  # fmt: skip
    if "inclusion" in shaping and batching != "window":
        raise ValueError(
            "learner shaping 'inclusion' corrects the groups a time window drops, but batching='group' uses every "
            "fresh group (inclusion probability 1): remove 'inclusion' from the learner's shaping, or set batching='window'"
        )


class GroupBatching:
    """Whole groups, oldest first, once ``groups_per_update`` fresh ones are in (see the module docstring)."""

    name = "group"

    def __init__(self, groups_per_update: int, max_staleness: int):
        if groups_per_update < 1 or max_staleness < 0:
            raise ValueError("groups_per_update must be >= 1 and max_staleness >= 0")
        self.groups_per_update, self.max_staleness = groups_per_update, max_staleness
        self.buffer: list[tuple[int, Episode]] = []  # fresh episodes not trained on yet, store id order
        self.stale_skipped = 0

    def versions(self, version: int) -> tuple[int, int]:
        """The policy versions the store is read for while the learner is at ``version``."""
        return max(0, version - self.max_staleness), version

    def add(self, episodes: Sequence[tuple[int, Episode]]) -> None:
        self.buffer.extend(episodes)

    def groups_waiting(self) -> int:
        return len({ep.group_id for _, ep in self.buffer})

    def take(self, version: int, now: float) -> list[Episode] | None:
        """The next batch, or ``None`` while fewer than ``groups_per_update`` fresh groups are in."""
        low, _ = self.versions(version)
        kept = [(i, ep) for i, ep in self.buffer if ep.policy_version is not None and ep.policy_version >= low]
        self.stale_skipped += len(self.buffer) - len(kept)
        self.buffer = kept
        order: list[str | None] = []
        for _, ep in self.buffer:
            if ep.group_id not in order:
                order.append(ep.group_id)
        if len(order) < self.groups_per_update:
            return None
        chosen = set(order[: self.groups_per_update])
        batch = [ep for _, ep in self.buffer if ep.group_id in chosen]
        self.buffer = [(i, ep) for i, ep in self.buffer if ep.group_id not in chosen]
        return batch


@dataclass
class _Timing:
    submitted_at: float
    finished_at: float


class WindowBatching:
    """Whatever finished within each window of ``window_s`` seconds (see the module docstring).

    ``start`` is the driver-clock time of the first window's opening; ``max_staleness`` counts
    windows: a group submitted up to ``max_staleness`` windows before the one it finished in is used.
    """

    name = "window"

    def __init__(self, window_s: float, max_staleness: int, start: float):
        if not (window_s > 0 and math.isfinite(window_s)) or max_staleness < 0:
            raise ValueError(f"window_s must be a positive number of seconds and max_staleness >= 0, got {window_s}")
        self.window_s, self.max_staleness = float(window_s), max_staleness
        self.deadline = start + self.window_s
        self.buffer: dict[str, list[Episode]] = {}  # call id -> its fresh episodes
        self.timing: dict[str, _Timing] = {}  # call id -> submission and harvest times (driver clock)
        self.stale_skipped = 0  # episodes dropped because their group started too long before its deadline
        self.too_slow = 0  # groups dropped that no window could ever have used (D >= (S + 1) W)

    def versions(self, version: int) -> tuple[int, int]:
        return 0, version  # freshness is decided by time, at take()

    def inclusion_probability(self, duration: float) -> float:
        """``p(D) = clip(S + 1 - D / W, 0, 1)``: the chance a group running ``duration`` seconds is used."""
        return min(1.0, max(0.0, self.max_staleness + 1 - duration / self.window_s))

    def arrived(self, call_id: str, submitted_at: float, finished_at: float) -> None:
        """Record a harvested call's times (before or after its episodes come from the store)."""
        self.timing[call_id] = _Timing(submitted_at, finished_at)

    def add(self, episodes: Sequence[tuple[int, Episode]]) -> None:
        for _, ep in episodes:
            self.buffer.setdefault(str(ep.meta.get("call", ep.group_id)), []).append(ep)

    def groups_waiting(self) -> int:
        return len(self.buffer)

    def seconds_to_deadline(self, now: float) -> float:
        return max(0.0, self.deadline - now)

    def take(self, version: int, now: float) -> list[Episode] | None:
        """At or after the deadline: the window's batch (maybe empty) with inclusion probabilities; before: ``None``."""
        if now < self.deadline:
            return None
        deadline, horizon = self.deadline, (self.max_staleness + 1) * self.window_s
        self.deadline += self.window_s
        batch: list[Episode] = []
        for call in list(self.buffer):
            timing = self.timing.get(call)
            if timing is None or timing.finished_at > deadline:
                continue  # not harvested yet, or finished in a later window
            episodes = self.buffer.pop(call)
            del self.timing[call]
            duration = timing.finished_at - timing.submitted_at
            if timing.submitted_at < deadline - horizon:
                self.stale_skipped += len(episodes)
                self.too_slow += duration >= horizon
                continue
            p = self.inclusion_probability(duration)
            for ep in episodes:
                ep.meta[INCLUSION_KEY] = p
            batch.extend(episodes)
        for call in [c for c, t in self.timing.items() if c not in self.buffer and t.finished_at <= deadline]:
            del self.timing[call]  # harvested calls whose episodes all failed: nothing to use
        return batch
