"""The FSDP2 learner on two CPU processes (gloo, launched by torchrun) equals the single-process update.

One torchrun launch runs every case in turn: the same tiny Qwen2 and the same batch (4 GRPO groups of 2
multi-turn episodes with uneven lengths, behaviour log-probs that make the PPO clip active, measured
durations), two updates with the FSDP2 learner (each rank scores two groups, weights and AdamW state
sharded) and with the plain :class:`Learner`: the weights (or LoRA adapters), gradient norms and the
whole-batch metrics must agree. A case per algorithm and option: GRPO, Dr.GRPO, GiGPO, EMPG, duration
weights, Clip-Cov, KL-Cov, KL, EPO, the entropy bonus, mini-batches (2, and 8 = one trajectory each, so
one rank sits every step out), two epochs with gradient checkpointing, small micro-batches (uneven
counts per rank), LoRA with KL to the adapter-free base, constrained decoding's allowed sets, stale data
(decoupled PPO) and a tied head driven from rank 0 as the actor-learner does. The batch's data is
sampled by policy version 0: the first update is on-policy, the second stale. The rank-0 case also runs
the token-exactness check through the front (rank 0 scores, the other rank lines up its passes) and
writes the final model; the LoRA case writes it merged: both equal the single process's.

Every case records the shape of every tensor any op creates (a ``TorchDispatchMode``) and reports
the most rows of any tensor whose last dimension is the vocabulary: the fused kernel works in
vocabulary chunks of 64 (< V = 251), so there must be none, also in the passes of one pad token a
rank runs to line up its collectives; the same update with the fused path switched off must show
``[N, V]`` logits.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentrl.distributed.fsdp import split_groups  # noqa: E402
from agentrl.testing import token_episode  # noqa: E402
from agentrl.training.config import LearnerConfig, LoRAConfig  # noqa: E402
from agentrl.training.exactness import behaviour_logprob_gap  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402
from agentrl.trajectory import Episode  # noqa: E402

VOCAB = 251
BASE = dict(lr=1e-3, total_steps=10, max_grad_norm=1.0)
LORA = dict(r=4, alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"])
# name -> (learner config over BASE, batch kind, tied head)
CASES = {
    "grpo": ({}, "fresh", False),
    "dr_grpo": ({"advantage": "dr_grpo"}, "fresh", False),
    "gigpo": ({"advantage": "gigpo"}, "fresh", False),
    "empg": ({"shaping": ["empg"]}, "fresh", False),
    "duration": ({"shaping": ["duration"]}, "fresh", False),
    "clip_cov": ({"policy_loss": "clip_cov", "options": {"clip_cov": {"clip_ratio": 0.1, "cov_low": -1.0, "cov_high": 1.0}}}, "fresh", False),
    "kl_cov": ({"policy_loss": "kl_cov", "options": {"kl_cov": {"k_ratio": 0.1, "kl_coef": 1.0}}}, "fresh", False),
    "kl": ({"terms": ["kl"], "options": {"kl": {"coef": 1.0}}}, "fresh", False),
    "epo": ({"terms": ["epo"], "options": {"epo": {"lam": 0.3}}}, "fresh", False),
    "entropy_seq_mean": ({"terms": ["entropy"], "options": {"entropy": {"coef": 0.05}}, "agg": "seq-mean-token-mean"}, "fresh", False),
    "mini_batches_2": ({"mini_batches": 2}, "fresh", False),
    "mini_batches_8": ({"mini_batches": 8}, "fresh", False),
    "epochs_2_checkpointing": ({"epochs": 2, "mini_batches": 2, "gradient_checkpointing": True}, "fresh", False),
    "micro_batches_kl_cov_kl": ({"micro_batch_tokens": 40, "policy_loss": "kl_cov", "terms": ["kl"],
                                 "options": {"kl_cov": {"k_ratio": 0.1}, "kl": {"coef": 1.0}}}, "fresh", False),
    "lora_kl": ({"lora": LORA, "lr": 1e-2, "terms": ["kl"], "options": {"kl": {"coef": 1.0}}}, "fresh", False),
    "constrained": ({}, "constrained", False),
    "stale": ({}, "stale", False),
    "tied_duration_rank0": ({"shaping": ["duration"]}, "fresh", True),
}  # fmt: skip


def tiny_model(tied: bool = False) -> torch.nn.Module:
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def learner_config(name: str) -> LearnerConfig:
    config = {**BASE, **CASES[name][0]}
    if "lora" in config:
        config["lora"] = LoRAConfig(**config["lora"])
    return LearnerConfig(**config)


def batch(kind: str = "fresh") -> list[Episode]:
    """4 groups x 2 episodes, 1-3 turns each; ``kind``: fresh (version 0), stale (version unknown), constrained."""
    g = torch.Generator().manual_seed(3)
    pick = random.Random(5)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    episodes = []
    for group in range(4):
        for member in range(2):
            prompt, turns = ids(5 + group), []
            for turn in range(1 + (group + member) % 3):
                response = ids(2 + (3 * group + member + turn) % 5)
                old = (-5.2 - 0.8 * torch.rand(len(response), generator=g)).tolist()  # the clip is active
                entropies = (0.5 + 5 * torch.rand(len(response), generator=g)).tolist()  # a wide range for EMPG
                allowed = None
                if kind == "constrained" and (group + turn) % 2 == 0:  # every other token of half the turns
                    allowed = [sorted({t, *pick.sample(range(3, VOCAB), 4)}) if j % 2 == 0 else None for j, t in enumerate(response)]
                    old = [-1.2 - 0.3 * pick.random() if a is not None else v for a, v in zip(allowed, old, strict=True)]
                turns.append(dict(prompt=list(prompt), response=response, logprobs=old, reward=float((group + member + turn) % 2),
                                  env_seconds=0.05 + 0.1 * ((group * 7 + member * 3 + turn) % 5),
                                  version=None if kind == "stale" else 0, allowed=allowed, entropies=entropies))  # fmt: skip
                prompt = prompt + response + ids(3)
            episodes.append(token_episode(turns, task_id=f"t{group}", group_id=f"g{group}"))
    return episodes


RANK_SCRIPT = textwrap.dedent('''
    import pickle, sys
    import torch, torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    sys.path.insert(0, sys.argv[1])  # this test module's directory
    from test_fsdp import CASES, VOCAB, batch, learner_config, tiny_model
    import agentrl.kernels.logprob_entropy as kernel
    import agentrl.training.logprobs as logprobs
    from agentrl.distributed.fsdp import FSDPLearner, RankZeroLearner, follow_updates
    from agentrl.training.exactness import behaviour_logprob_gap

    torch.set_num_threads(1)
    kernel._chunk_len = lambda rows, vocab, chunk_size, device: min(vocab, 64)  # chunks narrower than V

    class VocabRows(TorchDispatchMode):
        """The most rows of any tensor an op creates whose last dimension is the vocabulary."""
        def __init__(self):
            super().__init__()
            self.most, self.where = 0, None
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == VOCAB and t.numel() // VOCAB > self.most:
                    self.most, self.where = t.numel() // VOCAB, f"{func} -> {tuple(t.shape)}"
            return out

    def run(name, updates=2):
        config, kind, tied = CASES[name]
        episodes = batch(kind)
        model = tiny_model(tied)
        torch.manual_seed(1)  # LoRA's initial adapters
        learner = FSDPLearner(model, learner_config(name), pad_token_id=0)
        rows = VocabRows()
        out = {}
        export = f"{sys.argv[2]}.{name}.export"
        if not tied:  # every rank is given the batch
            with rows:
                out["metrics"] = [learner.update(episodes) for _ in range(updates)]
            out["state"] = learner.full_state_dict()
            out["adapter"] = learner.lora_adapter()
            if config.get("lora"):  # merged into a plain model, written by rank 0
                written = learner.export_pretrained(export, tiny_model(tied) if dist.get_rank() == 0 else None)
                out["export"] = written and str(written)
        elif dist.get_rank() == 0:  # rank 0 drives and broadcasts, as under the actor-learner
            front = RankZeroLearner(learner)
            with rows:
                out["gap"] = behaviour_logprob_gap(front, episodes, version=0)  # the token-exactness check
                out["metrics"] = [front.update(episodes) for _ in range(updates)]
            out["state"] = front.full_state_dict()
            out["export"] = str(front.export_pretrained(export, tiny_model(tied)))
            front.close()
        else:
            with rows:
                assert follow_updates(learner) == updates
        most = torch.tensor([rows.most])
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        out["vocab_rows"], out["where"] = int(most), rows.where
        return out

    dist.init_process_group("gloo")
    results = {name: run(name) for name in (sys.argv[3].split(",") if len(sys.argv) > 3 else CASES)}
    logprobs._plain_linear = lambda head: False  # the unfused head: full [N, V] logits
    results["unfused"] = {"vocab_rows": run("grpo", updates=1)["vocab_rows"]}
    if dist.get_rank() == 0:
        torch.save(results, sys.argv[2])
    dist.destroy_process_group()
''')

METRICS_EXACT = ("policy_version", "trained_tokens", "rows", "sequences", "episodes", "stale_steps", "dropped_episodes")
METRICS_CLOSE = ("grad_norm", "loss", "pg_loss", "entropy", "clip_frac", "approx_kl", "behaviour_weight", "return_mean",
                 "success_rate", "adv_mean", "adv_std", "adv_min", "adv_max", "kl", "epo_entropy", "epo_reference",
                 "entropy_bonus", "total_tokens")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_groups_keeps_groups_whole_and_balances_tokens():
    episodes = batch()
    shards = split_groups(episodes, 2)
    assert sorted(shards[0] + shards[1]) == list(range(8))
    for shard in shards:
        groups = {episodes[i].group_id for i in shard}
        assert all(sum(ep.group_id == g for ep in (episodes[i] for i in shard)) == 2 for g in groups)
    with pytest.raises(ValueError, match="4 groups cannot feed 5 ranks"):
        split_groups(episodes, 5)


def single_process(name: str, updates: int = 2) -> tuple[Learner, list[list[dict]]]:
    config, kind, tied = CASES[name]
    model = tiny_model(tied)
    torch.manual_seed(1)
    learner = Learner(model, learner_config(name), pad_token_id=0)
    episodes = batch(kind)
    return learner, [learner.update(episodes) for _ in range(updates)]


def run_two_ranks(out, cases: list[str] | None = None) -> subprocess.CompletedProcess:
    """torchrun the rank script on 2 CPU processes; ``out`` receives rank 0's results."""
    script = out.parent / "rank.py"
    script.write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script), os.path.dirname(__file__), str(out),
               *([",".join(cases)] if cases else [])]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "results.pt"
    started = time.perf_counter()
    result = run_two_ranks(out)
    assert result.returncode == 0, result.stderr[-5000:]
    print(json.dumps({"two_rank_seconds": round(time.perf_counter() - started, 1)}))
    return torch.load(out, weights_only=False)


def initial_state(name: str) -> dict[str, torch.Tensor]:
    """The weights a case starts from (with LoRA: the base and the seeded initial adapters)."""
    model = tiny_model(CASES[name][2])
    torch.manual_seed(1)
    return {k: v.clone() for k, v in Learner(model, learner_config(name)).model.state_dict().items()}


def state_difference(got: dict, reference: Learner, initial: dict) -> dict[str, float]:
    """Per-tensor max and mean |FSDP - single process|, checking every trained tensor moved."""
    expected = reference.model.state_dict()
    assert set(got) == set(expected)
    trained = {n for n, p in reference.model.state_dict(keep_vars=True).items() if p.requires_grad}
    worst = {"max": 0.0, "mean": 0.0}
    for name, value in expected.items():
        diff = (got[name] - value).abs()
        if name in trained:
            assert (value - initial[name]).abs().mean() > 1e-5, name  # every trained tensor moved: not vacuous
        else:
            assert torch.equal(got[name], initial[name]), name  # frozen (LoRA's base) stays put
        worst["max"] = max(worst["max"], diff.max().item())
        worst["mean"] = max(worst["mean"], diff.mean().item())
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fsdp2_on_two_cpu_processes_matches_the_single_process_update(fsdp_results, name):
    got = fsdp_results[name]
    reference, expected = single_process(name)
    initial = initial_state(name)
    assert len(got["metrics"]) == len(expected)
    for mine_update, ref_update in zip(got["metrics"], expected, strict=True):
        assert len(mine_update) == len(ref_update)  # optimizer steps per update
        for mine, ref in zip(mine_update, ref_update, strict=True):
            assert not mine["skipped"] and not ref["skipped"]
            for key in METRICS_EXACT:
                assert mine[key] == ref[key], (key, mine[key], ref[key])
            for key in METRICS_CLOSE:
                if key in ref and ref[key] is not None:
                    assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    worst = state_difference(got["state"], reference, initial)
    # Float32 summation order differs between one process and two; AdamW's g / sqrt(v) magnifies that only
    # where a gradient is ~0, so: tiny on average, and far below one step at worst.
    assert worst["mean"] < 1e-7 and worst["max"] < 2e-5, worst
    if got.get("adapter") is not None:
        tensors, config = got["adapter"]
        ref_tensors, ref_config = reference.lora_adapter()
        assert set(tensors) == set(ref_tensors) and config == ref_config
        for key, value in ref_tensors.items():
            torch.testing.assert_close(tensors[key], value, rtol=0, atol=2e-5)
    if "gap" in got:  # rank 0 scored for the token-exactness check, the other rank lined up its passes
        fresh = Learner(tiny_model(CASES[name][2]), learner_config(name), pad_token_id=0)
        expected_gap = behaviour_logprob_gap(fresh, batch(CASES[name][1]), version=0)
        assert got["gap"]["exact/tokens"] == expected_gap["exact/tokens"] > 0
        for key in ("exact/max_abs_logp_diff", "exact/mean_abs_logp_diff"):
            assert got["gap"][key] == pytest.approx(expected_gap[key], rel=1e-5), key
    if got.get("export") is not None:  # a plain Hugging Face model, LoRA merged, as Learner.export_pretrained
        exported = transformers.AutoModelForCausalLM.from_pretrained(got["export"]).state_dict()
        merged = reference.export_pretrained(got["export"] + ".reference")
        expected_export = transformers.AutoModelForCausalLM.from_pretrained(merged).state_dict()
        assert set(exported) == set(expected_export)
        for key, value in expected_export.items():
            torch.testing.assert_close(exported[key], value, rtol=0, atol=2e-5)
    assert got["vocab_rows"] == 0, got["where"]  # the fused kernel: never [N, V] logits, not even [1, V]
    effect = option_effect(name, reference)
    print(json.dumps({"case": name, **worst, "effect": effect, "vocab_rows": got["vocab_rows"], "where": got["where"]}))
    if effect is not None:  # the option changed the update far more than one process and two ranks differ
        assert effect > 10 * worst["max"], (effect, worst)


@functools.cache
def plain_update() -> dict[str, torch.Tensor]:
    return single_process("grpo")[0].model.state_dict()


def option_effect(name: str, reference: Learner) -> float | None:
    """Largest weight difference the case's option (or batch) makes against plain GRPO (same model shape)."""
    if name == "grpo" or CASES[name][2] or "lora" in CASES[name][0]:
        return None
    plain = plain_update()
    return max((value - plain[key]).abs().max().item() for key, value in reference.model.state_dict().items())


@pytest.mark.slow
def test_the_unfused_head_would_build_full_vocabulary_logits(fsdp_results):
    """The no-[N, V] check can fail: with the fused path off the same update builds the logits."""
    print(json.dumps({"case": "unfused", "vocab_rows": fsdp_results["unfused"]["vocab_rows"]}))
    assert fsdp_results["unfused"]["vocab_rows"] > 8
