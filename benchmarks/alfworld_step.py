"""Reset and step latency of ``agentrl/ALFWorld-v0`` against ALFWorld's own ``AlfredTWEnv``.

Both drive the same games with the same actions (ALFWorld's hand-coded expert's, at most
``--steps`` per game, in json_2.1.1 wording for ALFWorld's env, which plays the files as they are) in
one run. The baseline is what
ALFWorld users run: ``AlfredTWEnv(config, "eval_out_of_distribution").init_env(batch_size=1)``, a
``textworld.gym`` batch env whose game runs in a worker process. Ratios > 1 mean agentrl is faster.

    python benchmarks/alfworld_step.py [--games 6] [--steps 20] [--repeats 2]

Writes ``benchmarks/results/alfworld_step.json`` with the git SHA.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from agentrl.environments.alfworld import data as alf_data
from agentrl.environments.alfworld.env import ALFWorldEnv

RESULTS = Path(__file__).parent / "results" / "alfworld_step.json"


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _old_wording(action: str) -> str:
    """``move X to Y`` (2.1.2) as the json_2.1.1 files spell it: ``put X in/on Y``."""
    if action.startswith("move "):
        obj, recep = action[5:].split(" to ", 1)
        return f"put {obj} in/on {recep}"
    return action


def pick_games(env: ALFWorldEnv, n: int) -> list[str]:
    """The first game of each task type in valid_unseen, round-robin until ``n``."""
    by_type: dict[str, list[str]] = {}
    for task in env.task_ids("valid_unseen"):
        by_type.setdefault(alf_data.task_type_of(task) or "?", []).append(task)
    games: list[str] = []
    while len(games) < n and any(by_type.values()):
        for tasks in by_type.values():
            if tasks and len(games) < n:
                games.append(tasks.pop(0))
    return games


def run_agentrl(games: list[str], plans: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Our env, in this process: one engine, reset per game (again on the same game), then the actions."""
    env = ALFWorldEnv(split="valid_unseen", max_turns=100)
    env.reset(seed=0, options={"task": env.task_ids()[-1]})  # engine built and warm, as theirs is before reset
    resets, resets_same, steps = [], [], []
    try:
        for _ in range(repeats):
            for game in games:
                t0 = time.perf_counter()
                env.reset(seed=0, options={"task": game})
                resets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                env.reset(seed=0, options={"task": game})
                resets_same.append(time.perf_counter() - t0)
                for action in plans[game]:
                    t0 = time.perf_counter()
                    env.step(action)
                    steps.append(time.perf_counter() - t0)
    finally:
        env.close()
    return {"reset_new_game": resets, "reset_same_game": resets_same, "step": steps}


def run_alfworld(
    root: Path, games: list[str], plans: dict[str, list[str]], won: dict[str, bool], repeats: int
) -> dict[str, list[float]]:
    """ALFWorld's AlfredTWEnv batch env (batch_size=1, its game in a worker process), same games and actions."""
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    config = {
        "env": {
            "goal_desc_human_anns_prob": 0,
            "task_types": [1, 2, 3, 4, 5, 6],
            "domain_randomization": False,
            "expert_type": "handcoded",
        },
        "dataset": {
            "data_path": str(root / "json_2.1.1/valid_train"),
            "eval_id_data_path": str(root / "json_2.1.1/valid_seen"),
            "eval_ood_data_path": str(root / "json_2.1.1/valid_unseen"),
            "num_train_games": -1,
            "num_eval_games": -1,
        },
        "logic": {"domain": str(root / "logic/alfred.pddl"), "grammar": str(root / "logic/alfred.twl2")},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 100}},
        "rl": {"training": {"max_nb_steps_per_episode": 100}},
    }
    alfred = AlfredTWEnv(config, train_eval="eval_out_of_distribution")
    resets, resets_same, steps = [], [], []
    for _ in range(repeats):
        for game in games:
            alfred.game_files = [str(root / game)]  # one game per batch env: same order as ours
            env = alfred.init_env(batch_size=1)
            try:
                t0 = time.perf_counter()
                env.reset()
                resets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                env.reset()
                resets_same.append(time.perf_counter() - t0)
                infos = {"won": [False]}
                for action in plans[game]:
                    t0 = time.perf_counter()
                    _, _, _, infos = env.step([_old_wording(action)])
                    steps.append(time.perf_counter() - t0)
                assert bool(infos["won"][0]) == won[game], f"AlfredTWEnv and agentrl disagree on {game}"
            finally:
                env.close()
    return {"reset_new_game": resets, "reset_same_game": resets_same, "step": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    probe = ALFWorldEnv(split="valid_unseen")
    games = pick_games(probe, args.games)
    plans: dict[str, list[str]] = {}
    won: dict[str, bool] = {}
    for game in games:
        probe.reset(seed=0, options={"task": game})
        plans[game], won[game] = [], False
        while not probe.episode_over and len(plans[game]) < args.steps:
            plans[game].append(probe.expert_action())
            won[game] = probe.step(plans[game][-1])[4]["won"]
    probe.close()

    # Interleaved game by game, so both sides see the same load on a shared machine.
    ours: dict[str, list[float]] = {"reset_new_game": [], "reset_same_game": [], "step": []}
    theirs: dict[str, list[float]] = {"reset_new_game": [], "reset_same_game": [], "step": []}
    for _ in range(args.repeats):
        for game in games:
            for key, values in run_agentrl([game], plans, 1).items():
                ours[key] += values
            for key, values in run_alfworld(probe.data_root, [game], plans, won, 1).items():
                theirs[key] += values
    result: dict[str, object] = {
        "benchmark": "alfworld_step",
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "games": games,
        "repeats": args.repeats,
        "steps_per_run": sum(len(p) for p in plans.values()),
    }
    print(f"{len(games)} games x {args.repeats} repeats, {result['steps_per_run']} steps per pass")
    print(f"{'metric':<18}{'agentrl ms':>12}{'alfworld ms':>13}{'speed-up':>10}")
    for metric in ("reset_new_game", "reset_same_game", "step"):
        a, b = statistics.median(ours[metric]) * 1e3, statistics.median(theirs[metric]) * 1e3
        result[metric] = {"agentrl_median_ms": round(a, 2), "alfworld_median_ms": round(b, 2), "speedup": round(b / a, 2)}
        print(f"{metric:<18}{a:>12.1f}{b:>13.1f}{b / a:>9.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
