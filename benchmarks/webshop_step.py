"""WebShop step latency: search and click on the built-in catalog (baseline) and on a large generated one.

Run: ``python benchmarks/webshop_step.py [--products 100000] [--episodes 40]``. Both catalogs are
measured in the same run; the JSON result (with the git SHA) goes to
``benchmarks/results/webshop_step.json``. The large catalog shows how the BM25 index scales to the
size of a real WebShop index (the original's small and 100k indexes are 1,000 and 100,000 products).

Per episode: one ``search[...]`` with the goal's words, then clicks: a product, an option, the
Description page, ``< prev`` back to the item, ``< prev`` to the results (re-renders the result page),
``next >``. Latencies are of ``env.step`` as a caller sees it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from agentrl.environments.webshop.env import WebShopEnv, search_keywords


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "mean_ms": statistics.fmean(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
    }


def measure(n_products: int, episodes: int) -> dict:
    start = time.perf_counter()
    env = WebShopEnv(builtin_products=n_products, split="test", noun_scorer="heuristic")
    build_s = time.perf_counter() - start
    search, click = [], []
    panel = env.task_ids("test")
    env.reset(options={"task": panel[-1]})  # warm-up (first-call costs), not measured
    env.step("search[warm up query]")
    for task in panel[:episodes]:
        _, info = env.reset(options={"task": task})
        t = time.perf_counter()
        _, _, _, _, info = env.step(f"search[{search_keywords(info['instruction'])}]")
        search.append(time.perf_counter() - t)
        products = [a for a in info["admissible_actions"] if a.startswith("click[b0")]
        if not products:
            continue
        t = time.perf_counter()
        _, _, _, _, info = env.step(products[0])
        click.append(time.perf_counter() - t)
        options = [a for a in info["admissible_actions"] if a not in (
            "search[<keywords>]", "click[back to search]", "click[< prev]", "click[description]",
            "click[features]", "click[reviews]", "click[buy now]")]  # fmt: skip
        for action in options[:1] + ["click[description]", "click[< prev]", "click[< prev]", "click[next >]"]:
            t = time.perf_counter()
            env.step(action)
            click.append(time.perf_counter() - t)
    env.close()
    return {
        "products": len(env.catalog.products),
        "goals": len(env.catalog.goals),
        "build_s": build_s,
        "search": _summary(search),
        "click": _summary(click),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000, help="size of the large generated catalog")
    parser.add_argument("--episodes", type=int, default=40, help="episodes measured per catalog")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "webshop_step.json"))
    args = parser.parse_args()

    baseline = measure(600, args.episodes)
    large = measure(args.products, args.episodes)
    ratios = {
        "search_mean": large["search"]["mean_ms"] / baseline["search"]["mean_ms"],
        "click_mean": large["click"]["mean_ms"] / baseline["click"]["mean_ms"],
    }
    for name, res in (("built-in (baseline)", baseline), (f"generated {args.products}", large)):
        print(
            f"{name:>22}: {res['products']:>7} products, build {res['build_s']:6.1f} s | search mean "
            f"{res['search']['mean_ms']:7.2f} ms p95 {res['search']['p95_ms']:7.2f} | click mean "
            f"{res['click']['mean_ms']:6.3f} ms p95 {res['click']['p95_ms']:6.3f}"
        )
    print(f"ratio large / built-in: search {ratios['search_mean']:.1f}x, click {ratios['click_mean']:.2f}x")
    result = {
        "benchmark": "webshop_step",
        "git_sha": _git_sha(),
        "machine": {"python": platform.python_version(), "processor": platform.processor(), "system": platform.system()},
        "episodes": args.episodes,
        "baseline_builtin": baseline,
        "large_generated": large,
        "ratios_large_over_builtin": ratios,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
