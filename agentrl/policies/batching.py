"""A batching queue in front of a policy's ``generate``: concurrent requests share one forward pass.

Why: a server answering requests one at a time runs the model at batch size 1 however many clients
wait; transformers decoding costs about the same per step at batch 1 and batch 32 on a GPU (and far
less than 32x on a CPU), so gathering the requests that arrive together is most of the throughput an
HTTP server can get out of ``HFPolicy`` (``benchmarks/serve_batching.py`` measures it).

How: one worker thread owns the policy. It takes the first waiting job, then everything else that is
queued (waiting ``max_wait_s`` for stragglers), groups the jobs by sampling settings (one
``generate`` call needs one ``SamplingParams``) and runs each group as one call, at most
``max_batch_rows`` rows at a time. Each row carries its own seed (``HFPolicy.generate(seeds=...)``),
so a seeded request gets the same tokens whether it ran alone or beside others. Jobs are answered
through ``concurrent.futures.Future``; streaming jobs also get each token as it is sampled.

:meth:`GenerateBatcher.call` runs any other function on the policy (a weight update) on the same
thread, in arrival order: requests queued before it finish with the old weights, requests queued
after it start with the new ones, and no ``generate`` call ever sees weights change under it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from agentrl.policies.base import Completion, SamplingParams


@dataclass
class GenerateJob:
    """Rows of one request: ``prompts[i]`` sampled with ``seeds[i]`` (``None``: unseeded)."""

    prompts: list[list[int]]
    seeds: list[int | None]
    sampling: SamplingParams
    on_token: Callable[[int, int], None] | None = None  # (row of this job, token id), from the worker thread
    future: Future = field(default_factory=Future)


@dataclass
class CallJob:
    """A function to run on the thread that owns the policy, between two ``generate`` calls."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class GenerateBatcher:
    """Serialises access to ``policy`` and merges concurrent jobs into batched ``generate`` calls.

    ``policy.generate`` must accept ``seeds=`` and ``on_token=`` (as :class:`~agentrl.policies.hf.HFPolicy`).
    ``stats`` counts jobs, rows and ``generate`` calls (the server reports them on ``/metrics``).
    """

    def __init__(self, policy: Any, *, max_batch_rows: int = 64, max_wait_s: float = 0.002):
        self.policy = policy
        self.max_batch_rows = max(1, int(max_batch_rows))
        self.max_wait_s = max_wait_s
        self.stats = {"jobs": 0, "rows": 0, "generate_calls": 0, "largest_batch": 0}
        self._queue: queue.Queue[GenerateJob | CallJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="agentrl-generate", daemon=True)
        self._thread.start()

    def submit(self, job: GenerateJob) -> Future:
        """Queue ``job``; its future resolves to one :class:`Completion` per row (or the error raised)."""
        if len(job.prompts) != len(job.seeds):
            raise ValueError("a job needs one seed entry per prompt")
        self._queue.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the policy's thread after every job queued before it; the future holds its result."""
        job = CallJob(fn)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # -- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        pending: GenerateJob | CallJob | None = None
        while True:
            first = pending if pending is not None else self._queue.get()
            pending = None
            if first is None:
                return
            if isinstance(first, CallJob):
                self._call(first)
                continue
            jobs, closing = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while sum(len(j.prompts) for j in jobs) < self.max_batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                    break
                if isinstance(nxt, CallJob):  # a barrier: what came before it runs first
                    pending = nxt
                    break
                jobs.append(nxt)
            for group in self._groups(jobs):
                self._run(group)
            if closing:
                return

    @staticmethod
    def _call(job: CallJob) -> None:
        try:
            job.future.set_result(job.fn())
        except Exception as exc:  # the caller hears about it; the worker lives on
            job.future.set_exception(exc)

    def _groups(self, jobs: list[GenerateJob]) -> list[list[GenerateJob]]:
        """Jobs with equal sampling settings (seed aside), in arrival order, cut at ``max_batch_rows``."""
        by_key: dict[SamplingParams, list[list[GenerateJob]]] = {}
        for job in jobs:
            batches = by_key.setdefault(replace(job.sampling, seed=None), [[]])
            if batches[-1] and sum(len(j.prompts) for j in batches[-1]) + len(job.prompts) > self.max_batch_rows:
                batches.append([])
            batches[-1].append(job)
        return [batch for batches in by_key.values() for batch in batches]

    def _run(self, jobs: list[GenerateJob]) -> None:
        prompts = [p for job in jobs for p in job.prompts]
        seeds = [s for job in jobs for s in job.seeds]
        owners: list[tuple[GenerateJob, int]] = [(job, row) for job in jobs for row in range(len(job.prompts))]
        streaming = any(job.on_token is not None for job in jobs)

        def on_token(row: int, token: int) -> None:
            job, local = owners[row]
            if job.on_token is not None:
                job.on_token(local, token)

        try:
            completions: list[Completion] = self.policy.generate(
                prompts, replace(jobs[0].sampling, seed=None), seeds=seeds, on_token=on_token if streaming else None
            )
        except Exception as exc:  # every waiting request hears about it; the worker lives on
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.stats["jobs"] += len(jobs)
        self.stats["rows"] += len(prompts)
        self.stats["generate_calls"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(prompts))
        start = 0
        for job in jobs:
            job.future.set_result(completions[start : start + len(job.prompts)])
            start += len(job.prompts)
