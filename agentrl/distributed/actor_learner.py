"""The asynchronous actor-learner loop: Ray rollout workers -> store -> learner -> published weights.

Rollout workers (:class:`~agentrl.distributed.worker.RolloutWorker` as Ray actors) keep playing
groups of episodes with the newest weights they have and write each group to the store in one
transaction. The driver (this process) runs the learner: it follows the store
(``read_episodes(run_id, policy_versions=(v - max_staleness, v), since_id=...)``), takes whole
groups until a batch is full, calls ``Learner.update`` and publishes the new weights
(:mod:`agentrl.distributed.weights`: safetensors, full weights or, when the learner trains LoRA, only
the adapters in PEFT's format); workers pick them up between groups.

Off-policy correction: every stored turn carries its behaviour log-probs, and the learner's
PPO ratio ``pi_theta / pi_behaviour`` is the importance weight, clipped to ``[1 - eps_low,
1 + eps_high]`` (see :mod:`agentrl.training.learner`). ``max_staleness`` bounds how far behind a
batch may be; episodes older than that are skipped, never trained on.

Synchronous mode is ``max_staleness=0`` on the same code path: the driver submits only as many
groups as the current batch still needs, so every episode comes from the current weights.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentrl.distributed.weights import WeightPublisher
from agentrl.distributed.worker import WorkerSpec
from agentrl.trajectory import Episode

log = logging.getLogger("agentrl.distributed")


class LearnerTimeout(RuntimeError):
    """No fresh episodes reached the learner within the wait timeout."""


@dataclass
class _Call:
    worker: int
    call_id: str
    task: str
    seed: int
    variant: str
    submitted_version: int


class ActorLearner:
    """Drive ``learner`` with ``workers`` Ray rollout actors built from ``spec``.

    ``sample_task(rng) -> (task_id, variant)`` chooses what each group plays. ``on_update(metrics)``
    is called after every update with the learner's metrics and the rollout stats. The caller owns
    ``learner`` and ``store``; this object owns the actors (call :meth:`close`, or use ``with``).
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
        wait_timeout_s: float = 600.0,
        max_worker_restarts: int = 3,
        worker_cpus: float = 1.0,
        worker_gpus: float = 0.0,
        poll_interval_s: float = 0.2,
        seed: int = 0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        around_update: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ):
        if workers < 1 or group_size < 1 or groups_per_update < 1 or max_staleness < 0:
            raise ValueError("workers, group_size and groups_per_update must be >= 1 and max_staleness >= 0")
        self.learner, self.store, self.spec = learner, store, spec
        self.n_workers, self.group_size, self.groups_per_update = workers, group_size, groups_per_update
        self.sample_task, self.max_staleness = sample_task, max_staleness
        self.wait_timeout_s, self.max_worker_restarts = wait_timeout_s, max_worker_restarts
        self.worker_cpus, self.worker_gpus, self.poll_interval_s = worker_cpus, worker_gpus, poll_interval_s
        self.on_update = on_update
        self.around_update = around_update  # wraps each update + publish + on_update (a resumable run's commit)
        self.rng = np.random.default_rng(seed)
        self.publisher = WeightPublisher(spec.weights_dir, keep=max_staleness + 1)
        self.actors: list[Any] = []
        self.inflight: dict[Any, _Call] = {}  # ObjectRef -> call
        self.buffer: list[tuple[int, Episode]] = []  # fresh episodes not trained on yet, id order
        self.last_seen_id = 0
        self.stats = {"restarts": 0, "discarded_groups": 0, "discarded_episodes": 0, "stale_skipped": 0,
                      "failed_episodes": 0, "groups_done": 0, "last_error": ""}
        self._calls = 0
        self._actor_class: Any = None

    # ------------------------------------------------------------------ workers

    def _start_worker(self, index: int) -> Any:
        from agentrl.distributed.worker import remote_worker_class

        if self._actor_class is None:
            self._actor_class = remote_worker_class(self.worker_cpus, self.worker_gpus)
        return self._actor_class.remote(self.spec, index)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        import ray

        return ray.get([actor.pid.remote() for actor in self.actors], timeout=120)

    def _submit(self, index: int) -> None:
        task, variant = self.sample_task(self.rng)
        self._calls += 1
        call = _Call(index, f"c{self._calls}w{index}", task, int(self.rng.integers(1 << 31)), variant, self.learner.step)
        ref = self.actors[index].collect.remote(call.call_id, task, self.group_size, call.seed, variant)
        self.inflight[ref] = call

    def _top_up(self) -> None:
        """Keep workers busy: two queued groups each when asynchronous, just what the batch needs when not."""
        per_worker = {i: 0 for i in range(len(self.actors))}
        for call in self.inflight.values():
            per_worker[call.worker] += 1
        if self.max_staleness == 0:
            have = len({ep.group_id for _, ep in self.buffer})
            budget = self.groups_per_update - have - len(self.inflight)
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

    def _record_discarded(self, call: _Call, why: str) -> None:
        episodes = [
            Episode(env_id=self.spec.env, task_id=call.task, split=self.spec.split, seed=call.seed + member,
                    group_id=f"{call.call_id}/{call.task}", agent=f"worker{call.worker}",
                    error=f"discarded: {why}", meta={"discarded": True, "worker": call.worker, "call": call.call_id,
                                                    "variant": call.variant})
            for member in range(self.group_size)
        ]  # fmt: skip
        self.store.write_episodes(self.spec.run_id, episodes)
        self.stats["discarded_groups"] += 1
        self.stats["discarded_episodes"] += len(episodes)
        self.stats["last_error"] = why

    def _harvest(self, timeout: float) -> None:
        """Collect finished calls; replace dead workers and record what they were playing."""
        import ray
        from ray.exceptions import RayActorError

        if not self.inflight:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=timeout)
        dead: set[int] = set()
        for ref in ready:
            call = self.inflight.pop(ref)
            try:
                ray.get(ref)
                self.stats["groups_done"] += 1
            except RayActorError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self._record_discarded(call, f"rollout worker {call.worker} died ({first[:200]})")
                dead.add(call.worker)
            except Exception as exc:  # the group raised inside a live worker
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                self._record_discarded(call, f"rollout worker {call.worker} failed: {first[:300]}")
                log.warning("rollout worker %d failed on %s: %s", call.worker, call.task, first)
        for index in dead:
            self._restart(index)

    def _restart(self, index: int) -> None:
        import ray

        # Calls still queued on the dead actor fail too: record them now, they will never return.
        for ref, call in list(self.inflight.items()):
            if call.worker == index:
                del self.inflight[ref]
                self._record_discarded(call, f"rollout worker {index} died before playing it")
        if self.stats["restarts"] >= self.max_worker_restarts:
            raise RuntimeError(
                f"rollout worker {index} died and the restart budget ({self.max_worker_restarts}) is spent; "
                f"last error: {self.stats['last_error']}"
            )
        self.stats["restarts"] += 1
        log.warning("restarting rollout worker %d (restart %d)", index, self.stats["restarts"])
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._start_worker(index)

    # ------------------------------------------------------------------ learner side

    def _fresh_window(self) -> tuple[int, int]:
        version = self.learner.step
        return max(0, version - self.max_staleness), version

    def _poll_store(self) -> int:
        """Move new episodes within the staleness window from the store into the buffer."""
        from sqlalchemy import and_, select

        from agentrl.store.models import episodes_table as e

        low, high = self._fresh_window()
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
            for i, ep in self.store.iter_episodes(self.spec.run_id, with_ids=True, policy_versions=(low, high), since_id=since)
            if i <= newest
        ]
        self.stats["stale_skipped"] += sum(1 for _, lo, hi in new if lo is not None and not (low <= lo and hi <= high))
        usable = [(i, ep) for i, ep in fresh if ep.error is None and ep.steps]  # the learner drops the rest anyway
        self.stats["failed_episodes"] += len(fresh) - len(usable)
        self.buffer.extend(usable)
        self.last_seen_id = newest
        return len(usable)

    def _take_batch(self) -> list[Episode] | None:
        """Whole groups, oldest first, once ``groups_per_update`` of them are in the buffer."""
        low, _ = self._fresh_window()
        kept = [(i, ep) for i, ep in self.buffer if ep.policy_version is not None and ep.policy_version >= low]
        self.stats["stale_skipped"] += len(self.buffer) - len(kept)
        self.buffer = kept
        order: list[str] = []
        for _, ep in self.buffer:
            if ep.group_id not in order:
                order.append(ep.group_id)
        if len(order) < self.groups_per_update:
            return None
        chosen = set(order[: self.groups_per_update])
        batch = [ep for _, ep in self.buffer if ep.group_id in chosen]
        self.buffer = [(i, ep) for i, ep in self.buffer if ep.group_id not in chosen]
        return batch

    def _wait_for_batch(self) -> list[Episode]:
        last_progress = time.monotonic()
        while True:
            batch = self._take_batch()
            if batch is not None:
                return batch
            self._top_up()
            self._harvest(self.poll_interval_s)
            if self._poll_store() > 0:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.wait_timeout_s:
                low, high = self._fresh_window()
                raise LearnerTimeout(
                    f"no fresh episodes (policy versions {low}..{high}) reached the learner in {self.wait_timeout_s:g} s: "
                    f"{len(self.actors)} workers, {len(self.inflight)} groups in flight, {self.stats['restarts']} restarts, "
                    f"{self.stats['stale_skipped']} stale and {self.stats['failed_episodes']} failed episodes skipped"
                    + (f", last worker error: {self.stats['last_error']}" if self.stats["last_error"] else "")
                    + "; check the workers (store URL, env, model) or raise wait_timeout_s"
                )

    # ------------------------------------------------------------------ the loop

    def run(self, updates: int) -> dict[str, Any]:
        """Run ``updates`` learner updates; returns the rollout/failure stats. Always cleans up."""
        import ray

        try:
            publish_weights(self.publisher, self.learner)
            self.actors = [self._start_worker(i) for i in range(self.n_workers)]
            try:
                ray.get([actor.pid.remote() for actor in self.actors], timeout=300)  # built and ready
            except Exception as exc:
                lines = [line for line in str(exc).splitlines() if line.strip()]
                raise RuntimeError(f"rollout workers failed to start: {lines[-1] if lines else type(exc).__name__}") from exc
            for _ in range(updates):
                started = time.perf_counter()
                batch = self._wait_for_batch()
                waited = time.perf_counter() - started
                lags = [self.learner.step - ep.policy_version for ep in batch]
                with self.around_update():
                    metrics = self.learner.update(batch)
                    publish_weights(self.publisher, self.learner)
                    summary = {
                        "policy_version": self.learner.step, "episodes": len(batch),
                        "rollout/success_rate": float(np.mean([ep.won for ep in batch])),
                        "rollout/mean_return": float(np.mean([ep.episode_return for ep in batch])),
                        "async/wait_seconds": waited, "async/mean_staleness": float(np.mean(lags)),
                        "async/max_staleness": int(max(lags)), "async/update_seconds": time.perf_counter() - started - waited,
                        **{f"async/{k}": v for k, v in self.stats.items() if k != "last_error"},
                        "learner": metrics,
                    }  # fmt: skip
                    if self.on_update is not None:
                        self.on_update(summary)
            return dict(self.stats)
        finally:
            self.close()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed driver needs (JSON-ready): where to read the store from, the task sampler's RNG, stats.

        Episodes read but not trained on yet are read again after a resume (``since`` stops before them).
        """
        since = min(i for i, _ in self.buffer) - 1 if self.buffer else self.last_seen_id
        return {"since": since, "rng": self.rng.bit_generator.state, "calls": self._calls, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_seen_id = int(state["since"])
        self.rng.bit_generator.state = state["rng"]
        self._calls = int(state["calls"])
        self.stats.update(state["stats"])

    def close(self) -> None:
        """Kill every worker actor (their in-flight groups are never committed). Safe to call twice."""
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        self.inflight.clear()

    def __enter__(self) -> ActorLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_weights(publisher: WeightPublisher, learner: Any) -> None:
    """Publish ``learner``'s current policy as version ``learner.step``.

    What a learner must offer (the contract the driver relies on): ``step``, and either
    ``lora_adapter()`` returning ``(tensors, adapter_config)`` when it trains LoRA adapters (only
    they are published: a few MB instead of the whole model, and vLLM loads them as they are), or
    ``full_state_dict()`` (an FSDP learner: the unsharded weights, gathered on rank 0), or ``model``
    (whose ``state_dict()`` is published).
    """
    adapter = learner.lora_adapter() if hasattr(learner, "lora_adapter") else None
    if adapter is not None:
        tensors, config = adapter
        publisher.publish_adapter(tensors, config, learner.step)
        return
    full = getattr(learner, "full_state_dict", None)
    publisher.publish(full() if full is not None else learner.model.state_dict(), learner.step)
