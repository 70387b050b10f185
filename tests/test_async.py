"""Weight publishing between the learner and rollout workers (no Ray needed): safetensors versions,
atomic publishes, pruning that never pulls a version from under a reader, and LoRA adapters in PEFT's format."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from agentrl.distributed import weights  # noqa: E402
from agentrl.distributed.weights import WeightPublisher, latest_version, load_latest  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.tensor([value])}


def test_versions_are_safetensors_and_workers_see_only_newer_ones(tmp_path):
    from safetensors.torch import load_file

    publisher = WeightPublisher(tmp_path, keep=2)
    assert latest_version(tmp_path) is None and load_latest(tmp_path) is None  # nothing published yet
    for version in (1, 2, 3):
        publisher.publish(state(float(version)), version)
    assert publisher.versions() == [2, 3]  # keep=2 newest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "v2", "v3"]
    on_disk = load_file(tmp_path / "v3" / "model.safetensors")  # plain safetensors, no agentrl needed
    assert torch.equal(on_disk["w"], torch.full((2, 3), 3.0))
    published = load_latest(tmp_path, newer_than=1)
    assert published.version == 3 and not published.is_adapter
    assert torch.equal(published.tensors["w"], torch.full((2, 3), 3.0))
    assert load_latest(tmp_path, newer_than=3) is None


def test_a_crash_mid_publish_leaves_the_previous_version_in_force(tmp_path):
    publisher = WeightPublisher(tmp_path)
    publisher.publish(state(1.0), 1)
    half = tmp_path / ".tmp-v2-4242"  # what a publisher killed mid-write leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half a file")
    published = load_latest(tmp_path)
    assert published.version == 1 and published.tensors["b"].item() == 1.0
    assert publisher.versions() == [1]
    publisher.publish(state(2.0), 2)
    assert not half.exists() and load_latest(tmp_path).version == 2  # the next publish cleans up


def test_published_tensors_load_without_autograd_state(tmp_path):
    WeightPublisher(tmp_path).publish({"w": torch.ones(2, requires_grad=True) * 2}, 5)
    published = load_latest(tmp_path)
    assert published.version == 5 and torch.equal(published.tensors["w"], torch.full((2,), 2.0))
    assert not published.tensors["w"].requires_grad


def test_tied_embeddings_are_written_once_and_load_strictly(tmp_path, tiny_chat_model):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tiny model ties them, as Qwen2-0.5B does
    WeightPublisher(tmp_path).publish(model.state_dict(), 1)
    with safe_open(tmp_path / "v1" / "model.safetensors", framework="pt") as handle:
        stored = set(handle.keys())
        assert json.loads(handle.metadata()["agentrl_tied"]) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert stored == set(model.state_dict()) - {"lm_head.weight"}
    fresh = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    torch.nn.init.zeros_(fresh.model.embed_tokens.weight)
    fresh.load_state_dict(load_latest(tmp_path).tensors, strict=True)
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)


def test_pruning_waits_for_a_reader_that_is_still_loading(tmp_path, monkeypatch):
    publisher = WeightPublisher(tmp_path, keep=1)
    publisher.publish(state(1.0), 1)
    reading, release = threading.Event(), threading.Event()
    real_read = weights._read_version

    def slow_read(path, version):  # a reader stuck mid-load (a big model on a slow disk)
        reading.set()
        assert release.wait(30)
        return real_read(path, version)

    monkeypatch.setattr(weights, "_read_version", slow_read)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("got", load_latest(tmp_path)))
    reader.start()
    assert reading.wait(30)
    monkeypatch.setattr(weights, "_read_version", real_read)
    publisher.publish(state(2.0), 2)
    publisher.publish(state(3.0), 3)
    assert publisher.versions() == [1, 3]  # v2 pruned, v1 kept: its reader holds it
    release.set()
    reader.join(30)
    assert result["got"].version == 1 and torch.equal(result["got"].tensors["w"], torch.full((2, 3), 1.0))
    publisher.publish(state(4.0), 4)
    assert publisher.versions() == [4]  # released, so pruned now


def test_a_reader_that_loses_the_race_to_pruning_reads_latest_again(tmp_path):
    import fcntl
    import os

    publisher = WeightPublisher(tmp_path, keep=1)
    publisher.publish(state(1.0), 1)
    fd = os.open(tmp_path / "v1", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a pruner in the middle of deleting v1
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("got", load_latest(tmp_path)))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive()  # LATEST said 1, so it waits on v1's lock
    publisher.publish(state(2.0), 2)  # its own pruning of v1 is refused: we hold the lock
    os.rename(tmp_path / "v1", tmp_path / ".pruned-v1-test")  # what the pruner does under its lock
    os.close(fd)
    reader.join(30)
    assert result["got"].version == 2 and result["got"].tensors["b"].item() == 2.0


READER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from agentrl.distributed.weights import load_latest
    directory, stop = Path(sys.argv[1]), Path(sys.argv[2])
    loads, newest, seen = 0, -1, set()
    print("ready", flush=True)
    while not stop.exists():
        published = load_latest(directory, newer_than=None)
        if published is None:
            continue
        v = float(published.version)
        assert published.version >= newest, (published.version, newest)
        assert torch.equal(published.tensors["w"], torch.full((64, 64), v)), published.version
        assert torch.equal(published.tensors["b"], torch.full((64,), v)), published.version
        loads, newest = loads + 1, published.version
        seen.add(newest)
    print(loads, newest, len(seen))
""")


def test_a_reader_process_never_sees_a_torn_or_vanished_version(tmp_path):
    """A real second process reads in a loop while versions are published and pruned (keep=1) as fast as possible."""
    directory, stop = tmp_path / "weights", tmp_path / "stop"
    publisher = WeightPublisher(directory, keep=1)
    publisher.publish({"w": torch.zeros(64, 64), "b": torch.zeros(64)}, 0)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(directory), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "ready"  # torch imported: the race starts now
        for version in range(1, 61):
            publisher.publish({"w": torch.full((64, 64), float(version)), "b": torch.full((64,), float(version))}, version)
            time.sleep(0.02)
        time.sleep(1.0)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    loads, newest, distinct = map(int, out.split())
    assert newest == 60 and distinct >= 10 and loads >= distinct  # it really read while versions came and went
    assert len(publisher.versions()) <= 2  # at most the newest and one a reader still held at the last publish


# ------------------------------------------------------------------ LoRA adapters


@pytest.fixture
def lora_learner(tiny_chat_model):
    from transformers import AutoModelForCausalLM

    from agentrl.training.config import LearnerConfig, LoRAConfig
    from agentrl.training.learner import Learner

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    learner = Learner(model, LearnerConfig(lr=1e-3, total_steps=4, lora=LoRAConfig(r=4, alpha=8)))
    set_adapter(learner, 0.05)
    return learner


def set_adapter(learner, std: float) -> None:
    """Give the adapters non-zero weights (B starts at zero, which would make any comparison vacuous)."""
    with torch.no_grad():
        for name, param in learner.model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, std)


def merged_logprobs(learner, ids):
    merged = copy.deepcopy(learner.model).merge_and_unload()
    with torch.no_grad():
        return torch.log_softmax(merged(input_ids=ids).logits.float(), -1)


def test_lora_adapters_are_published_in_peft_format(tmp_path, lora_learner, tiny_chat_model):
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from agentrl.distributed.actor_learner import publish_weights

    lora_learner.step = 1
    publish_weights(WeightPublisher(tmp_path), lora_learner)
    version_dir = tmp_path / "v1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(version_dir / "adapter_model.safetensors")
    assert tensors and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)
    n_adapter = sum(t.numel() for t in tensors.values())
    n_model = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_chat_model).parameters())
    assert n_adapter < n_model / 4  # what makes publishing adapters worth it (r=4 on a hidden size of 64)
    config = LoraConfig.from_pretrained(version_dir)
    assert config.r == 4 and config.lora_alpha == 8 and config.inference_mode
    # The ecosystem's own loader reads the directory as it is and computes the learner's policy.
    ids = torch.tensor([[5, 17, 42, 9, 300, 7, 1]])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model), version_dir)
    with torch.no_grad():
        via_peft = torch.log_softmax(peft_model(input_ids=ids).logits.float(), -1)
    torch.testing.assert_close(via_peft, merged_logprobs(lora_learner, ids), atol=1e-5, rtol=0)


def test_a_policy_runs_published_adapters_and_replaces_them_each_version(tmp_path, lora_learner, tiny_chat_model):
    from agentrl.distributed.actor_learner import publish_weights
    from agentrl.policies import PolicyError
    from agentrl.policies.hf import HFPolicy

    policy = HFPolicy(tiny_chat_model, device="cpu")
    ids = torch.tensor([[5, 17, 42, 9, 300, 7, 1]])
    with torch.no_grad():
        base = torch.log_softmax(policy.model(input_ids=ids).logits.float(), -1)
    publisher = WeightPublisher(tmp_path)
    for version, std in ((1, 0.05), (2, 0.2)):  # v2 must replace v1's adapters, not add to them
        set_adapter(lora_learner, std)
        lora_learner.step = version
        publish_weights(publisher, lora_learner)
        published = load_latest(tmp_path, newer_than=policy.version)
        policy.load_adapter(published.tensors, published.adapter_config, published.version)
        with torch.no_grad():
            worker = torch.log_softmax(policy.model(input_ids=ids).logits.float(), -1)
        expected = merged_logprobs(lora_learner, ids)
        torch.testing.assert_close(worker, expected, atol=1e-5, rtol=0)
        assert (expected - base).abs().max() > 1e-2  # the adapters change the policy: the check has teeth
        assert policy.version == version
    assert policy.generate([[5, 17, 42]], policy_sampling())[0].token_ids  # generation runs with the adapters
    tensors, config = lora_learner.lora_adapter()
    with pytest.raises(PolicyError, match="adapter configuration changed"):
        policy.load_adapter(tensors, {**config, "r": 8}, 3)
    with pytest.raises(PolicyError, match="adapter does not fit"):
        policy.load_adapter({**tensors, "base_model.model.model.no_such.lora_A.weight": torch.zeros(4, 64)}, config, 3)
    with pytest.raises(PolicyError, match="load adapters, not full weights"):
        policy.load_weights(policy.model.state_dict(), 3)


def policy_sampling():
    from agentrl.policies import SamplingParams

    return SamplingParams(max_new_tokens=4, temperature=1.0, seed=0, stop_token_ids=())
