"""`agentrl serve` under concurrent clients: generate calls per request and throughput vs one client at a time.

A tiny Qwen2 model built here (``--hidden``/``--layers``; nothing downloaded) behind the FastAPI server
on 127.0.0.1, driven with the official ``openai`` client. The same requests (prompt, seed,
``max_tokens``) are sent twice: one after another from one client, then from ``--clients`` threads at
once. Reported: requests, ``generate`` calls (from the server's batching queue), completion tokens,
wall seconds and tokens/s for each, the speed-up, and whether every concurrent answer equals its
sequential one (per-request seeds make batching invisible in the tokens). Writes
``benchmarks/results/serve_batching_<device>.json``.

    python benchmarks/serve_batching.py                 # CPU, small shapes
    python benchmarks/serve_batching.py --clients 32    # more clients
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import torch
from _common import write_result

from agentrl.policies.hf import HFPolicy
from agentrl.policies.server import PolicyServer
from agentrl.testing import tiny_model


def run(client, jobs: list[tuple[str, int]], max_tokens: int, clients: int) -> tuple[float, list]:
    answers: list = [None] * len(jobs)
    barrier = threading.Barrier(clients)

    def worker(rank: int) -> None:
        barrier.wait()
        for index in range(rank, len(jobs), clients):
            prompt, seed = jobs[index]
            answers[index] = client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, seed=seed)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    import openai

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = tiny_model(tempfile.mkdtemp(prefix="serve-bench-"), hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 128),
                      intermediate_size=4 * args.hidden)  # fmt: skip
    words = ["fridge", "table", "apple", "door", "north", "key", "box", "chest", "kitchen", "lamp"]
    jobs = [(f"You see a {words[i % len(words)]} and a {words[(3 * i) % len(words)]}.", 1000 + i)
            for i in range(args.clients * args.requests_per_client)]  # fmt: skip
    rows = {}
    with PolicyServer(HFPolicy(path, device=device), model_name="bench") as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        client.completions.create(model="bench", prompt="warm up", max_tokens=4)
        answers = {}
        for name, clients in (("sequential", 1), ("concurrent", args.clients)):
            before = dict(server.batcher.stats)
            seconds, answers[name] = run(client, jobs, args.max_tokens, clients)
            tokens = sum(a.usage.completion_tokens for a in answers[name])
            rows[name] = {"clients": clients, "requests": len(jobs),
                          "generate_calls": server.batcher.stats["generate_calls"] - before["generate_calls"],
                          "largest_batch": server.batcher.stats["largest_batch"], "completion_tokens": tokens,
                          "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
                          "requests_per_second": round(len(jobs) / seconds, 2)}  # fmt: skip
            print(name, rows[name])
    same = all(a.choices[0].model_extra["token_ids"] == b.choices[0].model_extra["token_ids"]
               for a, b in zip(answers["sequential"], answers["concurrent"], strict=True))  # fmt: skip
    speedup = rows["concurrent"]["tokens_per_second"] / rows["sequential"]["tokens_per_second"]
    print(f"speed-up {speedup:.2f}x; concurrent answers equal the sequential ones: {same}")
    write_result(f"serve_batching_{device}", {
        "model": {"hidden": args.hidden, "layers": args.layers, "device": device, "torch_threads": args.threads},
        "max_tokens": args.max_tokens, "rows": rows, "speedup": round(speedup, 2), "same_tokens_as_sequential": same,
        "versions": {"torch": torch.__version__, "openai": openai.__version__},
    })  # fmt: skip


if __name__ == "__main__":
    main()
