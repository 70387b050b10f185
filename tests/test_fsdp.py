"""The FSDP2 learner on two CPU processes (gloo, launched by torchrun) equals the single-process update.

Same tiny Qwen2 (untied and tied LM head), same batch (4 GRPO groups of multi-turn episodes with uneven lengths, stale
behaviour log-probs so the PPO clip is active, measured durations): two updates with the FSDP2
learner (each rank scores half the groups, weights and AdamW state sharded) and with the plain
Learner must give the same weights and gradient norms. The tied-head case goes through the path the
actor-learner uses under torchrun: rank 0 broadcasts each batch, the other ranks follow.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentrl.distributed.fsdp import split_groups  # noqa: E402
from agentrl.testing import token_episode  # noqa: E402
from agentrl.training.config import LearnerConfig  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402
from agentrl.trajectory import Episode  # noqa: E402

VOCAB = 97
CONFIG = dict(lr=1e-3, total_steps=10, shaping=["duration"], max_grad_norm=1.0)


def tiny_model(tied: bool = False) -> torch.nn.Module:
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def batch() -> list[Episode]:
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    episodes = []
    for group in range(4):
        for member in range(2):
            prompt, turns = ids(5 + group), []
            for turn in range(1 + (group + member) % 3):
                response = ids(2 + (3 * group + member + turn) % 5)
                old = (-4.6 - 0.8 * torch.rand(len(response), generator=g)).tolist()  # the clip is active
                turns.append(dict(prompt=list(prompt), response=response, logprobs=old, reward=float((group + member + turn) % 2),
                                  env_seconds=0.05 + 0.1 * ((group * 7 + member * 3 + turn) % 5)))  # fmt: skip
                prompt = prompt + response + ids(3)
            episodes.append(token_episode(turns, task_id=f"t{group}", group_id=f"g{group}"))
    return episodes


RANK_SCRIPT = textwrap.dedent('''
    import json, pickle, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    from fsdp_case import CONFIG, tiny_model
    from agentrl.distributed.fsdp import FSDPLearner, RankZeroLearner, follow_updates
    from agentrl.training.config import LearnerConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    episodes = pickle.load(open(sys.argv[2], "rb"))
    for tied in (False, True):
        learner = FSDPLearner(tiny_model(tied), LearnerConfig(**CONFIG), pad_token_id=0)
        if not tied:  # every rank is given the batch
            metrics = [learner.update(episodes)[0] for _ in range(2)]
            state = learner.full_state_dict()
        elif dist.get_rank() == 0:  # rank 0 drives and broadcasts, as under the actor-learner
            front = RankZeroLearner(learner)
            metrics = [front.update(episodes)[0] for _ in range(2)]
            state = front.full_state_dict()
            front.close()
        else:
            assert follow_updates(learner) == 2
        out = f"{sys.argv[3]}.{int(tied)}"
        if dist.get_rank() == 0:
            torch.save(state, out)
            json.dump([{k: m[k] for k in ("grad_norm", "policy_version")} for m in metrics], open(out + ".json", "w"))
    dist.destroy_process_group()
''')


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


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_the_single_process_update(tmp_path):
    import inspect

    (tmp_path / "fsdp_case.py").write_text(
        "import torch, transformers\n"
        f"VOCAB = {VOCAB}\nCONFIG = {CONFIG!r}\n" + inspect.getsource(tiny_model)
    )
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    episodes = batch()
    (tmp_path / "episodes.pkl").write_bytes(pickle.dumps(episodes))
    out = tmp_path / "fsdp_state.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}",
               str(tmp_path / "rank.py"), str(tmp_path), str(tmp_path / "episodes.pkl"), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]

    torch.set_num_threads(1)
    for tied in (False, True):
        reference = Learner(tiny_model(tied), LearnerConfig(**CONFIG), pad_token_id=0)
        expected = [reference.update(episodes)[0] for _ in range(2)]
        got = json.loads((tmp_path / f"fsdp_state.pt.{int(tied)}.json").read_text())
        assert [m["policy_version"] for m in got] == [1, 2]
        for mine, ref in zip(got, expected, strict=True):
            assert mine["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        state = torch.load(f"{out}.{int(tied)}", weights_only=True)
        initial = tiny_model(tied).state_dict()
        assert set(state) == set(initial)
        for name, value in reference.model.state_dict().items():
            moved = (value - initial[name]).abs()
            diff = (state[name] - value).abs()
            assert moved.mean() > 1e-4  # every tensor moved (2 AdamW steps of lr 1e-3): not vacuous
            # Float32 summation order differs between one process and two; AdamW's g / sqrt(v) magnifies
            # that only where a gradient is ~0, so: tiny on average, and far below one step at worst.
            assert diff.mean() < 1e-7, (tied, name, diff.mean().item())
            assert diff.max() < 2e-5, (tied, name, diff.max().item())
