"""Concat vs per-step layout in the learner on multi-turn episodes: same update, fewer tokens.

Each episode has ``turns`` turns; turn k's prompt is the whole history so far (the agent's concat
layout), so per-step rows re-encode the history every turn (O(turns^2) tokens) while the concat
layout scores all turns of an episode in one sequence. Both give the same loss and gradient (tested
in tests/test_learner.py); this measures the wall time of one ``Learner.update`` for each, interleaved,
and reports trained-episode turns per second and the ratio.

Usage: ``python benchmarks/learner_layouts.py [--repeats 3]``. Writes
``benchmarks/results/learner_layouts_<device>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import write_result
from learner_throughput import build_model

from agentrl.testing import token_episode
from agentrl.training.config import LearnerConfig
from agentrl.training.learner import Learner
from agentrl.trajectory import Episode


def episodes(
    n: int, turns: int, first_prompt: int, observation: int, response: int, vocab: int, layout: str
) -> list[Episode]:
    g = torch.Generator().manual_seed(0)

    def ids(k: int) -> list[int]:
        return torch.randint(0, vocab, (k,), generator=g).tolist()

    out = []
    for e in range(n):
        prompt, steps = ids(first_prompt), []
        for _ in range(turns):
            answer = ids(response)
            logprobs = (-torch.rand(response, generator=g) * 5).tolist()
            steps.append(dict(prompt=prompt, response=answer, logprobs=logprobs, reward=float(e % 2)))
            prompt = prompt + answer + ids(observation)
        out.append(token_episode(steps, layout=layout, env_id="bench", task_id=str(e // 4), group_id=str(e // 4)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab, n, turns, first_prompt, observation, response = 32000, 8, 6, 64, 48, 16
    batches = {layout: episodes(n, turns, first_prompt, observation, response, vocab, layout) for layout in ("per_step", "concat")}
    learners = {
        layout: Learner(build_model(vocab, device), LearnerConfig(lr=1e-6, precision="fp32")) for layout in batches
    }
    seconds: dict[str, list[float]] = {layout: [] for layout in learners}
    tokens: dict[str, float] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for layout, learner in learners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            (metrics,) = learner.update(batches[layout])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:
                seconds[layout].append(time.perf_counter() - start)
            tokens[layout] = metrics["total_tokens"]
    turns_per_s = {layout: n * turns / statistics.median(s) for layout, s in seconds.items()}
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "shape": {
            "episodes": n,
            "turns": turns,
            "first_prompt": first_prompt,
            "observation": observation,
            "response": response,
            "vocab": vocab,
        },  # fmt: skip
        "tokens_scored": tokens,
        "seconds": seconds,
        "turns_per_s": {k: round(v, 2) for k, v in turns_per_s.items()},
        "speedup_concat_over_per_step": round(turns_per_s["concat"] / turns_per_s["per_step"], 2),
    }
    path = write_result(f"learner_layouts_{device.type}", result)
    print(
        f"per_step {turns_per_s['per_step']:.2f} turns/s ({tokens['per_step']:.0f} tokens) | concat "
        f"{turns_per_s['concat']:.2f} turns/s ({tokens['concat']:.0f} tokens) | "
        f"ratio {result['speedup_concat_over_per_step']:.2f}x -> {path}"
    )


if __name__ == "__main__":
    main()
