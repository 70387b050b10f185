"""Proof of learning on a CPU: a tiny model learns TextWorld quests by RL (GRPO, EMPG, EPO; 3 seeds).

The problem is shaped so a model of about a million parameters can learn it honestly on 2 cores:

* short quests (``easy``: 2 rooms, quests of 2 actions), 4 turns per episode;
* a byte-level BPE tokenizer trained on the environment's own text (a word is about one token) and a
  Qwen2-shaped model (4 layers, hidden 128) built from a config: nothing is downloaded;
* the per-step layout (each prompt: task, current observation, admissible actions) and constrained
  decoding to the admissible actions listed in the prompt (``admissible_only``). A model this small
  does not learn to copy an action out of its prompt from a few demonstrations (first session: with
  48-200 demonstrations it memorised them, 82-100% of its actions invalid on the valid panel); with
  the constraint it has to learn only *which* action to take, which is the part RL is about. The ids
  it samples are still the ids it is trained on, and log-probs are those of its own distribution.

Protocol:

1. one supervised warm-up on ``--sft-episodes`` expert episodes of the train panel (the warm-up
   checkpoint every RL run starts from);
2. from that checkpoint, for each algorithm and seed, ``--iterations`` RL iterations of the
   ``textworld_grpo`` recipe loop (``--tasks-per-iteration`` train tasks x ``--group-size``
   episodes each, PPO-clip with ``--mini-batches`` optimizer steps per iteration);
3. valid success = the success rate of ``--eval-samples`` sampled (temperature 1) episodes on each of
   the first ``--eval-tasks`` tasks of the valid panel (200 episodes: standard error about 3 points),
   for the warm-up checkpoint and after RL. Sampled rather than greedy: a tiny model's greedy choice
   flips on many tasks at once under small weight changes, so greedy success on 50 tasks is a noisy
   measure here (in the tuning runs below, two GRPO seeds from the same checkpoint moved greedy
   valid success by +0.04 and -0.22).

Tuning history (GRPO, 2 seeds each): a 200-demonstration warm-up reaches 0.46 greedy / 0.43-0.45
sampled, and leaves RL little to gain on this model: 10 iterations at learning rate 5e-4 moved greedy
success by +0.04 / -0.22, 15 iterations at 2e-4 moved sampled success by +0.065 / +0.00. With a
weaker warm-up (64 demonstrations: 0.17) and a larger RL step (1e-3, two mini-batches per
iteration), 15 iterations gave +0.105 / +0.145. The defaults are those last settings.

Runs go two at a time in separate processes (one thread each: 2 cores). Prints the table, writes
``benchmarks/results/<name>.json`` and ``<name>.png`` (rollout curves, before/after); ``--name``
defaults to ``learning_sanity``.

The harder comparison (issues 18 and 22): ``--difficulty long --max-turns 6 --train-tasks 200
--algorithms grpo gigpo empg epo --name learning_compare`` (quests of 4 actions in easy's 2-room world, 6
turns; every algorithm sees the same tasks, group size and iterations: equal samples). ``medium`` (4 rooms,
4 actions, 8 turns) starts from 0.02 and costs about 4x as much per run: too slow for 12 runs on 2 cores.

Reproducibility. The script is deterministic on one machine (two full runs give identical tables).
Across machines, floating-point results depend on the CPU's vector instructions (PyTorch's and MKL's
kernels differ between AVX2 and AVX-512), and a small change in the warm-up flips sampled actions of
a model this size; so the script pins both to AVX2 (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, set before
torch is imported, overridable) and records, with the result, the package versions, the CPU, the
threads and the SHA-256 of everything it generates (the tokenizer, the initial and warm-up weights, the
TextWorld games it played): comparing two results' fingerprints says which of those differed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

# Before torch is imported anywhere: the same vector code paths on every x86 machine (see the docstring).
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("MKL_CBWR", "AVX2")

from _common import RESULTS, write_result  # noqa: E402

ALGORITHMS = ("grpo", "empg", "epo")
KNOWN_ALGORITHMS = ("grpo", "empg", "epo", "gigpo")


def corpus(n_tasks: int = 150, difficulty: str = "easy") -> list[str]:
    """First observations, instructions and admissible actions of train games, to train the tokenizer."""
    import agentrl

    env = agentrl.make("textworld", split="train", difficulty=difficulty)
    texts = []
    for task in env.task_ids()[:n_tasks]:
        obs, info = env.reset(options={"task": task})
        texts += [obs, info["instruction"], ", ".join(info["admissible_actions"])]
    env.close()
    return texts


def learner_config(algorithm: str, iterations: int, lr: float, mini_batches: int):
    from agentrl.training.config import LearnerConfig

    base = LearnerConfig(lr=lr, total_steps=iterations * mini_batches, mini_batches=mini_batches,
                         micro_batch_tokens=8192, seed=0)
    if algorithm == "empg":
        return replace(base, shaping=["empg"])
    if algorithm == "epo":
        return replace(base, terms=["epo"])
    if algorithm == "gigpo":  # verl-agent's defaults (gamma 0.95, omega 1, std normalisation); TextWorld pays 1 per quest step
        return replace(base, advantage="gigpo")
    return base


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprints(work: Path, difficulty: str) -> dict:
    """SHA-256 of what the run generated, and the machine facts that change floating-point results."""
    import hashlib
    import platform

    import torch

    from agentrl.environments.textworld.env import cache_dir

    games = sorted((cache_dir() / difficulty).glob("*.z8"), key=lambda p: int(p.stem))
    combined = hashlib.sha256()
    for game in games:
        combined.update(f"{game.stem}:{sha256(game)}\n".encode())
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "tokenizer": sha256(work / "init" / "tokenizer.json"),
        "init_weights": sha256(work / "init" / "model.safetensors"),
        "warmup_weights": sha256(work / "warmup" / "model" / "model.safetensors"),
        "games": {"count": len(games), "sha256": combined.hexdigest()},
        "machine": {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"), "MKL_CBWR": os.environ.get("MKL_CBWR"),
                    "cores": os.cpu_count()},  # fmt: skip
    }


def run(kwargs: dict, threads: int = 1) -> dict:
    """One recipe run (RL runs: in a worker process with one torch thread, two runs sharing two cores)."""
    import torch

    torch.set_num_threads(threads)
    from agentrl.recipes.textworld_grpo import Config
    from agentrl.recipes.textworld_grpo import main as run_recipe

    return run_recipe(Config(**kwargs))


def add_rollout_curves(work: Path, rows: list[dict]) -> None:
    """Each run's training-rollout success rate per iteration, from its ``metrics.jsonl``."""
    for row in rows:
        lines = (work / f"{row['algorithm']}-s{row['seed']}" / "metrics.jsonl").read_text().splitlines()
        row["rollout_success"] = [m["rollout/success_rate"] for m in map(json.loads, lines) if "rollout/success_rate" in m]


def plot_summary(rows: list[dict], path: Path) -> None:
    """One figure: training-rollout success per iteration (one panel per algorithm, a line per seed) and
    valid success before/after RL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    fig, axes = plt.subplots(1, len(algorithms) + 1, figsize=(4 * (len(algorithms) + 1), 3.2), squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms, strict=False):
        for r in (r for r in rows if r["algorithm"] == algorithm):
            ax.plot(range(1, len(r["rollout_success"]) + 1), r["rollout_success"], marker=".", label=f"seed {r['seed']}")
        ax.set(title=f"{algorithm}: rollout success (train tasks)", xlabel="iteration", ylim=(0, 1))
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    for i, algorithm in enumerate(algorithms):
        for j, r in enumerate(r for r in rows if r["algorithm"] == algorithm):
            x = i + (j - 1) * 0.2
            ax.plot([x, x], [r["warmup_success"], r["rl_success"]], color=f"C{i}")
            ax.scatter([x], [r["rl_success"]], color=f"C{i}")
    ax.axhline(rows[0]["warmup_success"], color="gray", linestyle="--", label="warm-up")
    ax.set(title="valid success: warm-up -> after RL", xticks=range(len(algorithms)), xticklabels=algorithms, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=KNOWN_ALGORITHMS)
    parser.add_argument("--difficulty", default="easy",
                        help="TextWorld quests: easy (2 rooms, 2 actions), long (2 rooms, 4 actions), medium, hard")
    parser.add_argument("--max-turns", type=int, default=4, help="turn budget per episode")
    parser.add_argument("--train-tasks", type=int, default=0, help="draw from the first N train tasks (0: all 1000)")
    parser.add_argument("--name", default="learning_sanity", help="result file name under benchmarks/results")
    parser.add_argument("--sft-episodes", type=int, default=64, help="expert episodes of the warm-up")
    parser.add_argument("--sft-epochs", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--tasks-per-iteration", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="RL learning rate (cosine to 0)")
    parser.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per iteration")
    parser.add_argument("--eval-tasks", type=int, default=50)
    parser.add_argument("--eval-samples", type=int, default=4, help="sampled (T=1) episodes per valid task")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N iterations (0: before and after only)")
    parser.add_argument("--jobs", type=int, default=2, help="RL runs at once (one process and thread each)")
    parser.add_argument("--workdir", default=None, help="keep runs here (default: a temp dir, curves copied to results)")
    parser.add_argument("--reuse-warmup", action="store_true", help="start RL from the warm-up already in --workdir")
    args = parser.parse_args()
    if args.reuse_warmup and not args.workdir:
        parser.error("--reuse-warmup needs --workdir")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("AGENTRL_THREADS", "2")))
    from agentrl.testing import tiny_model

    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agentrl-learning-"))
    model_dir = None if args.reuse_warmup else tiny_model(work / "init", corpus(difficulty=args.difficulty), vocab_size=2000,
                                                          hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                                                          intermediate_size=384)  # fmt: skip
    common = dict(output_dir=str(work), overwrite=True, max_turns=args.max_turns, env_args={"difficulty": args.difficulty},
                  train_tasks=args.train_tasks,
                  eval_tasks=args.eval_tasks, max_new_tokens=32, layout="per_step", history=0, admissible_only=True,
                  temperature=1.0, eval_temperature=1.0, eval_samples=args.eval_samples)  # fmt: skip

    # 1. the warm-up checkpoint every RL run starts from
    if args.reuse_warmup and (work / "warmup" / "summary.json").exists():
        warm = json.loads((work / "warmup" / "summary.json").read_text())
    else:
        warm = run(dict(model=model_dir, run_name="warmup", iterations=0, sft_episodes=args.sft_episodes,
                        sft_epochs=args.sft_epochs, sft_lr=2e-3, seed=0, **common), threads=args.jobs)
    warm_success = warm["evaluations"][-1]["success_rate"]
    warm_minutes = (time.perf_counter() - started) / 60
    print(f"warm-up ({warm['sft']['demonstrations']} demonstrations, {args.sft_epochs} epochs, "
          f"{warm_minutes:.1f} min): valid success {warm_success:.3f}", flush=True)

    # 2. RL from the warm-up checkpoint: every algorithm x seed, two runs at a time
    jobs = {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for seed in args.seeds:
            for algorithm in args.algorithms:
                name = f"{algorithm}-s{seed}"
                kwargs = dict(model=str(work / "warmup" / "model"), run_name=name, seed=seed, iterations=args.iterations,
                              tasks_per_iteration=args.tasks_per_iteration, group_size=args.group_size,
                              eval_every=args.eval_every or args.iterations, eval_before=False,
                              learner=learner_config(algorithm, args.iterations, args.lr, args.mini_batches), **common)
                jobs[(algorithm, seed)] = pool.submit(run, kwargs)
        rows = []
        for (algorithm, seed), future in jobs.items():
            out = future.result()
            curve = [warm_success] + [e["success_rate"] for e in out["evaluations"]]
            before, after = warm_success, curve[-1]
            rows.append({"algorithm": algorithm, "seed": seed, "warmup_success": before, "rl_success": after,
                         "gain": after - before, "curve": curve,
                         "curve_iterations": [0] + [e["iteration"] for e in out["evaluations"]]})
            print(f"{algorithm:5s} seed {seed}: valid success {before:.3f} -> {after:.3f} (curve {curve})", flush=True)
    add_rollout_curves(work, rows)
    plot_summary(rows, RESULTS / f"{args.name}.png")

    minutes = (time.perf_counter() - started) / 60
    print(f"\n{'algorithm':10s} {'seed':>4s} {'warm-up':>8s} {'after RL':>9s} {'gain':>7s}")
    for r in rows:
        print(f"{r['algorithm']:10s} {r['seed']:>4d} {r['warmup_success']:8.3f} {r['rl_success']:9.3f} {r['gain']:+7.3f}")
    by_algo = {}
    for algorithm in args.algorithms:
        after = [r["rl_success"] for r in rows if r["algorithm"] == algorithm]
        gains = [r["gain"] for r in rows if r["algorithm"] == algorithm]
        by_algo[algorithm] = {"mean_success": statistics.mean(after), "std_success": statistics.pstdev(after),
                              "mean_gain": statistics.mean(gains), "min_gain": min(gains), "max_gain": max(gains)}
        print(f"{algorithm}: after RL {by_algo[algorithm]['mean_success']:.3f} +- {by_algo[algorithm]['std_success']:.3f} "
              f"(gain {by_algo[algorithm]['mean_gain']:+.3f}, min {min(gains):+.3f}, max {max(gains):+.3f})")
    print(f"total {minutes:.1f} min (warm-up {warm_minutes:.1f} min)")
    write_result(args.name, {
        "args": vars(args), "warmup": {"success_rate": warm_success, **warm["sft"], "minutes": warm_minutes},
        "rows": rows, "by_algorithm": by_algo, "minutes": minutes,
        "protocol": {**common, "model": "Qwen2 4 layers, hidden 128, vocab 2000 (tiny_model)", "eval_split": "valid",
                     "eval": f"{args.eval_samples} sampled episodes (T=1) per task"},
        "fingerprints": fingerprints(work, args.difficulty),
    })
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(by_algo))


if __name__ == "__main__":
    main()
