"""Memory and store bytes of a long episode's tokens: one transcript (schema 0003) vs per-step prompts (0002).

A tiny model plays real ALFWorld games (the games in ../shared/data/alfworld) for 50 turns in the
concat layout, recording behaviour log-probs and entropies like any training rollout. Its tokens are
then held, and stored, two ways:

* **before** (agentrl <= dcd10a2): every ``Step`` held its full prompt ids plus its response ids,
  loss mask, log-probs and entropies, so memory grows with the square of the number of turns; the
  store (schema 0002) kept per-step blobs with each prompt delta-encoded against the previous turn;
* **after**: the episode's one :class:`~agentrl.trajectory.Transcript` (per-token fields, appended
  as the agent sampled) and the store's ``transcripts`` table (schema 0003).

Memory is what ``tracemalloc`` sees being allocated to build each representation from the same ids
(lists of Python ints/floats, the integer objects shared, as in the old collector's ``list(prompt)``
copies); store bytes are SQLite pages in use after ``VACUUM``, the 0002 figure made by the real
Alembic downgrade of the same store. Both at 10, 25 and 50 turns (prefixes of the same episodes).

    python benchmarks/transcript_memory.py [--games 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import tempfile
import tracemalloc
from pathlib import Path

from _common import write_result

import agentrl
from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
from agentrl.policies import HFPolicy, SamplingParams
from agentrl.rollout import Collector, ModelActor
from agentrl.store import open_store, upgrade_schema
from agentrl.testing import tiny_model
from agentrl.trajectory import Episode, Transcript

TURNS = (10, 25, 50)


def truncated(episode: Episode, turns: int) -> Episode:
    """The first ``turns`` turns of a concat episode (a prefix of its transcript)."""
    (transcript,) = episode.transcripts
    end = max(i for i, t in enumerate(transcript.turns) if t < turns) + 1
    cut = Transcript(**{k: (v[:end] if isinstance(v, list) else v) for k, v in vars(transcript).items() if k != "extras"})
    return dataclasses.replace(episode, steps=episode.steps[:turns], transcripts=[cut])


def memory_before(episode: Episode) -> int:
    """Bytes allocated to hold the tokens the old way: per step, full prompt + response arrays."""
    views = episode.turn_tokens()
    tracemalloc.start()
    held = [
        (list(v.prompt_ids), list(v.response_ids), list(v.loss_mask), list(v.logprobs), list(v.entropies))
        for v in views.values()
    ]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return size


def memory_after(episode: Episode) -> int:
    """Bytes allocated to hold the episode's transcripts."""
    (transcript,) = episode.transcripts
    tracemalloc.start()
    held = Transcript(
        list(transcript.ids), list(transcript.turns), list(transcript.sampled), list(transcript.loss_mask),
        list(transcript.logprobs), list(transcript.entropies), list(transcript.versions),
    )  # fmt: skip
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return size


def token_bytes(path: Path, tables: tuple[str, ...]) -> int:
    """Bytes of the rows of ``tables`` in a SQLite file (payload sizes of every column)."""
    conn = sqlite3.connect(path)
    try:
        total = 0
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            expr = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in columns)
            total += conn.execute(f"SELECT COALESCE(SUM({expr}), 0) FROM {table}").fetchone()[0]
        return int(total)
    finally:
        conn.close()


def store_bytes(episodes: list[Episode], tmp: Path) -> tuple[int, int]:
    """(0002 bytes, 0003 bytes) of the steps' and transcripts' rows for ``episodes``."""
    path = tmp / f"store-{len(episodes[0].steps)}.db"
    with open_store(f"sqlite:///{path}") as store:
        run = store.start_run("transcript_memory")
        store.write_episodes(run, episodes)
    after = token_bytes(path, ("steps", "transcripts"))
    upgrade_schema(f"sqlite:///{path}", "0002")
    before = token_bytes(path, ("steps",))
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    env = agentrl.make("alfworld", split="valid_seen", max_turns=max(TURNS))
    tasks = env.task_ids("valid_seen")[: args.games]
    texts = []
    for task in tasks:
        obs, info = env.reset(options={"task": task})
        texts += [obs, info["instruction"], ", ".join(info["admissible_actions"] or [])]
    env.close()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        policy = HFPolicy(tiny_model(tmp / "model", texts=texts * 3, vocab_size=4096, max_position_embeddings=65536))
        agent = LLMAgent(policy.tokenizer, prompt_format_for("alfworld"))
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, stop=(ACTION_STOP,), return_entropies=True)
        with Collector(lambda: agentrl.make("alfworld", split="valid_seen", max_turns=max(TURNS)),
                       ModelActor(policy, agent, sampling), env_id="agentrl/ALFWorld-v0", max_parallel=1) as runner:  # fmt: skip
            played = runner.run(tasks, seed=0)
        full = [ep for ep in played if ep.turns == max(TURNS) and len(ep.transcripts) == 1]
        assert full, "no episode ran the full 50 turns in one transcript"
        rows = []
        for turns in TURNS:
            episodes = [truncated(ep, turns) for ep in full]
            mem_before = sum(map(memory_before, episodes)) / len(episodes)
            mem_after = sum(map(memory_after, episodes)) / len(episodes)
            db_before, db_after = (b / len(episodes) for b in store_bytes(episodes, tmp))
            tokens = sum(len(ep.transcripts[0].ids) for ep in episodes) / len(episodes)
            sampled = sum(sum(ep.transcripts[0].sampled) for ep in episodes) / len(episodes)
            rows.append({
                "turns": turns, "tokens": tokens, "sampled_tokens": sampled,
                "memory_bytes_before": mem_before, "memory_bytes_after": mem_after,
                "memory_ratio_before_over_after": mem_before / mem_after,
                "store_bytes_before": db_before, "store_bytes_after": db_after,
                "store_ratio_before_over_after": db_before / db_after,
            })  # fmt: skip
    print(f"{'turns':>5} {'tokens':>7} {'memory before':>14} {'after':>10} {'ratio':>6} {'store before':>13} {'after':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['turns']:>5} {r['tokens']:>7.0f} {r['memory_bytes_before'] / 1e6:>12.2f}MB {r['memory_bytes_after'] / 1e6:>8.2f}MB "
              f"{r['memory_ratio_before_over_after']:>5.1f}x {r['store_bytes_before'] / 1e3:>11.1f}kB "
              f"{r['store_bytes_after'] / 1e3:>8.1f}kB {r['store_ratio_before_over_after']:>5.2f}x")  # fmt: skip
    path = write_result("transcript_memory", {"games": len(full), "max_new_tokens": args.max_new_tokens, "rows": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
