"""Learner throughput: one ``Learner.update`` against a naive full-logits PPO step on the same batch.

Both sides do the same work per optimizer step on the same per-step rows (prompt + response, loss on
the response tokens): forward, PPO-clip loss against stored behaviour log-probs, backward, grad clip,
AdamW step. The baseline is what a plain trainer does: ``model(input_ids).logits`` for every position,
float32 log-softmax over the whole ``[B, L, V]`` tensor, gather. The learner applies the LM head only
where a response token is scored (``agentrl.training.logprobs``) and also computes token entropies,
metrics and advantages. Reported: tokens/s (all tokens, prompt included) for both, and their ratio.

Usage: ``python benchmarks/learner_throughput.py [--repeats 3] [--shape tiny|qwen2-0.5b]`` (``tiny``, the
default: a 19M-parameter Qwen2 (16M of it embeddings) built from a config, 16 rows of 192 prompt + 32
response tokens, vocabulary 32k, on CUDA at 4x the rows; ``qwen2-0.5b``: Qwen2-0.5B's shape (24 layers,
hidden 896, vocabulary 151,936, tied head; random weights), 32 rows of 448 prompt + 64 response tokens,
CUDA only). On CUDA both sides run under bf16 autocast and the peak memory of each is recorded. Writes
``benchmarks/results/learner_throughput_<device>[_<shape>].json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import write_result

from agentrl.algorithms import ppo
from agentrl.testing import token_episode
from agentrl.training.batch import build_batch, collate
from agentrl.training.config import LearnerConfig
from agentrl.training.learner import Learner
from agentrl.trajectory import Episode

SHAPES = {
    "tiny": dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}  # fmt: skip


def build_model(shape: str, device: torch.device):
    import transformers

    config = transformers.Qwen2Config(**SHAPES[shape], max_position_embeddings=1024)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).to(device)


def episodes(n_rows: int, prompt_len: int, response_len: int, vocab: int) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n_rows):  # one-turn episodes in groups of 4 with different returns
        prompt = torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
        response = torch.randint(0, vocab, (response_len,), generator=g).tolist()
        logprobs = (-torch.rand(response_len, generator=g) * 5).tolist()
        turn = dict(prompt=prompt, response=response, logprobs=logprobs, reward=float(k % 4))
        out.append(token_episode([turn], env_id="bench", task_id=str(k // 4), group_id=str(k // 4)))
    return out


def naive_step(model, optimizer, batch, advantages) -> None:
    """Full logits for every position, float32 log-softmax, gather: the usual trainer's inner loop."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch["input_ids"].is_cuda):
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits  # [B, L, V]
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    targets = batch["targets"].clamp(min=0)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L]
    logp = logp[batch["step_seq"], batch["step_pos"]]  # [S, R]
    loss = ppo.clip_loss(logp, batch["old_logp"], advantages, batch["mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.shape != "tiny" and device.type != "cuda":
        parser.error(f"--shape {args.shape} needs a CUDA GPU")
    vocab = SHAPES[args.shape]["vocab_size"]
    prompt_len, response_len = (192, 32) if args.shape == "tiny" else (448, 64)
    n_rows = (64 if device.type == "cuda" else 16) if args.shape == "tiny" else 32
    batch_episodes = episodes(n_rows, prompt_len, response_len, vocab)
    total_tokens = n_rows * (prompt_len + response_len)

    precision = "bf16" if device.type == "cuda" else "fp32"
    learner = Learner(
        build_model(args.shape, device),
        LearnerConfig(lr=1e-6, micro_batch_tokens=1 << 30, precision=precision),
    )
    baseline_model = build_model(args.shape, device)
    optimizer = torch.optim.AdamW(baseline_model.parameters(), lr=1e-6)
    rows = build_batch(batch_episodes)
    batch = collate(rows, list(range(len(rows.sequences))), 0, device)
    advantages = learner.advantages(rows)[batch["steps"]].to(device)

    peaks = {"learner": 0, "naive": 0}

    def timed(fn, side: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peaks[side] = max(peaks[side], torch.cuda.max_memory_allocated() - before)
        return time.perf_counter() - start

    timed(lambda: learner.update(batch_episodes), "learner")  # warm-up
    timed(lambda: naive_step(baseline_model, optimizer, batch, advantages), "naive")
    learner_s, naive_s = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both
        learner_s.append(timed(lambda: learner.update(batch_episodes), "learner"))
        naive_s.append(timed(lambda: naive_step(baseline_model, optimizer, batch, advantages), "naive"))
    learner_tps = total_tokens / statistics.median(learner_s)
    naive_tps = total_tokens / statistics.median(naive_s)
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in baseline_model.parameters()),
        "shape": {
            "name": args.shape,
            "rows": n_rows,
            "prompt": prompt_len,
            "response": response_len,
            "vocab": vocab,
        },
        "precision": precision,
        "peak_extra_bytes": peaks if device.type == "cuda" else None,
        "learner_seconds": learner_s,
        "naive_seconds": naive_s,
        "learner_tokens_per_s": round(learner_tps, 1),
        "naive_tokens_per_s": round(naive_tps, 1),
        "speedup_learner_over_naive": round(learner_tps / naive_tps, 2),
    }
    path = write_result(
        f"learner_throughput_{device.type}" + ("" if args.shape == "tiny" else f"_{args.shape}"), result
    )
    memory = (
        f" | peak extra memory {peaks['learner'] / 2**30:.2f} vs {peaks['naive'] / 2**30:.2f} GiB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"learner {learner_tps:,.0f} tok/s | naive full-logits {naive_tps:,.0f} tok/s | "
        f"ratio {learner_tps / naive_tps:.2f}x{memory}  -> {path}"
    )


if __name__ == "__main__":
    main()
