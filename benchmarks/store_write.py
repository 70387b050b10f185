"""Write throughput of the trajectory store against plain JSONL appends, in one run.

The same synthetic steps (default 20,000: 2,000 episodes x 10 turns; each turn 300 prompt ids,
40 response ids, 40-long loss mask, logprobs and entropies, a ~200-character observation, a short
action and a small info dict; per-step layout, so one 340-token transcript per turn) are written

* as JSONL with the standard library: one ``json.dumps`` line per step (with its turn's transcript),
  flushed after each episode;
* through ``Store.write_episode`` to SQLite (one transaction per episode, WAL);
* through ``Store.write_episode`` to PostgreSQL, when a server is available (``--postgres-url``, or a
  private one started from the local ``postgresql`` binaries on 127.0.0.1).

Prompts are independent random ids per turn (the per-step layout), so the one-transcript-per-episode
saving of the concat layout gives the store no advantage here. Targets (issue 3): SQLite at least
half as fast as JSONL and at least 5,000 steps/s on a 2-core machine.

    python benchmarks/store_write.py [--steps 20000] [--postgres-url URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from agentrl.store import open_store
from agentrl.testing import token_episode
from agentrl.trajectory import Episode

TURNS = 10
WORDS = "you are in a kitchen there is a fridge a table and an apple on the counter to the north a door".split()


def synthetic_episodes(steps: int, seed: int = 0) -> list[Episode]:
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    episodes = []
    for index in range(steps // TURNS):
        turns = []
        for turn in range(TURNS):
            observation = " ".join(rng.choice(WORDS) for _ in range(40))[:200]
            logprobs = (-np_rng.exponential(1.0, 40)).astype(np.float32).tolist()  # as a model returns them
            entropies = np_rng.uniform(0.0, 3.0, 40).astype(np.float32).tolist()
            turns.append(
                dict(
                    observation=observation,
                    action=f"take {rng.choice(WORDS)} from {rng.choice(WORDS)}",
                    reward=1.0 if turn == TURNS - 1 else 0.0,
                    env_seconds=rng.random() * 0.01,
                    prompt=np_rng.integers(0, 151_000, 300).tolist(),
                    response=np_rng.integers(0, 151_000, 40).tolist(),
                    logprobs=logprobs,
                    entropies=entropies,
                    version=index // 100,
                )
            )
        episode = token_episode(
            turns, layout="per_step", env_id="agentrl/Synthetic-v0", task_id=f"task-{index % 50}", split="train",
            seed=index, group_id=f"group-{index // 8}", agent="bench", policy_version=index // 100,
            first_observation=turns[0]["observation"], won=True, progress=1.0,
        )  # fmt: skip
        for turn, step in enumerate(episode.steps):
            step.terminated = turn == TURNS - 1
            step.info = {"turn": turn + 1, "won": turn == TURNS - 1, "progress": turn / TURNS, "invalid_action": False}
            step.generation_seconds = rng.random() * 0.5
        episodes.append(episode)
    return episodes


def write_jsonl(path: Path, episodes: list[Episode]) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, "w", encoding="utf-8") as f:
        for episode_index, episode in enumerate(episodes):
            head = {"episode": episode_index, "env_id": episode.env_id, "task_id": episode.task_id,
                    "seed": episode.seed, "group_id": episode.group_id, "policy_version": episode.policy_version}  # fmt: skip
            for turn, (step, transcript) in enumerate(zip(episode.steps, episode.transcripts, strict=True)):
                f.write(json.dumps({**head, "turn": turn, **step.__dict__, "tokens": transcript.__dict__}) + "\n")
            f.flush()  # hand each episode to the OS, as a store commit does
    return time.perf_counter() - start, time.process_time() - cpu


def write_store(url: str, episodes: list[Episode], batch: int = 1) -> tuple[float, float]:
    """Write through the store, ``batch`` episodes per transaction; returns (wall, this process's CPU) seconds."""
    with open_store(url) as store:
        run = store.start_run("store_write benchmark", kind="bench")
        start, cpu = time.perf_counter(), time.process_time()
        if batch == 1:
            for episode in episodes:
                store.write_episode(run, episode)
        else:
            for first in range(0, len(episodes), batch):
                store.write_episodes(run, episodes[first : first + batch])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert store.count_episodes(run) == len(episodes)
    return elapsed, cpu


def figures(steps: int, seconds: float, cpu: float) -> dict[str, float]:
    # On a shared machine the wall time includes waiting for a core; the client's CPU time shows what
    # the same code does on an idle machine (for SQLite all the work is in this process).
    return {"seconds": seconds, "steps_per_s": steps / seconds, "cpu_seconds": cpu, "steps_per_cpu_s": steps / cpu}


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agentrl/store"], capture_output=True, text=True,
                               cwd=Path(__file__).parent.parent).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--postgres-url", default=os.environ.get("AGENTRL_TEST_POSTGRES_URL"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "store_write.json"))
    args = parser.parse_args()

    episodes = synthetic_episodes(args.steps)
    steps = sum(len(ep.steps) for ep in episodes)
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="agentrl-bench-") as tmp:
        jsonl = Path(tmp) / "steps.jsonl"
        sqlite = Path(tmp) / "store.db"
        results["jsonl"] = {**figures(steps, *write_jsonl(jsonl, episodes)), "bytes": jsonl.stat().st_size}
        results["sqlite"] = figures(steps, *write_store(f"sqlite:///{sqlite}", episodes))
        results["sqlite"]["bytes"] = sum(p.stat().st_size for p in Path(tmp).glob("store.db*"))
        results["sqlite_batch16"] = figures(steps, *write_store(f"sqlite:///{Path(tmp) / 'batch.db'}", episodes, 16))
        if not args.no_postgres:
            results.update(_postgres(args.postgres_url, episodes, steps))
    jsonl_rate = results["jsonl"]["steps_per_s"]
    for name, result in results.items():
        result["ratio_vs_jsonl"] = result["steps_per_s"] / jsonl_rate
        print(f"{name:>20}: {result['steps_per_s']:7.0f} steps/s ({result['seconds']:.2f} s, "
              f"{result['ratio_vs_jsonl']:.2f}x JSONL); {result['steps_per_cpu_s']:7.0f} steps per CPU-s")  # fmt: skip
    payload = {
        "benchmark": "store_write",
        "git_sha": git_sha(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "steps": steps,
        "episodes": len(episodes),
        "results": results,
        "targets": {"sqlite_ratio_vs_jsonl_min": 0.5, "sqlite_steps_per_s_min": 5000},
        "targets_met": {
            "sqlite_ratio": results["sqlite"]["ratio_vs_jsonl"] >= 0.5,
            "sqlite_rate": results["sqlite"]["steps_per_s"] >= 5000,
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")


def _postgres(url: str | None, episodes: list[Episode], steps: int) -> dict[str, dict[str, float]]:
    from agentrl.store.testing import PostgresUnavailable, create_database, drop_database, postgres_server

    def run(admin: str) -> dict[str, dict[str, float]]:
        out = {}
        for name, batch in (("postgresql", 1), ("postgresql_batch16", 16)):
            database = create_database(admin, prefix="bench")
            try:
                out[name] = figures(steps, *write_store(database, episodes, batch))
            finally:
                drop_database(admin, database)
        return out

    if url:
        return run(url)
    try:
        with postgres_server() as admin:
            return run(admin)
    except PostgresUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
        return {}


if __name__ == "__main__":
    main()
