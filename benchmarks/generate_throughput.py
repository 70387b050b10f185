"""New tokens/s of our transformers backend against plain ``model.generate``, in one run.

A Qwen2-0.5B-shaped model built from a config (random weights, nothing downloaded), batch 64, prompt
256, 128 new tokens (end-of-sequence disabled so every row decodes all 128), as in the issue's
measurement on one H200 (plain generate 3,600 new tokens/s, ``cache_implementation="static"``
12,762). Rows: plain ``generate`` (dynamic cache), ``generate`` with the static cache, and
``HFPolicy`` (static cache; with ``--compile`` also the compiled decode step). Each is timed after a
warm-up call, with CUDA synchronised. Writes ``benchmarks/results/generate_throughput.json``.

    python benchmarks/generate_throughput.py              # on a GPU
    python benchmarks/generate_throughput.py --small      # a tiny shape, to check the script on a CPU
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import write_result

from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.testing import tiny_tokenizer


def build(small: bool, device: str, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if small:
        config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)  # fmt: skip
    else:  # Qwen2-0.5B shape
        config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                             tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time HFPolicy(compile=True)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu":
        torch.set_num_threads(1)  # shared CPU cores: avoid oversubscription stalls
    if args.small:
        args.batch, args.prompt, args.new = min(args.batch, 8), min(args.prompt, 64), min(args.new, 32)
    model = build(args.small, device, dtype)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, vocab, (args.batch, args.prompt), generator=generator)
    ids, mask = prompts.to(device), torch.ones_like(prompts).to(device)
    tokenizer = tiny_tokenizer()  # only its pad/eos ids are used: prompts are ids already
    new_tokens = args.batch * args.new

    def plain(cache: str | None):
        kwargs = {"cache_implementation": cache} if cache else {}
        return lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                      do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=None,
                                      pad_token_id=0, **kwargs)  # fmt: skip

    sampling = SamplingParams(max_new_tokens=args.new, temperature=1.0, stop_token_ids=(), return_entropies=True)
    rows = {}
    rows["generate (dynamic cache)"] = timed(plain(None), device, args.repeats)
    rows["generate (static cache)"] = timed(plain("static"), device, args.repeats)
    policy = HFPolicy(model, tokenizer, device=device, static_cache=True)
    prompt_lists = prompts.tolist()
    rows["HFPolicy (static cache, logprobs + entropies)"] = timed(lambda: policy.generate(prompt_lists, sampling), device, args.repeats)
    if args.compile:
        compiled = HFPolicy(model, tokenizer, device=device, static_cache=True, compile=True)
        rows["HFPolicy (static cache, compiled decode)"] = timed(lambda: compiled.generate(prompt_lists, sampling), device, args.repeats)
    base = new_tokens / rows["generate (dynamic cache)"]
    result = []
    for name, seconds in rows.items():
        rate = new_tokens / seconds
        result.append({"name": name, "seconds": seconds, "new_tokens_per_second": rate, "vs_plain_generate": rate / base})
        print(f"{name:<48} {rate:>12,.0f} new tok/s  {rate / base:5.2f}x")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    path = write_result("generate_throughput" + ("_small" if args.small else ""), {
        "device": gpu or "cpu", "dtype": str(dtype), "batch": args.batch, "prompt_tokens": args.prompt,
        "new_tokens": args.new, "rows": result,
    })  # fmt: skip
    print(f"written {path}")


if __name__ == "__main__":
    main()
