"""The asynchronous actor-learner loop: rollout workers -> store -> learner -> published weights.

Rollout workers (:class:`~agentrl.distributed.worker.RolloutWorker` as Ray actors, behind the
:mod:`~agentrl.distributed.pool` interface) keep playing groups of episodes with the newest weights
they have and write each group to the store in one transaction. The driver (this process) runs the
learner: it follows the store (``read_episodes(run_id, policy_versions=..., since_id=...)``), hands
what arrives to the batching (:mod:`agentrl.distributed.batching`), calls ``Learner.update`` on each
batch and publishes the new weights (:mod:`agentrl.distributed.weights`: safetensors, full weights
or, when the learner trains LoRA, only the adapters in PEFT's format); workers pick them up between
groups.

Batching (``batching=``): ``"group"`` (default) takes whole groups, oldest first, once
``groups_per_update`` fresh ones are in: every fresh group is used, so the gradient needs no
arrival weights. ``"window"`` is the arrival model of duration-aware updates: each worker loops over
single groups and the learner takes whatever finished within each ``window_s``-second window,
dropping groups that started more than ``max_staleness`` windows earlier; slow groups are dropped
more often, and each used group records its inclusion probability for the ``inclusion`` shaper.
:func:`~agentrl.distributed.batching.check_shaping` refuses weights that do not fit the batching.

Off-policy correction: every stored turn carries its behaviour log-probs, and the learner's
PPO ratio ``pi_theta / pi_behaviour`` is the importance weight, clipped to ``[1 - eps_low,
1 + eps_high]`` (see :mod:`agentrl.training.learner`). ``max_staleness`` bounds how far behind a
batch may be; episodes older than that are skipped, never trained on.

Synchronous mode is ``max_staleness=0`` with group batching, on the same code path: the driver
submits only as many groups as the current batch still needs, so every episode comes from the
current weights.

Failures: a worker whose process dies is replaced by a new actor (at most ``max_worker_restarts``
times in a run) and the group it was playing is recorded in the store as discarded episodes
(``error="discarded: ..."``, no policy version, so no version filter ever selects them). A group
that raised inside a live worker is recorded the same way. When no fresh episode arrives for
``wait_timeout_s`` the learner stops with :class:`LearnerTimeout`, a one-line reason. On any exit,
Ctrl-C included, the workers are killed and a Ray cluster this run started is shut down; a group
cut off mid-write is rolled back by the store's transaction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from agentrl.distributed.batching import GroupBatching, WindowBatching, check_shaping
from agentrl.distributed.pool import Call, RayWorkerPool, WorkerPool
from agentrl.distributed.weights import WeightPublisher, publish_weights
from agentrl.distributed.worker import WorkerSpec
from agentrl.trajectory import Episode

log = logging.getLogger("agentrl.distributed")


class LearnerTimeout(RuntimeError):
    """No fresh episodes reached the learner within the wait timeout."""


class ActorLearner:
    """Drive ``learner`` with ``workers`` rollout workers built from ``spec``.

    ``sample_task(rng) -> (task_id, variant)`` chooses what each group plays. ``on_update(metrics)``
    is called after every update with the learner's metrics and the rollout stats. The caller owns
    ``learner`` and ``store``; this object owns the workers (call :meth:`close`, or use ``with``).
    ``batching`` and ``window_s``: see the module docstring. ``pool`` replaces the Ray workers
    (a simulation) and ``clock`` the driver's clock (a simulation's fake one); both default to the
    real thing. ``around_update()`` is a context manager entered around each update, weight publish
    and ``on_update`` (a resumable run commits its checkpoint there); :meth:`state_dict` is what a
    resumed driver needs besides the learner's own checkpoint.
    """

    def __init__(
        self,
        learner: Any,
        store: Any,
        spec: WorkerSpec,
        *,
        workers: int,
        group_size: int,
        groups_per_update: int,
        sample_task: Callable[[np.random.Generator], tuple[str, str]],
        max_staleness: int = 0,
        batching: str = "group",
        window_s: float | None = None,
        wait_timeout_s: float = 600.0,
        max_worker_restarts: int = 3,
        worker_cpus: float = 1.0,
        worker_gpus: float = 0.0,
        poll_interval_s: float = 0.2,
        seed: int = 0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        check_batch: Callable[[list[Episode]], dict[str, Any]] | None = None,
        pool: WorkerPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        around_update: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ):
        if workers < 1 or group_size < 1 or groups_per_update < 1 or max_staleness < 0:
            raise ValueError("workers, group_size and groups_per_update must be >= 1 and max_staleness >= 0")
        check_shaping(batching, learner.config.shaping)
        if batching == "window":
            if window_s is None or not window_s > 0:
                raise ValueError(f"batching='window' needs window_s > 0 seconds, got {window_s}")
            if "inclusion" not in learner.config.shaping:
                log.warning("batching='window' drops groups that run longer than %g s (max_staleness + 1 windows) more "
                            "often than fast ones; without shaping=['inclusion'] the gradient leans toward fast groups",
                            (max_staleness + 1) * window_s)  # fmt: skip
        self.learner, self.store, self.spec = learner, store, spec
        self.n_workers, self.group_size, self.groups_per_update = workers, group_size, groups_per_update
        self.sample_task, self.max_staleness = sample_task, max_staleness
        self.batching_name, self.window_s = batching, window_s
        self.wait_timeout_s, self.max_worker_restarts = wait_timeout_s, max_worker_restarts
        self.poll_interval_s, self.clock = poll_interval_s, clock
        self.on_update = on_update
        self.around_update = around_update  # wraps each update + publish + on_update (a resumable run's commit)
        self.check_batch = check_batch  # before each update: metrics on the batch (token exactness of fresh episodes)
        self.rng = np.random.default_rng(seed)
        self.pool: WorkerPool = pool or RayWorkerPool(spec, workers, cpus=worker_cpus, gpus=worker_gpus, clock=clock)
        self.publisher = WeightPublisher(spec.weights_dir, keep=max_staleness + 1)
        self.batching: GroupBatching | WindowBatching = GroupBatching(groups_per_update, max_staleness)
        self.last_seen_id = 0
        self.stats = {"restarts": 0, "discarded_groups": 0, "discarded_episodes": 0, "stale_skipped": 0,
                      "failed_episodes": 0, "groups_done": 0, "empty_windows": 0, "too_slow_groups": 0,
                      "last_error": ""}  # fmt: skip
        self._calls = 0
        self._not_before: dict[int, float] = {}  # window batching: each worker's first submission time

    @property
    def actors(self) -> list[Any]:
        """The Ray actors (empty for another pool, and after :meth:`close`)."""
        return list(getattr(self.pool, "actors", []))

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return self.pool.pids()

    # ------------------------------------------------------------------ workers

    def _submit(self, index: int) -> None:
        task, variant = self.sample_task(self.rng)
        self._calls += 1
        call = Call(index, f"c{self._calls}w{index}", task, int(self.rng.integers(1 << 31)), variant,
                    self.learner.step, self.group_size, self.clock())  # fmt: skip
        self.pool.submit(call)

    def _top_up(self) -> None:
        """Keep workers busy.

        Group batching: two queued groups per worker when asynchronous, just what the batch needs when
        not. Window batching: one group per worker, the next as soon as the last returns (after a
        random first offset in ``[0, window_s)``, so submissions fall uniformly over the window grid).
        """
        per_worker = {i: 0 for i in range(self.pool.size)}
        for call in self.pool.in_flight():
            per_worker[call.worker] += 1
        if self.batching_name == "window":
            now = self.clock()
            for index, count in per_worker.items():
                if count == 0 and now >= self._not_before.get(index, now):
                    self._submit(index)
            return
        if self.max_staleness == 0:
            budget = self.groups_per_update - self.batching.groups_waiting() - len(self.pool.in_flight())
            for index in sorted(per_worker, key=per_worker.get):
                if budget <= 0:
                    break
                if per_worker[index] == 0:
                    self._submit(index)
                    budget -= 1
            return
        for index, count in per_worker.items():
            for _ in range(2 - count):
                self._submit(index)

    def _record_discarded(self, call: Call, why: str) -> None:
        episodes = [
            Episode(env_id=self.spec.env, task_id=call.task, split=self.spec.split, seed=call.seed + member,
                    group_id=f"{call.call_id}/{call.task}", agent=f"worker{call.worker}",
                    error=f"discarded: {why}", meta={"discarded": True, "worker": call.worker, "call": call.call_id,
                                                    "variant": call.variant})
            for member in range(call.group_size)
        ]  # fmt: skip
        self.store.write_episodes(self.spec.run_id, episodes)
        self.stats["discarded_groups"] += 1
        self.stats["discarded_episodes"] += len(episodes)
        self.stats["last_error"] = why

    def _harvest(self, timeout: float) -> None:
        """Collect finished calls; replace dead workers and record what they were playing."""
        dead: set[int] = set()
        for done in self.pool.wait(timeout):
            call = done.call
            if done.error is None:
                self.stats["groups_done"] += 1
                if isinstance(self.batching, WindowBatching):
                    self.batching.arrived(call.call_id, call.submitted_at, done.finished_at)
                continue
            self._record_discarded(call, done.error)
            if done.worker_died:
                dead.add(call.worker)
            else:
                log.warning("rollout worker %d failed on %s: %s", call.worker, call.task, done.error)
        for index in dead:
            self._restart(index)

    def _restart(self, index: int) -> None:
        # Calls still queued on the dead actor fail too: record them now, they will never return.
        for call in self.pool.forget(index):
            self._record_discarded(call, f"rollout worker {index} died before playing it")
        if self.stats["restarts"] >= self.max_worker_restarts:
            raise RuntimeError(
                f"rollout worker {index} died and the restart budget ({self.max_worker_restarts}) is spent; "
                f"last error: {self.stats['last_error']}"
            )
        self.stats["restarts"] += 1
        log.warning("restarting rollout worker %d (restart %d)", index, self.stats["restarts"])
        self.pool.restart(index)

    # ------------------------------------------------------------------ learner side

    def _poll_store(self) -> int:
        """Move new episodes within the batching's version window from the store into the batching."""
        from sqlalchemy import and_, select

        from agentrl.store.models import episodes_table as e

        low, high = self.batching.versions(self.learner.step)
        since = self.last_seen_id
        statement = select(e.c.id, e.c.policy_version_min, e.c.policy_version_max).where(
            and_(e.c.run_id == self.spec.run_id, e.c.id > since)
        )
        with self.store.engine.connect() as conn:
            new = conn.execute(statement.order_by(e.c.id)).all()
        if not new:
            return 0
        newest = new[-1][0]  # later ids are read next time: nothing is missed or read twice
        fresh = [
            (i, ep)
            for i, ep in self.store.iter_episodes(self.spec.run_id, with_ids=True, policy_versions=(low, high),
                                                  since_id=since, limit=len(new))  # fmt: skip
            if i <= newest
        ]
        self.stats["stale_skipped"] += sum(1 for _, lo, hi in new if lo is not None and not (low <= lo and hi <= high))
        usable = [(i, ep) for i, ep in fresh if ep.error is None and ep.steps]  # the learner drops the rest anyway
        self.stats["failed_episodes"] += len(fresh) - len(usable)
        self.batching.add(usable)
        self.last_seen_id = newest
        return len(usable)

    def _take_batch(self) -> list[Episode] | None:
        batch = self.batching.take(self.learner.step, self.clock())
        self.stats["stale_skipped"] += self.batching.stale_skipped
        self.batching.stale_skipped = 0
        if isinstance(self.batching, WindowBatching):
            slow, self.batching.too_slow = self.batching.too_slow, 0
            if slow and not self.stats["too_slow_groups"]:
                log.warning("%d group(s) ran %g s or longer (max_staleness + 1 windows): no window can use them, and "
                            "no weight can correct for them; raise window_s or max_staleness", slow,
                            (self.max_staleness + 1) * self.window_s)  # fmt: skip
            self.stats["too_slow_groups"] += slow
            if batch == []:
                self.stats["empty_windows"] += 1
                return None
        return batch

    def _next_wait(self) -> float:
        """How long the next harvest may wait: a poll interval, or less when a window closes or a first turn comes."""
        wait = self.poll_interval_s
        if isinstance(self.batching, WindowBatching):
            now = self.clock()
            wait = min(wait, self.batching.seconds_to_deadline(now), *(max(0.0, t - now) for t in self._not_before.values()))
            self._not_before = {i: t for i, t in self._not_before.items() if t > now}
        return wait

    def _wait_for_batch(self) -> list[Episode]:
        """Harvest until the batching has a batch. Group batching reads the store after every harvest;
        window batching only when a window closes (what it takes is decided then), one read per window."""
        window = isinstance(self.batching, WindowBatching)
        last_progress = self.clock()
        while True:
            if window and self.batching.seconds_to_deadline(self.clock()) == 0:
                self._poll_store()
            batch = self._take_batch()
            if batch:
                return batch
            self._top_up()
            done_before = self.stats["groups_done"]
            self._harvest(self._next_wait())
            arrived = self.stats["groups_done"] > done_before if window else self._poll_store() > 0
            if arrived:
                last_progress = self.clock()
            elif self.clock() - last_progress > self.wait_timeout_s:
                low, high = self.batching.versions(self.learner.step)
                raise LearnerTimeout(
                    f"no fresh episodes (policy versions {low}..{high}) reached the learner in {self.wait_timeout_s:g} s: "
                    f"{self.pool.size} workers, {len(self.pool.in_flight())} groups in flight, "
                    f"{self.stats['restarts']} restarts, "
                    f"{self.stats['stale_skipped']} stale and {self.stats['failed_episodes']} failed episodes skipped"
                    + (f", last worker error: {self.stats['last_error']}" if self.stats["last_error"] else "")
                    + "; check the workers (store URL, env, model) or raise wait_timeout_s"
                )

    # ------------------------------------------------------------------ the loop

    def run(self, updates: int) -> dict[str, Any]:
        """Run ``updates`` learner updates; returns the rollout/failure stats. Always cleans up."""
        try:
            publish_weights(self.publisher, self.learner)
            self.pool.start()
            if self.batching_name == "window":
                start = self.clock()
                self.batching = WindowBatching(self.window_s, self.max_staleness, start)
                self._not_before = {i: start + float(self.rng.uniform(0, self.window_s)) for i in range(self.pool.size)}
            for _ in range(updates):
                started = self.clock()
                batch = self._wait_for_batch()
                waited = self.clock() - started
                lags = [self.learner.step - ep.policy_version for ep in batch]
                checked = self.check_batch(batch) if self.check_batch is not None else {}
                with self.around_update():
                    metrics = self.learner.update(batch)
                    publish_weights(self.publisher, self.learner)
                    summary = {
                        "policy_version": self.learner.step, "episodes": len(batch),
                        "rollout/success_rate": float(np.mean([ep.won for ep in batch])),
                        "rollout/mean_return": float(np.mean([ep.episode_return for ep in batch])),
                        "async/wait_seconds": waited, "async/mean_staleness": float(np.mean(lags)),
                        "async/max_staleness": int(max(lags)), "async/update_seconds": self.clock() - started - waited,
                        **{f"async/{k}": v for k, v in self.stats.items() if k != "last_error"},
                        **{f"rollout/{k}": v for k, v in checked.items()},
                        "learner": metrics,
                    }  # fmt: skip
                    if self.on_update is not None:
                        self.on_update(summary)
            return dict(self.stats)
        finally:
            self.close()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed driver needs (JSON-ready): where to read the store from, the task sampler's RNG, stats.

        Under group batching, episodes read but not trained on yet are read again after a resume
        (``since`` stops before them). Window batching decides by the driver's clock, which does not
        survive a restart: what its open windows held is not carried over.
        """
        waiting = self.batching.buffer if isinstance(self.batching, GroupBatching) else []
        since = min(i for i, _ in waiting) - 1 if waiting else self.last_seen_id
        return {"since": since, "rng": self.rng.bit_generator.state, "calls": self._calls, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_seen_id = int(state["since"])
        self.rng.bit_generator.state = state["rng"]
        self._calls = int(state["calls"])
        self.stats.update(state["stats"])

    def close(self) -> None:
        """Kill every worker (their in-flight groups are never committed). Safe to call twice."""
        self.pool.close()

    def __enter__(self) -> ActorLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
