"""Step latency of agentrl's ScienceWorld env against ScienceWorld's own ``ScienceWorldEnv.step``.

Both replay the same action sequences (the gold paths of the first dev variation of a few tasks) on
their own JVM, in the same run. ScienceWorld's ``step`` recomputes look, inventory, the task
description and every valid action on each call; agentrl's does not unless admissible actions are
asked for. Reported: mean milliseconds per step for each setup and the ratios
``scienceworld / agentrl`` (targets: >= 3 with admissible actions off, >= 1 with them on).
Each setup replays every task once untimed (JIT warm-up), then ``--rounds`` timed times; the
three setups take turns action by action (rotating who goes first), so background load on a
shared machine hits them alike.

    python benchmarks/scienceworld_step.py [--tasks boil,melt,...] [--rounds 2]

Writes ``benchmarks/results/scienceworld_step.json`` (with the git SHA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

DEFAULT_TASKS = ("boil", "find-animal", "chemistry-mix", "use-thermometer")
RESULTS = Path(__file__).with_name("results") / "scienceworld_step.json"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def timed(step, action: str):
    t0 = time.perf_counter()
    result = step(action)
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names")
    parser.add_argument("--rounds", type=int, default=2, help="timed replays per task and setup")
    args = parser.parse_args()

    import scienceworld

    from agentrl.environments.scienceworld.env import ScienceWorldEnv
    from agentrl.environments.scienceworld.panels import load_panels

    panels = load_panels()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    upstream = scienceworld.ScienceWorldEnv("", envStepLimit=100_000)
    lean = ScienceWorldEnv(split="dev", max_turns=100_000, admissible_actions=False)
    with_actions = ScienceWorldEnv(split="dev", max_turns=100_000, admissible_actions=True)

    def upstream_reset(task_id: str) -> None:
        task, variation = task_id.split("/")
        upstream.load(task, int(variation), "easy", generateGoldPath=False)
        upstream.reset()

    setups = {  # name -> (reset(task_id), step(action), raw score from a step's result)
        "scienceworld": (upstream_reset, upstream.step, lambda result: result[3]["score"]),
        "agentrl_admissible_off": (
            lambda tid: lean.reset(options={"task": tid}),
            lean.step,
            lambda result: result[4]["score"],
        ),
        "agentrl_admissible_on": (
            lambda tid: with_actions.reset(options={"task": tid}),
            with_actions.step,
            lambda r: r[4]["score"],
        ),
    }
    try:
        sequences: dict[str, list[str]] = {}
        for task in tasks:
            task_id = f"{task}/{panels[task]['dev'][0]}"
            lean.reset(options={"task": task_id})
            actions = []
            for action in lean.gold_path():  # stop where the task ends (some gold paths run on)
                actions.append(action)
                if any(lean.step(action)[2:4]):
                    break
            sequences[task_id] = actions
        times: dict[str, list[float]] = {name: [] for name in setups}
        scores: dict[str, dict[str, int]] = {name: {} for name in setups}
        names = list(setups)
        for round_index in range(args.rounds + 1):  # round 0 warms the JIT up and is not kept
            for task_id, actions in sequences.items():
                for reset, _, _ in setups.values():
                    reset(task_id)
                for index, action in enumerate(actions):  # step by step, rotating who goes first
                    order = names[index % len(names) :] + names[: index % len(names)]
                    for name in order:
                        elapsed, result = timed(setups[name][1], action)
                        scores[name][task_id] = setups[name][2](result)
                        if round_index > 0:
                            times[name].append(elapsed)
    finally:
        lean.close()
        with_actions.close()
        upstream.close()

    for task_id in sequences:  # the same actions must have had the same effect everywhere
        seen = {scores[name][task_id] for name in setups}
        if len(seen) != 1:
            raise SystemExit(f"{task_id}: the setups ended with different scores {seen}; not the same replay")

    stats = {
        name: {
            "steps": len(ts),
            "mean_ms": 1000 * statistics.fmean(ts),
            "median_ms": 1000 * statistics.median(ts),
            "p90_ms": 1000 * statistics.quantiles(ts, n=10)[-1],
        }
        for name, ts in times.items()
    }
    base = stats["scienceworld"]["mean_ms"]
    ratios = {
        "admissible_off": base / stats["agentrl_admissible_off"]["mean_ms"],
        "admissible_on": base / stats["agentrl_admissible_on"]["mean_ms"],
    }
    result = {
        "benchmark": "scienceworld_step",
        "git_sha": git_sha(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "scienceworld": scienceworld.__version__,
        "tasks": {tid: len(acts) for tid, acts in sequences.items()},
        "rounds": args.rounds,
        "final_scores": scores["scienceworld"],
        "stats": stats,
        "speedup_vs_scienceworld": ratios,
        "targets": {"admissible_off": 3.0, "admissible_on": 1.0},
        "meets_targets": ratios["admissible_off"] >= 3.0 and ratios["admissible_on"] >= 1.0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in stats.items():
        print(
            f"{name:24s} {s['steps']:5d} steps  mean {s['mean_ms']:7.2f} ms  median {s['median_ms']:7.2f} ms"
        )
    print(
        f"speed-up vs ScienceWorld's step: {ratios['admissible_off']:.2f}x with admissible actions off (target 3x), "
        f"{ratios['admissible_on']:.2f}x with them on (target 1x)"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
