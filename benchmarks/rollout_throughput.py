"""Collector scaling on TextWorld with a tiny model: episodes/s and env vs generation share.

Runs the same workload (``--episodes`` episodes of ``--turns`` turns on the valid panel, a tiny Qwen2
built from a config, a tokenizer trained on the games' text) with 1, 4 and 16 episodes in flight, in
one process, and reports episodes/s, the speed-up over 1 in flight (the baseline of the same run),
and the share of wall time spent in batched ``generate`` calls and in env steps. Scaling, not
absolute speed, is the figure: with one batched generate per turn, more episodes in flight share
each forward pass. Writes ``benchmarks/results/rollout_throughput.json``.

    python benchmarks/rollout_throughput.py [--episodes 16] [--turns 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _common import write_result

import agentrl
from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
from agentrl.environments.textworld.env import generate_games
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.rollout import Collector, ModelActor
from agentrl.testing import tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (2 shared cores: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tasks = agentrl.make("textworld", split="valid").task_ids()[: max(1, args.episodes // 2)]
    texts = []
    generate_games(tasks)  # up front, in processes: their generation is not what we measure
    env = agentrl.make("textworld", split="valid")
    for task in tasks:
        obs, info = env.reset(options={"task": task})
        texts += [obs, info["instruction"], ", ".join(info["admissible_actions"])]
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        policy = HFPolicy(tiny_model(tmp, texts=texts), device="cpu", seed=0)
    agent = LLMAgent(policy.tokenizer, prompt_format_for("textworld"))
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, stop=(ACTION_STOP,))
    group = max(1, args.episodes // len(tasks))

    def env_fn():
        return agentrl.make("textworld", split="valid", max_turns=args.turns)

    rows = []
    for parallel in args.parallel:
        actor = ModelActor(policy, agent, sampling)
        with Collector(env_fn, actor, env_id="agentrl/TextWorld-v0", max_parallel=parallel) as col:
            col.run(tasks[:1], group_size=1, seed=99)  # warm-up: env start, first forward
            actor.stats = dict.fromkeys(actor.stats, 0)
            start = time.perf_counter()
            episodes = col.run(tasks, group_size=group, seed=0)
            wall = time.perf_counter() - start
            rows.append({
                "parallel": parallel,
                "episodes": len(episodes),
                "turns": sum(ep.turns for ep in episodes),
                "wall_seconds": wall,
                "episodes_per_second": len(episodes) / wall,
                "generate_calls": actor.stats["generate_calls"],
                "generation_share": actor.stats["generate_seconds"] / wall,
                "env_share": sum(s.env_seconds for ep in episodes for s in ep.steps) / wall,
                "tokens_generated": actor.stats["tokens_generated"],
            })  # fmt: skip
    base = rows[0]["episodes_per_second"]
    print(f"{'parallel':>8} {'episodes/s':>10} {'speed-up':>8} {'gen share':>9} {'env share':>9} {'generate calls':>14}")
    for row in rows:
        row["speedup_vs_first"] = row["episodes_per_second"] / base
        print(f"{row['parallel']:>8} {row['episodes_per_second']:>10.2f} {row['speedup_vs_first']:>7.2f}x "
              f"{row['generation_share']:>9.2f} {row['env_share']:>9.3f} {row['generate_calls']:>14}")  # fmt: skip
    path = write_result("rollout_throughput", {
        "env": "agentrl/TextWorld-v0 (easy, valid)", "model_parameters": sum(p.numel() for p in policy.model.parameters()),
        "torch_threads": args.threads, "max_new_tokens": args.max_new_tokens, "turns": args.turns, "rows": rows,
        "note": "env_share sums per-step env seconds across worker threads, so it can exceed the wall-clock share",
    })  # fmt: skip
    print(f"written {path}")


if __name__ == "__main__":
    main()
