"""Rollout new tokens/s: plain ``model.generate``, the static cache, ``HFPolicy`` and vLLM, against the decode floor.

A Qwen2-0.5B-shaped model built from a config (random weights, nothing downloaded; throughput does not
depend on their values), batch 64, prompt 256, 128 new tokens (end-of-sequence disabled so every row
decodes all 128), as in the issue's measurement on one H200 (plain generate 3,600 new tokens/s,
``cache_implementation="static"`` 12,762). Rows:

* ``generate`` with the dynamic cache (plain) and with the static cache;
* ``HFPolicy`` (our sampler: static cache, log-probs and entropies; ``--compile``: compiled decode step);
* ``VLLMPolicy`` (vLLM's engine through our policy, prefix caching off so repeats pay their prefill),
  when vLLM imports; its weight sync (publish a version as safetensors + ``load_published``) and a
  sleep/wake cycle are timed too.

The decode floor: every decode step reads all weights and the KV cache written so far from HBM, so
``new tokens/s <= batch * bandwidth / (weight bytes + mean KV bytes per step)``; the bandwidth is
measured here with a device-to-device copy (bytes read + written per second). Each row reports its
share of that floor. Each row is timed after a warm-up call, with CUDA synchronised. Writes
``benchmarks/results/generate_throughput.json``.

    python benchmarks/generate_throughput.py              # on a GPU
    python benchmarks/generate_throughput.py --small      # a tiny shape, to check the script on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
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


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a device-to-device copy of 1 GiB (the achievable HBM bandwidth)."""
    n = (1 << 30) // 2 if device == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 10)
    return 2 * n * src.element_size() / seconds


def decode_floor(model, args, bandwidth: float) -> dict[str, float]:
    """The floor on new tokens/s from bytes that each decode step must read (weights once, the batch's KV cache)."""
    config = model.config
    seen, weight_bytes = set(), 0
    for p in model.parameters():  # tied embeddings are read once
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            weight_bytes += p.numel() * p.element_size()
    head_dim = config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize
    mean_context = args.prompt + args.new / 2
    kv_bytes = args.batch * mean_context * kv_per_token
    step_seconds = (weight_bytes + kv_bytes) / bandwidth
    return {"weight_bytes": weight_bytes, "mean_kv_bytes_per_step": kv_bytes, "bandwidth_bytes_per_s": bandwidth,
            "floor_step_seconds": step_seconds, "floor_new_tokens_per_second": args.batch / step_seconds}  # fmt: skip


def vllm_rows(model, prompt_lists, sampling, args, device: str) -> tuple[dict[str, float], dict[str, object]]:
    """Throughput of VLLMPolicy on the same weights, plus its weight-sync and sleep/wake times."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        return {}, {"vllm": f"skipped: vllm is not importable ({exc})"}
    if device != "cuda":
        return {}, {"vllm": "skipped: vLLM needs a CUDA device"}
    from agentrl.distributed.weights import WeightPublisher
    from agentrl.policies.vllm import VLLMPolicy

    notes: dict[str, object] = {"vllm_version": vllm.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/model")
        policy = VLLMPolicy(f"{tmp}/model", dtype="bfloat16", gpu_memory_utilization=0.35, skip_tokenizer_init=True,
                            enable_prefix_caching=False, max_model_len=args.prompt + args.new + 16, sleep_mode=True,
                            max_num_seqs=max(args.batch, 64))  # fmt: skip
        rows = {"VLLMPolicy (vLLM engine, logprobs)": timed(lambda: policy.generate(prompt_lists, sampling), device, args.repeats)}
        started = time.perf_counter()
        path = WeightPublisher(f"{tmp}/weights").publish(model.state_dict(), 1)
        published = time.perf_counter()
        policy.load_published(path, 1)
        loaded = time.perf_counter()
        policy.sleep()
        slept = time.perf_counter()
        policy.wake_up()
        woke = time.perf_counter()
        notes.update(sync_publish_seconds=published - started, sync_load_seconds=loaded - published,
                     sleep_seconds=slept - loaded, wake_seconds=woke - slept)  # fmt: skip
        completions = policy.generate(prompt_lists[:2], sampling)  # still generating after all that
        notes["after_sync_new_tokens"] = [c.num_tokens for c in completions]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time HFPolicy(compile=True)")
    parser.add_argument("--no-vllm", action="store_true", help="leave out the vLLM rows")
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
    notes: dict[str, object] = {}
    if not args.no_vllm:
        extra, notes = vllm_rows(model, prompt_lists, sampling, args, device)
        rows.update(extra)
    floor = decode_floor(model, args, copy_bandwidth(device))
    base = new_tokens / rows["generate (dynamic cache)"]
    result = []
    print(f"{'decode floor (weights + KV bytes / copy bandwidth)':<48} {floor['floor_new_tokens_per_second']:>12,.0f} new tok/s")
    for name, seconds in rows.items():
        rate = new_tokens / seconds
        share = rate / floor["floor_new_tokens_per_second"]
        result.append({"name": name, "seconds": seconds, "new_tokens_per_second": rate, "vs_plain_generate": rate / base,
                       "fraction_of_floor": share})  # fmt: skip
        print(f"{name:<48} {rate:>12,.0f} new tok/s  {rate / base:5.2f}x plain  {100 * share:5.1f}% of floor")
    for key, value in notes.items():
        print(f"{key}: {value}")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    path = write_result("generate_throughput" + ("_small" if args.small else ""), {
        "device": gpu or "cpu", "dtype": str(dtype), "batch": args.batch, "prompt_tokens": args.prompt,
        "new_tokens": args.new, "decode_floor": floor, "rows": result, "notes": notes,
    })  # fmt: skip
    print(f"written {path}")


if __name__ == "__main__":
    main()
