"""The real actor-learner driver on a simulated multi-armed bandit whose arms take different times.

What is simulated: the rollout workers (:class:`SimulatedPool`, a discrete-event simulation on a
:class:`FakeClock`) and the learner (:class:`BanditLearner`, a softmax policy over the arms that
records each batch's policy-gradient estimate). What is real: the driver
(:class:`~agentrl.distributed.actor_learner.ActorLearner`: submission, harvest, batching, staleness,
timeouts), the trajectory store it follows (SQLite), the weight publisher the workers read the
policy from, and the learner's advantage and shaping plug-ins (``dr_grpo``, ``duration``,
``inclusion``). Used by ``benchmarks/duration_bias.py`` and ``tests/test_duration_bias.py`` to
measure whether a batching plus a weighting gives an unbiased gradient.

Each worker plays its queued groups one after another. A group of ``G`` episodes draws ``G`` arms
from the published policy (one pull per episode, played in parallel), each pull lasting the arm's
``seconds`` times a uniform jitter in ``[1 - jitter, 1 + jitter]``; the group returns when its
slowest pull ends, and is written to the store at that moment.
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentrl.distributed.pool import Call, Finished
from agentrl.trajectory import Episode, Step


class FakeClock:
    """Simulated seconds; the pool advances it, the driver reads it."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Arm:
    name: str
    seconds: float  # mean duration of one pull
    reward: float  # mean reward
    reward_std: float = 0.0


@dataclass(frozen=True)
class Bandit:
    arms: tuple[Arm, ...]
    jitter: float = 0.2  # each pull lasts seconds * U[1 - jitter, 1 + jitter]

    @property
    def mean_rewards(self) -> np.ndarray:
        return np.array([a.reward for a in self.arms])

    def exact_gradient(self, theta: np.ndarray) -> np.ndarray:
        """``grad_theta E_pi[r] = pi * (mu - pi . mu)`` for a softmax policy over the arms."""
        pi = softmax(theta)
        mu = self.mean_rewards
        return pi * (mu - pi @ mu)


def softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max())
    return z / z.sum()


@dataclass
class _Running:
    call: Call
    episodes: list[Episode] = field(default_factory=list)
    ends_at: float = 0.0


class SimulatedPool:
    """``size`` simulated workers on ``clock`` (the driver's :class:`~agentrl.distributed.pool.WorkerPool`)."""

    def __init__(self, bandit: Bandit, size: int, store: Any, run_id: int, weights_dir: str, clock: FakeClock,
                 seed: int = 0):  # fmt: skip
        self.bandit, self.size, self.store, self.run_id = bandit, size, store, run_id
        self.weights_dir, self.clock = weights_dir, clock
        self.rng = np.random.default_rng(seed)
        self.queues: list[list[Call]] = [[] for _ in range(size)]  # per worker: running call first, then queued
        self.running: dict[int, _Running] = {}  # worker -> the group it is playing
        self.events: list[tuple[float, int, int]] = []  # (ends_at, tiebreak, worker)
        self._ticks = 0
        self.version, self.theta = -1, np.zeros(len(bandit.arms))

    def start(self) -> None:
        return None

    def pids(self) -> list[int]:
        return []

    def in_flight(self) -> list[Call]:
        return [call for queue in self.queues for call in queue]

    def submit(self, call: Call) -> None:
        self.queues[call.worker].append(call)
        if call.worker not in self.running:
            self._begin(call.worker)

    def _policy(self) -> tuple[int, np.ndarray]:
        """The newest published policy, as a rollout worker would load it between groups."""
        from agentrl.distributed.weights import load_latest

        published = load_latest(self.weights_dir, newer_than=self.version if self.version >= 0 else None)
        if published is not None:
            self.version, self.theta = published.version, published.tensors["theta"].double().numpy()
        return self.version, self.theta

    def _begin(self, worker: int) -> None:
        call = self.queues[worker][0]
        version, theta = self._policy()
        pi = softmax(theta)
        arms = self.rng.choice(len(self.bandit.arms), size=call.group_size, p=pi)
        episodes, longest = [], 0.0
        for member, a in enumerate(arms):
            arm = self.bandit.arms[a]
            seconds = arm.seconds * self.rng.uniform(1 - self.bandit.jitter, 1 + self.bandit.jitter)
            reward = arm.reward + arm.reward_std * self.rng.standard_normal()
            longest = max(longest, seconds)
            step = Step(observation="pull an arm", action=arm.name, reward=float(reward), env_seconds=float(seconds),
                        policy_version=version, info={"arm": int(a)})  # fmt: skip
            episodes.append(Episode(env_id="bandit", task_id=call.task, seed=call.seed + member,
                                    group_id=f"{call.call_id}/{call.task}", policy_version=version, steps=[step],
                                    meta={"worker": worker, "call": call.call_id, "variant": call.variant}))  # fmt: skip
        run = _Running(call, episodes, self.clock.now + longest)
        self.running[worker] = run
        self._ticks += 1
        heapq.heappush(self.events, (run.ends_at, self._ticks, worker))

    def wait(self, timeout: float) -> list[Finished]:
        """Advance the clock to the next group's end (at most ``timeout``); return what ended then."""
        if not self.events or self.events[0][0] > self.clock.now + timeout:
            self.clock.now += timeout
            return []
        ends_at = self.events[0][0]
        self.clock.now = max(self.clock.now, ends_at)
        done = []
        while self.events and self.events[0][0] == ends_at:
            _, _, worker = heapq.heappop(self.events)
            run = self.running.pop(worker)
            self.store.write_episodes(self.run_id, run.episodes)  # one transaction, as a rollout worker does
            self.queues[worker].pop(0)
            done.append(Finished(run.call, self.clock.now))
            if self.queues[worker]:
                self._begin(worker)
        return done

    def forget(self, index: int) -> list[Call]:
        raise RuntimeError("simulated workers do not die")

    def restart(self, index: int) -> None:
        raise RuntimeError("simulated workers do not die")

    def close(self) -> None:
        self.queues = [[] for _ in range(self.size)]
        self.running.clear()
        self.events.clear()


class _Policy(torch.nn.Module):
    def __init__(self, theta: np.ndarray):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64), requires_grad=False)


ESTIMATORS = ("unweighted", "duration", "inclusion")


class BanditLearner:
    """A softmax policy over the arms; each update records the batch's gradient estimate under every weighting.

    The advantage is ``dr_grpo`` (reward minus the group mean: an unbiased policy gradient scaled by
    ``(G - 1) / G``), then, per estimator, the ``duration`` or ``inclusion`` shaper (or none). The
    estimate is the learner's: the batch mean over episodes of ``A_i * grad log pi(a_i)``. ``shaping``
    is what the driver is told the learner trains with, and which estimator ``lr > 0`` follows.
    """

    def __init__(self, bandit: Bandit, theta: Sequence[float], *, shaping: Sequence[str] = (), lr: float = 0.0):
        from agentrl.algorithms.duration import DurationWeights, InclusionWeights
        from agentrl.algorithms.grpo import DrGRPO
        from agentrl.training.config import LearnerConfig

        self.bandit = bandit
        self.advantage, self.duration, self.inclusion = DrGRPO(), DurationWeights(), InclusionWeights()
        self.config = LearnerConfig(shaping=list(shaping))
        self.model = _Policy(np.asarray(theta, dtype=np.float64))
        self.lr, self.step = lr, 0
        self.batches: list[dict[str, Any]] = []  # per update: n, theta, {estimator: gradient estimate}

    @property
    def theta(self) -> np.ndarray:
        return self.model.theta.detach().numpy().copy()

    def update(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        from agentrl.algorithms.registry import Reduce, Steps

        n = len(episodes)
        groups = [ep.group_id for ep in episodes]
        inclusion = [ep.meta.get("inclusion_probability") for ep in episodes]
        steps = Steps(
            traj_index=torch.arange(n), turn=torch.zeros(n, dtype=torch.long),
            returns=torch.tensor([ep.episode_return for ep in episodes], dtype=torch.float64), group_ids=groups,
            rewards=torch.tensor([ep.steps[0].reward for ep in episodes], dtype=torch.float64),
            env_seconds=torch.tensor([ep.steps[0].env_seconds for ep in episodes], dtype=torch.float64),
            trainable=torch.ones(n, dtype=torch.bool), observations=[ep.steps[0].observation for ep in episodes],
            inclusion=None if any(p is None for p in inclusion) else torch.tensor(inclusion, dtype=torch.float64),
        )  # fmt: skip
        reduce = Reduce()
        advantages = self.advantage(steps, reduce).double()  # [n]
        theta = self.theta
        pi = softmax(theta)
        arms = np.array([ep.steps[0].info["arm"] for ep in episodes])
        score = np.eye(len(pi))[arms] - pi  # [n, K] grad_theta log pi(a_i)
        shaped = {"unweighted": advantages, "duration": self.duration(steps, advantages, reduce).double()}
        if steps.inclusion is not None:
            shaped["inclusion"] = self.inclusion(steps, advantages, reduce).double()
        estimates = {name: (adv.numpy()[:, None] * score).mean(axis=0) for name, adv in shaped.items()}
        self.batches.append({"n": n, "theta": theta, "estimates": estimates})
        if self.lr:
            follow = next((s for s in self.config.shaping if s in shaped), "unweighted")
            with torch.no_grad():
                self.model.theta += torch.tensor(self.lr * estimates[follow])
        self.step += 1
        return [{}]


@dataclass
class SimulationResult:
    batches: list[dict[str, Any]]  # BanditLearner.batches
    stats: dict[str, Any]  # the driver's rollout stats
    seconds: float  # simulated seconds


def simulate(
    bandit: Bandit,
    theta: Sequence[float],
    *,
    batching: str,
    updates: int,
    workers: int = 8,
    group_size: int = 4,
    groups_per_update: int = 8,
    max_staleness: int = 1000,
    window_s: float | None = None,
    shaping: Sequence[str] = (),
    lr: float = 0.0,
    seed: int = 0,
) -> SimulationResult:
    """Run ``updates`` updates of the real driver on the simulated bandit; a fresh in-memory store each call."""
    from agentrl.distributed.actor_learner import ActorLearner
    from agentrl.distributed.worker import WorkerSpec
    from agentrl.store import open_store

    clock = FakeClock()
    store = open_store("sqlite://")
    try:
        with tempfile.TemporaryDirectory(prefix="agentrl-bandit-") as weights_dir:
            run_id = store.start_run("bandit", env_id="bandit", kind="train")
            spec = WorkerSpec(model="bandit", env="bandit", store="sqlite://", run_id=run_id, weights_dir=weights_dir)
            learner = BanditLearner(bandit, theta, shaping=shaping, lr=lr)
            pool = SimulatedPool(bandit, workers, store, run_id, weights_dir, clock, seed=seed)
            driver = ActorLearner(
                learner, store, spec, workers=workers, group_size=group_size, groups_per_update=groups_per_update,
                sample_task=lambda rng: ("arms", "default"), max_staleness=max_staleness, batching=batching,
                window_s=window_s, wait_timeout_s=1e9, poll_interval_s=1e6, seed=seed + 1, pool=pool, clock=clock,
            )  # fmt: skip
            stats = driver.run(updates)
            return SimulationResult(learner.batches, stats, clock.now)
    finally:
        store.close()


def mean_estimate(batches: Sequence[dict[str, Any]], estimator: str, scale: float = 1.0,
                  block: int = 1) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The learner's per-batch gradient estimates averaged over batches, and the standard error of that mean.

    ``scale`` (``G / (G - 1)``) undoes Dr.GRPO's group-mean baseline, whose expected gradient is
    ``(G - 1) / G`` of the policy gradient. The standard error is over means of ``block``
    consecutive batches (blocks absorb the correlation between neighbouring windows).
    """
    values = np.array([b["estimates"][estimator] for b in batches]) * scale  # [B, K]
    usable = len(values) // block * block
    blocks = values[:usable].reshape(-1, block, values.shape[1]).mean(axis=1)
    return values.mean(axis=0), blocks.std(axis=0, ddof=1) / np.sqrt(len(blocks))
