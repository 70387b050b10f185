"""The episode runner: play many episodes at once with any actor and record every turn.

One loop serves evaluation (scripted agents and models), training rollouts and expert
demonstrations; what differs is the :class:`~agentrl.rollout.actors.Actor`. Per turn, every live
episode is given to the actor at once (a model answers them in one batched ``generate`` call), and
the envs step in worker threads (engines such as TextWorld's interpreter or ScienceWorld's JVM spend
their time outside Python's lock, and even where they do not the threads overlap env work with
bookkeeping). Finished episodes are handed to ``on_episode`` (e.g. ``Store.write_episode``) as soon
as they end, so a crash later loses nothing.

Per task, ``group_size`` episodes run with seeds ``seed, seed + 1, ...`` and one ``group_id``
(the groups GRPO normalises over). An episode ends when the env terminates or truncates, when the
runner's ``max_turns`` is reached, or when the actor says the context is full (the last two end it
as truncated, with ``meta["truncated_reason"]`` saying why). An env or actor that raises fails that
episode (``episode.error``), never the run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agentrl.core import TextEnv
from agentrl.rollout.actors import Actor, Decision, Live
from agentrl.trajectory import Episode, Step, jsonable


@dataclass
class _Job:
    task_id: str
    seed: int
    group_id: str


@dataclass
class _Running:
    live: Live
    episode: Episode


class Collector:
    """Play episodes of ``actor`` on environments made by ``env_fn``.

    ``max_parallel`` envs live at once (each built once by ``env_fn`` and reused; :meth:`close`
    closes them). Steps run in worker threads; resets run one at a time unless ``parallel_reset``
    (TextWorld's game generator, used on a game's first reset, is not thread-safe).
    """

    def __init__(
        self,
        env_fn: Callable[[], TextEnv],
        actor: Actor,
        *,
        env_id: str,
        max_parallel: int = 8,
        max_turns: int | None = None,
        split: str | None = None,
        on_episode: Callable[[Episode], None] | None = None,
        parallel_reset: bool = False,
    ):
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.env_fn = env_fn
        self.actor = actor
        self.env_id = env_id
        self.max_parallel = max_parallel
        self.max_turns = max_turns
        self.split = split
        self.on_episode = on_episode
        self.parallel_reset = parallel_reset
        self._envs: list[TextEnv] = []
        self.stats = {"turns": 0, "act_seconds": 0.0, "env_seconds": 0.0, "tokens_generated": 0}

    def close(self) -> None:
        """Close every env this collector built."""
        for env in self._envs:
            env.close()
        self._envs.clear()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, tasks: Sequence[str], *, group_size: int = 1, seed: int = 0) -> list[Episode]:
        """Play ``group_size`` episodes of every task; returns them in completion order."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        pending = deque(
            _Job(task, seed + member, f"{task}#{index}") for index, task in enumerate(tasks) for member in range(group_size)
        )
        free = list(self._envs)
        live: list[_Running] = []
        finished: list[Episode] = []
        with ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="agentrl-env") as pool:
            while pending or live:
                starting = []
                while pending and len(live) + len(starting) < self.max_parallel:
                    env = free.pop() if free else self._new_env()
                    starting.append((env, pending.popleft()))
                started = pool.map(lambda pair: self._start(*pair), starting) if self.parallel_reset else (
                    self._start(*pair) for pair in starting
                )
                for item in started:
                    if item.live.state is None:  # the reset or the actor's start failed
                        self._finish(item, free, finished)
                    else:
                        live.append(item)
                acting = []
                for item in live:
                    if self.max_turns is not None and item.episode.turns >= self.max_turns:
                        self._truncate(item, "max_turns")
                        self._finish(item, free, finished)
                    else:
                        acting.append(item)
                if not acting:
                    live = []
                    continue
                version = self.actor.version
                start = time.perf_counter()
                decisions = self.actor.act([item.live for item in acting])
                act_seconds = time.perf_counter() - start
                self.stats["act_seconds"] += act_seconds
                work = []
                for item, decision in zip(acting, decisions, strict=True):
                    self.stats["tokens_generated"] += decision.tokens
                    if decision.action is None:
                        if decision.truncate:
                            self._truncate(item, decision.truncate)
                        item.episode.error = decision.error
                        self._finish(item, free, finished)
                    else:
                        work.append((item, decision, act_seconds, version))
                live = []
                for item, done in pool.map(lambda args: self._step(*args), work):
                    self.stats["turns"] += 1
                    if done:
                        self._finish(item, free, finished)
                    else:
                        live.append(item)
        return finished

    # -- one episode's pieces (run in worker threads) --------------------------------------------

    def _new_env(self) -> TextEnv:
        env = self.env_fn()
        self._envs.append(env)
        return env

    def _start(self, env: TextEnv, job: _Job) -> _Running:
        episode = Episode(
            env_id=self.env_id, task_id=job.task_id, split=self.split, seed=job.seed, group_id=job.group_id,
            agent=self.actor.name, policy_version=self.actor.version,
        )  # fmt: skip
        item = _Running(Live(env, "", {}), episode)
        try:
            obs, info = env.reset(seed=job.seed, options={"task": job.task_id})
            episode.instruction = info.get("instruction")
            episode.first_observation = obs
            episode.meta["reset_info"] = jsonable(info)
            item.live.obs, item.live.info = obs, info
            self.actor.start(item.live, job.seed)
        except Exception as exc:  # a failing episode never kills a run
            episode.error = f"{type(exc).__name__}: {exc}"
            item.live.state = None
        return item

    @staticmethod
    def _truncate(item: _Running, reason: str) -> None:
        item.episode.meta["truncated_reason"] = reason
        if item.episode.steps:
            item.episode.steps[-1].truncated = True

    def _step(self, item: _Running, decision: Decision, act_seconds: float, version: int | None) -> tuple[_Running, bool]:
        episode, live = item.episode, item.live
        start = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = live.env.step(decision.action)
        except Exception as exc:  # a failing episode never kills a run
            episode.error = f"{type(exc).__name__}: {exc}"
            return item, True
        env_seconds = time.perf_counter() - start
        self.stats["env_seconds"] += env_seconds
        step_info = jsonable(info)
        step_info.update(decision.info)
        episode.steps.append(
            Step(
                observation=live.obs, action=decision.action or "", reward=reward, terminated=terminated,
                truncated=truncated, info=step_info, env_seconds=env_seconds, generation_seconds=act_seconds,
                policy_version=version,
            )
        )  # fmt: skip
        episode.won, episode.progress = bool(info["won"]), float(info["progress"])
        live.obs, live.info = obs, info
        done = terminated or truncated
        if not done:
            try:
                self.actor.observe(live)
            except Exception as exc:
                episode.error = f"{type(exc).__name__}: {exc}"
                return item, True
        return item, done

    def _finish(self, item: _Running, free: list[TextEnv], finished: list[Episode]) -> None:
        episode = item.episode
        episode.finished_at = time.time()
        if item.live.state is not None:
            kept = self.actor.finish(item.live)
            episode.transcripts = list(kept.get("transcripts", []))
            episode.meta.update(kept.get("meta", {}))
        if episode.transcripts:
            episode.meta["tokens_generated"] = episode.tokens_generated
        free.append(item.live.env)
        finished.append(episode)
        if self.on_episode is not None:
            self.on_episode(episode)
