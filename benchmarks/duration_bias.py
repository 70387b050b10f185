"""Duration bias of asynchronous actors, and the duration-aware fix (arXiv 2509.01684), simulated.

A task family where the better action is slower, like an ML-engineering agent's choices:

| action | seconds | reward |
|---|---|---|
| crash (a program that fails at once) | 5 | 0.0 |
| quick baseline (fits a linear model) | 30 | 0.5 +- 0.1 |
| proper training run | 600 | 0.8 +- 0.1 |

``actors`` asynchronous actors each sample an action from the policy they last saw, "run" it for its
duration, and hand the result to the learner, which updates a softmax policy every ``batch`` results
and a policy-gradient step. Results arrive in order of completion, so until the slow actions start to
come back, every batch holds only fast ones, and the policy moves toward them before the better, slower
action has had its say (once every actor has cycled many times, a batch's make-up approaches the policy's
own proportions again: the bias is largest early and for long actions). With duration weighting each
term is scaled by ``agentrl.algorithms.duration.weights`` (dt / batch-mean dt), which amplifies the rare,
slow results.

Two advantages are compared: "raw" (REINFORCE on the partial-credit reward, no baseline) and
"normalised" (GRPO-style, (r - batch mean) / batch std). Reports, over many seeds and for several
wall-clock budgets, how often a run ends preferring the proper (best, slowest) action, with and without
weighting, and writes ``benchmarks/results/duration_bias.json``.
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np
import torch
from _common import write_result

from agentrl.algorithms.duration import weights as duration_weights

ACTIONS = ("crash", "quick baseline", "proper training")
SECONDS = np.array([5.0, 30.0, 600.0])
MEAN_REWARD = np.array([0.0, 0.5, 0.8])
REWARD_NOISE = np.array([0.0, 0.1, 0.1])


def run(seed: int, weighted: bool, *, advantage: str = "raw", actors: int = 16, batch: int = 16, lr: float = 0.3,
        budget: float = 3000.0) -> np.ndarray:
    """One asynchronous training run; returns the final action probabilities.

    ``advantage="raw"``: REINFORCE on the reward itself (partial-credit rewards, no baseline), as when
    each actor's result is used on its own; ``"normalised"``: GRPO-style (r - batch mean) / batch std.
    """
    rng = np.random.default_rng(seed)
    logits = np.zeros(len(ACTIONS))

    def sample() -> tuple[float, int]:
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        action = int(rng.choice(len(ACTIONS), p=probs))
        duration = SECONDS[action] * rng.uniform(0.8, 1.2)  # run times vary a little
        return duration, action

    events: list[tuple[float, int, float]] = []  # (finish time, action, duration)
    for _ in range(actors):
        duration, action = sample()
        heapq.heappush(events, (duration, action, duration))
    pending: list[tuple[int, float, float]] = []  # (action, reward, duration)
    while events:
        now, action, duration = heapq.heappop(events)
        if now > budget:
            break
        reward = MEAN_REWARD[action] + REWARD_NOISE[action] * rng.standard_normal()
        pending.append((action, float(reward), duration))
        if len(pending) == batch:
            acts = np.array([p[0] for p in pending])
            rewards = np.array([p[1] for p in pending])
            if advantage == "raw":
                adv = rewards.copy()
            else:
                adv = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
            if weighted:
                adv = adv * duration_weights(torch.tensor([p[2] for p in pending])).numpy()
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            grad = np.zeros_like(logits)
            for a, adv_a in zip(acts, adv, strict=True):
                grad += adv_a * (np.eye(len(ACTIONS))[a] - probs)  # d log pi(a) / d logits
            logits += lr * grad / batch
            pending.clear()
        duration, next_action = sample()  # the actor starts its next action with the newest policy
        heapq.heappush(events, (now + duration, next_action, duration))
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1200.0, 2400.0, 4800.0],
                        help="simulated wall-clock seconds per run (the proper action takes 600)")
    args = parser.parse_args()
    rows = []
    print(f"{'advantage':11s} {'weighting':10s} {'budget s':>8s} {'best wins':>10s} {'quick wins':>10s}   mean final probs (crash, quick, proper)")
    for advantage in ("raw", "normalised"):
        for budget in args.budgets:
            for weighted in (False, True):
                finals = np.stack([run(seed, weighted, advantage=advantage, budget=budget) for seed in range(args.seeds)])
                row = {
                    "advantage": advantage,
                    "weighted": weighted,
                    "budget_seconds": budget,
                    "seeds": args.seeds,
                    "runs_preferring_proper_training": int((finals.argmax(axis=1) == 2).sum()),
                    "runs_preferring_quick_baseline": int((finals.argmax(axis=1) == 1).sum()),
                    "mean_final_probs": finals.mean(axis=0).round(3).tolist(),
                }
                rows.append(row)
                probs = ", ".join(f"{p:.2f}" for p in row["mean_final_probs"])
                print(f"{advantage:11s} {'on' if weighted else 'off':10s} {budget:8.0f} "
                      f"{row['runs_preferring_proper_training']:>5d}/{args.seeds:<4d} "
                      f"{row['runs_preferring_quick_baseline']:>5d}/{args.seeds:<4d}   ({probs})")
    write_result("duration_bias", {"actions": list(ACTIONS), "seconds": SECONDS.tolist(),
                                   "mean_reward": MEAN_REWARD.tolist(), "rows": rows})


if __name__ == "__main__":
    main()
