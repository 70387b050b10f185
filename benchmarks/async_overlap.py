"""Learner throughput with and without asynchronous generation overlapping training.

One local Ray cluster, the same rollout workers' setup, the same model and batch shape, run twice in
one process: synchronous (``max_staleness=0``: the learner waits for a batch made with its current
weights while workers idle during the update) and asynchronous (``max_staleness=2``: workers keep
generating while the learner trains). Reports, for each, wall seconds per update, the learner's
share of time spent waiting for data, and learner tokens/s over the whole run (trained tokens /
wall time), plus the async/sync ratio. On a GPU machine pass ``--model`` (a larger local model)
and ``--device-workers``; the defaults are a tiny model on CPU.

    python benchmarks/async_overlap.py --updates 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

TASKS = ["easy/100000", "easy/100001", "easy/100002"]


def run_mode(model_dir: str, work: Path, *, max_staleness: int, updates: int, workers: int, group_size: int,
             groups: int, max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from agentrl.distributed.actor_learner import ActorLearner
    from agentrl.distributed.worker import WorkerSpec
    from agentrl.store import open_store
    from agentrl.training.config import LearnerConfig
    from agentrl.training.learner import Learner

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    learner = Learner(model, LearnerConfig(lr=1e-4, total_steps=1000), pad_token_id=model.config.pad_token_id)
    store_url = f"sqlite:///{work / f'store-{max_staleness}.db'}"
    store = open_store(store_url)
    run_id = store.start_run(f"overlap-{max_staleness}", kind="train")
    spec = WorkerSpec(model=model_dir, env="textworld", store=store_url, run_id=run_id,
                      weights_dir=str(work / f"weights-{max_staleness}"), split="valid", max_turns=3,
                      max_new_tokens=max_new_tokens, max_parallel=group_size)
    records: list[dict] = []
    started_at: list[float] = []

    def timed(summary: dict) -> None:
        records.append(summary)
        started_at.append(time.perf_counter())

    driver = ActorLearner(learner, store, spec, workers=workers, group_size=group_size, groups_per_update=groups,
                          sample_task=lambda rng: (str(rng.choice(TASKS)), "default"), max_staleness=max_staleness,
                          worker_cpus=0.5, seed=0, on_update=timed)
    # the first update includes actor start-up and game generation: time from its end on
    driver.run(updates=1 + updates)
    store.close()
    timed_records = records[1:]
    wall = started_at[-1] - started_at[0]
    tokens = sum(m["trained_tokens"] for r in timed_records for m in r["learner"])
    waited = sum(r["async/wait_seconds"] for r in timed_records)
    return {
        "max_staleness": max_staleness, "updates_timed": len(timed_records), "wall_seconds": wall,
        "seconds_per_update": wall / len(timed_records), "learner_wait_fraction": waited / wall,
        "learner_tokens_per_s": tokens / wall, "mean_staleness": sum(r["async/mean_staleness"] for r in timed_records) / len(timed_records),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="local HF model directory (default: a tiny Qwen2 built here)")
    parser.add_argument("--updates", type=int, default=4, help="timed updates per mode (after one warm-up update)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    os.environ.setdefault("AGENTRL_CACHE", tempfile.mkdtemp(prefix="agentrl-bench-cache-"))
    from agentrl.distributed.ray_local import init_ray, shutdown_ray
    from agentrl.testing import tiny_model

    work = Path(tempfile.mkdtemp(prefix="agentrl-overlap-"))
    model_dir = args.model or tiny_model(work / "tiny", texts=["You are in a kitchen. open fridge, take apple, go north"])
    started = init_ray("local", num_cpus=os.cpu_count() or 2)
    try:
        results = {}
        for name, staleness in (("sync", 0), ("async", 2)):
            results[name] = run_mode(model_dir, work, max_staleness=staleness, updates=args.updates,
                                     workers=args.workers, group_size=args.group_size, groups=args.groups,
                                     max_new_tokens=args.max_new_tokens)
            print(f"{name:5s}: {results[name]['seconds_per_update']:.2f} s/update, learner waits "
                  f"{100 * results[name]['learner_wait_fraction']:.0f}% of the time, "
                  f"{results[name]['learner_tokens_per_s']:.0f} learner tokens/s, "
                  f"mean staleness {results[name]['mean_staleness']:.2f}", flush=True)
    finally:
        shutdown_ray(started)
    ratio = results["async"]["learner_tokens_per_s"] / results["sync"]["learner_tokens_per_s"]
    print(f"async / sync learner tokens/s: {ratio:.2f}x")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_result(f"async_overlap_{device}", {"args": vars(args), "device": device, **results,
                                                   "async_over_sync_tokens_per_s": ratio, "cpus": os.cpu_count()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
