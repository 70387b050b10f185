"""Duration-aware updates, measured: which batching biases the policy gradient, and which weights undo it.

The real actor-learner driver (:class:`agentrl.distributed.actor_learner.ActorLearner`: submission,
harvest, the SQLite store, the batching, the learner's ``dr_grpo``/``duration``/``inclusion``
plug-ins) runs with simulated workers on a fake clock (:mod:`agentrl.distributed.simulated`) on a
three-armed bandit whose arms take different times, like an ML-engineering agent's programs:

| arm | seconds per pull | reward |
|---|---|---|
| crash | 0.5 (+-20%) | -1 |
| quick best | 1.0 (+-20%) | 1.0 +- 0.1 |
| slow mediocre | 6.0 (+-20%) | 0.5 +- 0.1 |

The fastest arm is not the best and the best is not the slowest, so no weighting can look right by
favouring speed or slowness. The policy is held fixed (learning rate 0) so the learner's gradient
estimates can be compared with the exact gradient ``pi * (mu - pi . mu)``; each seed averages the
learner's per-batch estimate over its batches (times ``G / (G - 1)``, undoing Dr.GRPO's group-mean
baseline), and the table gives the mean over seeds minus the exact gradient, with a 95% confidence
interval (t over seeds). Settings: 8 workers, groups of 8 pulls played in parallel.

* ``group`` batching (the default; mle_async): whole groups, 4 per update, all used (max_staleness
  high enough that none is skipped); pi uniform.
* ``window`` batching (the paper's arrival model): each worker loops over single groups, the learner
  takes what finished within each 8 s window and drops groups that started in an earlier one
  (max_staleness 0); pi = softmax(0, 0, -2), so most groups hold no slow pull and the slow ones are
  dropped selectively. Also with max_staleness 1 and 4 s windows.
* ``group`` batching with max_staleness 1: the same driver when the staleness bound bites.
* the paper's own arrival model, where each actor spends a share pi(a) of its time on arm a, so
  results arrive in proportion to pi(a) / dt_a: the expected gradients, computed exactly (no
  simulation), of REINFORCE with and without dt weights.

``--power`` replays the two configurations of ``tests/test_duration_bias.py`` over other seeds and
records the distribution of the test's z statistics (the test's power). Writes
``benchmarks/results/duration_bias.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import numpy as np
from _common import write_result

from agentrl.distributed.simulated import Arm, Bandit, mean_estimate, simulate

BANDIT = Bandit((Arm("crash", 0.5, -1.0), Arm("quick best", 1.0, 1.0, 0.1), Arm("slow mediocre", 6.0, 0.5, 0.1)))
GROUP_SIZE, WORKERS = 8, 8

CONFIGS: dict[str, dict[str, Any]] = {
    "group": dict(theta=[0.0, 0.0, 0.0], batching="group", max_staleness=1000, groups_per_update=4, updates=40),
    "window": dict(theta=[0.0, 0.0, -2.0], batching="window", window_s=8.0, max_staleness=0, updates=40,
                   shaping=["inclusion"]),
    "window_staleness_1": dict(theta=[0.0, 0.0, -2.0], batching="window", window_s=4.0, max_staleness=1, updates=80,
                               shaping=["inclusion"]),
    "group_staleness_1": dict(theta=[0.0, 0.0, 0.0], batching="group", max_staleness=1, groups_per_update=4,
                              updates=40),
}  # fmt: skip
#: tests/test_duration_bias.py's two statistical tests, exactly (their seed is 0; --power uses 1000 + i).
TEST_CONFIGS: dict[str, dict[str, Any]] = {
    "test_window": dict(theta=[0.0, 0.0, -2.0], batching="window", window_s=8.0, max_staleness=0, updates=48,
                        shaping=["inclusion"]),
    "test_group": dict(theta=[0.0, 0.0, 0.0], batching="group", max_staleness=1000, groups_per_update=4, updates=16),
}  # fmt: skip


def one_run(job: tuple[str, dict[str, Any], int]) -> dict[str, Any]:
    """One seed of one configuration: per estimator the mean estimate and its within-run standard error."""
    import torch

    torch.set_num_threads(1)
    name, config, seed = job
    config = dict(config)
    theta = np.array(config.pop("theta"))
    started = time.perf_counter()
    config.setdefault("workers", WORKERS)
    config.setdefault("group_size", GROUP_SIZE)
    result = simulate(BANDIT, theta, seed=seed, **config)
    out: dict[str, Any] = {"config": name, "seed": seed, "wall_seconds": time.perf_counter() - started,
                           "simulated_seconds": result.seconds, "batches": len(result.batches),
                           "episodes": int(sum(b["n"] for b in result.batches)),
                           "stats": {k: v for k, v in result.stats.items() if k != "last_error"}, "estimators": {}}  # fmt: skip
    exact = BANDIT.exact_gradient(theta)
    for estimator in result.batches[0]["estimates"]:
        mean, se = mean_estimate(result.batches, estimator, config["group_size"] / (config["group_size"] - 1))
        out["estimators"][estimator] = {"mean": mean.tolist(), "se": se.tolist(), "z": ((mean - exact) / se).tolist()}
    return out


def summarise(runs: list[dict[str, Any]], theta: np.ndarray) -> dict[str, Any]:
    """Across seeds: mean estimate, bias = mean - exact, its 95% confidence interval and z, per arm."""
    from scipy import stats as sps

    exact = BANDIT.exact_gradient(theta)
    table: dict[str, Any] = {"exact": exact.tolist(), "seeds": len(runs), "estimators": {}}
    for estimator in runs[0]["estimators"]:
        means = np.array([r["estimators"][estimator]["mean"] for r in runs])  # [seeds, K]
        within = np.array([r["estimators"][estimator]["se"] for r in runs])
        mean, sd = means.mean(axis=0), means.std(axis=0, ddof=1)
        se = sd / np.sqrt(len(runs))
        half = sps.t.ppf(0.975, len(runs) - 1) * se
        table["estimators"][estimator] = {
            "mean": mean.tolist(), "bias": (mean - exact).tolist(), "ci95_half_width": half.tolist(),
            "z": ((mean - exact) / se).tolist(),
            "sd_over_seeds": sd.tolist(), "mean_within_run_se": within.mean(axis=0).tolist(),  # SE calibration
        }  # fmt: skip
    table["stats"] = {k: float(np.mean([r["stats"][k] for r in runs])) for k in runs[0]["stats"]}
    table["episodes_per_seed"] = float(np.mean([r["episodes"] for r in runs]))
    return table


def paper_model(theta: np.ndarray) -> dict[str, Any]:
    """Expected REINFORCE gradients when results arrive in proportion to pi(a) / dt_a (the paper's model)."""
    pi = np.exp(theta - theta.max())
    pi /= pi.sum()
    dt = np.array([a.seconds for a in BANDIT.arms])
    mu = BANDIT.mean_rewards
    arrivals = pi / dt / (pi / dt).sum()  # the batch's make-up
    score = np.eye(len(pi)) - pi  # row a: grad log pi(a)
    plain = (arrivals * mu) @ score  # E over the batch of r * grad log pi
    weights = dt / (arrivals @ dt)  # dt / mean(dt) in expectation
    weighted = (arrivals * weights * mu) @ score
    return {"arrival_share": arrivals.tolist(), "exact": ((pi * mu) @ score).tolist(),
            "unweighted": plain.tolist(), "dt_weighted": weighted.tolist()}  # fmt: skip


def power(runs: list[dict[str, Any]], threshold: float = 4.0) -> dict[str, Any]:
    """The tests' z statistics over seeds, and how often each assertion would hold.

    Window test: its weighted estimate must be within ``threshold`` standard errors of the exact
    gradient on every arm. Were the weights wrong in the simplest way (none: the estimate is the
    unweighted one), that assertion fails when any arm's unweighted |z| reaches the threshold, so
    "caught_any_arm" / seeds is the test's power against that error. Group test: likewise with the
    duration weights as the wrong estimator.
    """
    window = [r for r in runs if r["config"] == "test_window"]
    group = [r for r in runs if r["config"] == "test_group"]
    z_plain = np.array([r["estimators"]["unweighted"]["z"] for r in window])  # [seeds, arms]
    z_incl = np.array([r["estimators"]["inclusion"]["z"] for r in window])
    z_dur = np.array([r["estimators"]["duration"]["z"] for r in group])
    z_group = np.array([r["estimators"]["unweighted"]["z"] for r in group])

    def spread(z: np.ndarray) -> dict[str, list[float]]:
        return {"mean": z.mean(axis=0).round(2).tolist(), "sd": z.std(axis=0, ddof=1).round(2).tolist(),
                "min": z.min(axis=0).round(2).tolist(), "max": z.max(axis=0).round(2).tolist()}  # fmt: skip

    return {
        "threshold": threshold, "seeds": len(window),
        "window": {"unweighted_z": spread(z_plain), "inclusion_z": spread(z_incl),
                   "caught_slow_arm": int((z_plain[:, 2] < -threshold).sum()),
                   "caught_any_arm": int((np.abs(z_plain) >= threshold).any(axis=1).sum()),
                   "inclusion_passed": int((np.abs(z_incl) < threshold).all(axis=1).sum())},
        "group": {"duration_z": spread(z_dur), "unweighted_z": spread(z_group),
                  "caught_both_arms": int(((z_dur[:, 0] > threshold) & (z_dur[:, 1] < -threshold)).sum()),
                  "caught_any_arm": int((np.abs(z_dur) >= threshold).any(axis=1).sum()),
                  "unweighted_passed": int((np.abs(z_group) < threshold).all(axis=1).sum())},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--power", type=int, default=0, metavar="SEEDS", help="replay the tests' configurations")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    jobs = [(name, CONFIGS[name], seed) for name in args.configs for seed in range(args.seeds)]
    jobs += [(name, config, 1000 + i) for name, config in TEST_CONFIGS.items() for i in range(args.power)]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        runs = pool.map(one_run, jobs, chunksize=1)
    results: dict[str, Any] = {"bandit": [vars(a) for a in BANDIT.arms], "jitter": BANDIT.jitter, "workers": WORKERS,
                               "group_size": GROUP_SIZE, "configs": {}, "wall_seconds": time.perf_counter() - started}  # fmt: skip
    for name in args.configs:
        config = CONFIGS[name]
        results["configs"][name] = {"settings": config, **summarise([r for r in runs if r["config"] == name],
                                                                      np.array(config["theta"]))}  # fmt: skip
        print(f"\n{name} ({results['configs'][name]['episodes_per_seed']:.0f} episodes per seed, "
              f"{args.seeds} seeds): exact gradient {np.round(results['configs'][name]['exact'], 3)}")
        for estimator, row in results["configs"][name]["estimators"].items():
            cells = "  ".join(f"{b:+.3f} +- {h:.3f}" for b, h in zip(row["bias"], row["ci95_half_width"], strict=True))
            print(f"  {estimator:11s} bias (crash, quick best, slow mediocre): {cells}   z {np.round(row['z'], 1)}")
    results["paper_model"] = {"uniform": paper_model(np.zeros(3)), "theta_0_0_-2": paper_model(np.array([0.0, 0.0, -2.0]))}
    print("\npaper's arrival model, pi uniform:", {k: np.round(v, 3).tolist() for k, v in results["paper_model"]["uniform"].items()})
    if args.power:
        results["test_power"] = power([r for r in runs if r["config"] in TEST_CONFIGS])
        print("\ntest power:", results["test_power"])
    print(f"\n{time.perf_counter() - started:.0f} s; wrote", write_result("duration_bias", results))


if __name__ == "__main__":
    main()
