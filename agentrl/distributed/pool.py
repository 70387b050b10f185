"""The rollout workers as the actor-learner driver sees them: submit a group, wait for finished ones.

:class:`RayWorkerPool` runs :class:`~agentrl.distributed.worker.RolloutWorker` as Ray actors (the
real thing). The driver (:mod:`agentrl.distributed.actor_learner`) only uses the small interface
below, so the same driver, batching included, can also be run on a simulated pool with a fake clock
(:mod:`agentrl.distributed.simulated`, for the duration-bias benchmark and tests).

A pool's contract: :meth:`submit` queues one group on a worker (the worker writes it to the store
in one transaction before the call returns); :meth:`wait` returns as soon as at least one call has
finished (or after ``timeout`` seconds), with the driver-clock time each was seen finished;
:meth:`forget` drops the calls queued on a dead worker (they will never return) and :meth:`restart`
replaces it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agentrl.distributed.worker import WorkerSpec


@dataclass
class Call:
    """One group asked of one worker."""

    worker: int
    call_id: str
    task: str
    seed: int
    variant: str
    submitted_version: int  # the learner's version when it was submitted
    group_size: int
    submitted_at: float = 0.0  # driver clock


@dataclass
class Finished:
    """A call that came back: played and stored, or failed (``error``, one line), or lost with its worker."""

    call: Call
    finished_at: float  # driver clock when it was seen finished
    error: str | None = None
    worker_died: bool = False


class WorkerPool(Protocol):
    size: int

    def start(self) -> None: ...

    def submit(self, call: Call) -> None: ...

    def wait(self, timeout: float) -> list[Finished]: ...

    def in_flight(self) -> list[Call]: ...

    def forget(self, index: int) -> list[Call]: ...

    def restart(self, index: int) -> None: ...

    def pids(self) -> list[int]: ...

    def close(self) -> None: ...


class RayWorkerPool:
    """``size`` :class:`~agentrl.distributed.worker.RolloutWorker` Ray actors built from ``spec``."""

    def __init__(self, spec: WorkerSpec, size: int, *, cpus: float = 1.0, gpus: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.spec, self.size, self.cpus, self.gpus, self.clock = spec, size, cpus, gpus, clock
        self.actors: list[Any] = []
        self._refs: dict[Any, Call] = {}  # ObjectRef -> call
        self._actor_class: Any = None

    def _start_worker(self, index: int) -> Any:
        from agentrl.distributed.worker import remote_worker_class

        if self._actor_class is None:
            self._actor_class = remote_worker_class(self.cpus, self.gpus)
        return self._actor_class.remote(self.spec, index)

    def start(self) -> None:
        """Build every worker and wait until each has loaded its model (a one-line error if one cannot)."""
        import ray

        self.actors = [self._start_worker(i) for i in range(self.size)]
        try:
            ray.get([actor.pid.remote() for actor in self.actors], timeout=300)
        except Exception as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise RuntimeError(f"rollout workers failed to start: {lines[-1] if lines else type(exc).__name__}") from exc

    def pids(self) -> list[int]:
        import ray

        return ray.get([actor.pid.remote() for actor in self.actors], timeout=120)

    def submit(self, call: Call) -> None:
        ref = self.actors[call.worker].collect.remote(call.call_id, call.task, call.group_size, call.seed, call.variant)
        self._refs[ref] = call

    def in_flight(self) -> list[Call]:
        return list(self._refs.values())

    def wait(self, timeout: float) -> list[Finished]:
        import ray
        from ray.exceptions import RayActorError

        if not self._refs:
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too, without waiting
            ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        now = self.clock()
        out = []
        for ref in ready:
            call = self._refs.pop(ref)
            try:
                ray.get(ref)
                out.append(Finished(call, now))
            except RayActorError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.append(Finished(call, now, f"rollout worker {call.worker} died ({first[:200]})", worker_died=True))
            except Exception as exc:  # the group raised inside a live worker
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                out.append(Finished(call, now, f"rollout worker {call.worker} failed: {last[:300]}"))
        return out

    def forget(self, index: int) -> list[Call]:
        """Drop (and return) the calls still queued on worker ``index``: a dead actor never answers them."""
        lost = [call for call in self._refs.values() if call.worker == index]
        self._refs = {ref: call for ref, call in self._refs.items() if call.worker != index}
        return lost

    def restart(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._start_worker(index)

    def close(self) -> None:
        """Kill every worker actor (their in-flight groups are never committed). Safe to call twice."""
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        self._refs.clear()
