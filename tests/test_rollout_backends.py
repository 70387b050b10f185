"""Rollout backends and weight sync, on the CPU: the server-mode protocol against a real ``agentrl serve``.

The recipe loop with ``rollout.backend=openai``: a server on 127.0.0.1 serves the rollout model, the
token-exact OpenAIPolicy collects TextWorld episodes through the Collector, the learner updates,
the weights are published (safetensors) and pushed through the weight-update route, and the next
rollout's behaviour log-probs equal the learner's recomputation under the new weights (float32:
to 1e-4) while differing from the old weights'. Once with full weights (the server in its own
process, started by the real CLI), once with LoRA adapters (the server loads the PEFT adapter).
The vLLM engine itself needs a GPU: tests/test_policies_vllm.py and benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from agentrl.distributed.rollout_engine import RolloutConfig, build_rollout_engine  # noqa: E402
from agentrl.policies.base import PolicyError, SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.policies.server import PolicyServer  # noqa: E402
from agentrl.training.config import LearnerConfig, LoRAConfig  # noqa: E402
from agentrl.training.exactness import TokenExactnessError, behaviour_logprob_gap, check_behaviour_logprobs  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV_ID = "agentrl/TextWorld-v0"
TASKS = ["easy/100000", "easy/100001"]


def collect(engine, seed: int):
    import agentrl
    from agentrl.agents.llm import ACTION_STOP, LLMAgent, prompt_format_for
    from agentrl.rollout import Collector, ModelActor

    agent = LLMAgent(engine.tokenizer, prompt_format_for("textworld"))
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, stop=(ACTION_STOP,))
    make_env = lambda: agentrl.make("textworld", split="valid", max_turns=2)  # noqa: E731
    with Collector(make_env, ModelActor(engine.policy, agent, sampling), env_id=ENV_ID, split="valid") as collector:
        return collector.run(TASKS, group_size=2, seed=seed)


def perturbed(model, scale: float = 0.05) -> dict:
    """The state dict of a copy of ``model`` with seeded noise on every parameter (tied embeddings stay tied)."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other.state_dict()


def sampled_versions(episodes) -> set[int]:
    return {v for ep in episodes for t in ep.transcripts for v, s in zip(t.versions, t.sampled, strict=True) if s}


def run_loop(engine, learner, iterations: int = 2):
    """The recipe's loop: collect -> check -> update -> sync; returns what each iteration saw."""
    seen = []
    engine.sync(learner)  # version 0: the server runs the learner's starting weights
    for iteration in range(iterations):
        episodes = collect(engine, seed=iteration)
        assert sampled_versions(episodes) == {learner.step}  # every token labelled with the learner's version
        exact = check_behaviour_logprobs(learner, episodes, max_tokens=100_000, tolerance=1e-4, on_mismatch="raise")
        before = copy.deepcopy(learner.model)  # the weights that sampled this batch
        engine.sleep()
        learner.update(episodes)
        engine.sync(learner)
        seen.append({"episodes": episodes, "exact": exact, "model_before": before, "version": learner.step})
    return seen


def assert_follows_the_learner(seen) -> None:
    for earlier, later in zip(seen, seen[1:], strict=False):
        exact = later["exact"]
        assert exact["exact/tokens"] >= 20 and exact["exact/max_abs_logp_diff"] < 1e-4  # new weights, exactly
        scorer = Learner(earlier["model_before"], LearnerConfig(precision="fp32"))  # the weights before the update
        stale = behaviour_logprob_gap(scorer, later["episodes"], version=earlier["version"], max_tokens=100_000)
        assert stale["exact/tokens"] == exact["exact/tokens"]
        assert stale["exact/mean_abs_logp_diff"] > 1e-3  # ... and not the weights before the update


@pytest.fixture
def cli_server(tiny_chat_model, tmp_path):
    """``agentrl serve MODEL --weights-dir DIR`` in its own process on 127.0.0.1 (the real command line)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    cmd = [sys.executable, "-c", "from agentrl.cli import main; main()", "serve", tiny_chat_model, "--port", "0",
           "--device", "cpu", "--weights-dir", str(weights)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "serving" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(120), "".join(lines)
        url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", "".join(lines)).group(1)
        yield url, weights
    finally:
        proc.terminate()
        proc.wait(30)


def test_openai_backend_follows_the_learner_with_full_weights(cli_server, tiny_chat_model):
    url, weights = cli_server
    config = RolloutConfig(backend="openai", url=url, tolerance=1e-4, on_mismatch="raise")
    engine = build_rollout_engine(config, tiny_chat_model, weights_dir=weights, device="cpu")
    learner = Learner(engine.train_model, LearnerConfig(lr=1e-2, total_steps=4, terms=["epo"]),
                      pad_token_id=engine.pad_id)  # fmt: skip
    seen = run_loop(engine, learner)
    assert_follows_the_learner(seen)
    assert sorted(p.name for p in weights.iterdir() if p.name.startswith("v")) == ["v1", "v2"]  # keep_versions=2
    assert engine.policy.version == learner.step == 2
    engine.close()


def test_openai_backend_follows_the_learner_with_lora_adapters(tiny_chat_model, tmp_path):
    weights = tmp_path / "weights"
    with PolicyServer(HFPolicy(tiny_chat_model, device="cpu", seed=0), weights_dir=weights) as server:
        config = RolloutConfig(backend="openai", url=server.url, tolerance=1e-4, on_mismatch="raise")
        engine = build_rollout_engine(config, tiny_chat_model, weights_dir=weights, device="cpu")
        learner = Learner(engine.train_model, LearnerConfig(lr=1e-2, total_steps=4, terms=["epo"],
                                                            lora=LoRAConfig(r=4, alpha=8)), pad_token_id=engine.pad_id)  # fmt: skip
        seen = run_loop(engine, learner)
        assert_follows_the_learner(seen)
        # only adapters travel; the server serves the newest under its versioned name, the older one is gone
        assert (weights / "v2" / "adapter_model.safetensors").is_file() and not (weights / "v2" / "model.safetensors").exists()
        assert engine.policy.model == "agentrl-lora-v2" == server.served_name and server.weights.replaced == set()
        assert server.policy.version == 2
        engine.close()


def test_an_engine_that_claims_the_new_version_but_runs_the_old_weights_is_caught(tiny_chat_model, tmp_path):
    weights = tmp_path / "weights"
    with PolicyServer(HFPolicy(tiny_chat_model, device="cpu", seed=0), weights_dir=weights) as server:
        config = RolloutConfig(backend="openai", url=server.url)
        engine = build_rollout_engine(config, tiny_chat_model, weights_dir=weights, device="cpu")
        learner = Learner(engine.train_model, LearnerConfig(lr=1e-2, total_steps=4, terms=["epo"]), pad_token_id=engine.pad_id)
        engine.sync(learner)
        learner.update(collect(engine, seed=0))
        engine.policy.version = learner.step  # the update never reached the server
        episodes = collect(engine, seed=1)
        with pytest.raises(TokenExactnessError, match="differ from the learner's at version 1"):
            check_behaviour_logprobs(learner, episodes, tolerance=1e-4, on_mismatch="raise")
        engine.close()


def test_a_check_that_finds_no_token_of_the_learners_version_says_so(tiny_chat_model, caplog):
    from agentrl.testing import token_episode

    model = HFPolicy(tiny_chat_model, device="cpu").model
    learner = Learner(model, LearnerConfig(), pad_token_id=0)
    episode = token_episode([{"prompt": [1, 2, 3], "response": [4, 5], "logprobs": [-1.0, -2.0], "version": 3}])
    with caplog.at_level(logging.WARNING, logger="agentrl.training"):
        metrics = check_behaviour_logprobs(learner, [episode], on_mismatch="raise")
    assert metrics == {"exact/tokens": 0}
    assert "did the rollout engine take the last weight update" in caplog.text


# -- the weight-update routes: what they refuse, and that a refused update changes nothing ------------------


@pytest.fixture(scope="module")
def guarded_server(tiny_chat_model, tmp_path_factory):
    from agentrl.distributed.weights import WeightPublisher

    weights = tmp_path_factory.mktemp("weights")
    publisher = WeightPublisher(weights, keep=10)
    policy = HFPolicy(tiny_chat_model, device="cpu", seed=0)
    good = publisher.publish(policy.model.state_dict(), 1)
    shapes = {k: torch.zeros(3, 3) if k == "model.norm.weight" else v for k, v in policy.model.state_dict().items()}
    bad = publisher.publish(shapes, 2)
    outside = tmp_path_factory.mktemp("outside")
    WeightPublisher(outside).publish(policy.model.state_dict(), 7)
    (weights / "escape").symlink_to(outside / "v7")
    (weights / "corrupt").mkdir()
    (weights / "corrupt" / "model.safetensors").write_bytes(b"\xff" * 64)  # not a safetensors file
    with PolicyServer(policy, weights_dir=weights, api_key="k") as server:
        yield {"server": server, "weights": weights, "good": good, "bad": bad, "outside": outside / "v7"}


def post(server, path: str, body, key: str | None = "k"):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url.removesuffix("/v1") + path, json=body, headers=headers, timeout=60)


def rpc(path) -> dict:
    return {"method": "agentrl_load_weights", "kwargs": {"path": str(path), "version": "5"}}


def test_the_routes_refuse_paths_outside_the_weights_directory_and_links_out_of_it(guarded_server):
    server = guarded_server["server"]
    for path in (guarded_server["outside"], guarded_server["weights"] / "escape", guarded_server["weights"] / ".." / "x"):
        reply = post(server, "/collective_rpc", rpc(path))
        assert reply.status_code in (400, 404), reply.text
    assert "outside the weights directory" in post(server, "/collective_rpc", rpc(guarded_server["outside"])).json()["error"]["message"]
    lora = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(guarded_server["weights"] / "escape")})
    assert lora.status_code == 400 and "outside the weights directory" in lora.json()["error"]["message"]
    assert server.policy.version == 0


def test_the_routes_need_the_api_key_and_a_known_method(guarded_server):
    server = guarded_server["server"]
    assert post(server, "/collective_rpc", rpc(guarded_server["good"]), key=None).status_code == 401
    reply = post(server, "/collective_rpc", {"method": "__init__", "args": []})
    assert reply.status_code == 400 and "not supported" in reply.json()["error"]["message"]
    full_as_adapter = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(guarded_server["good"])})
    assert full_as_adapter.status_code == 400 and "full weights" in full_as_adapter.json()["error"]["message"]


def test_weights_that_do_not_fit_are_refused_and_the_old_weights_keep_serving(guarded_server, tiny_chat_model):
    server = guarded_server["server"]
    before = {k: v.clone() for k, v in server.policy.model.state_dict().items()}
    reply = post(server, "/collective_rpc", rpc(guarded_server["bad"]))
    assert reply.status_code == 400 and "wrong shape ['model.norm.weight']" in reply.json()["error"]["message"]
    after = server.policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and server.policy.version == 0
    corrupt = post(server, "/collective_rpc", rpc(guarded_server["weights"] / "corrupt"))
    assert corrupt.status_code == 400 and corrupt.json()["error"]["code"] == "invalid_weights"
    assert server.policy.version == 0
    ok = post(server, "/collective_rpc", rpc(guarded_server["good"]))
    assert ok.status_code == 200 and ok.json() == {"results": [{"version": 5}]} and server.policy.version == 5


def test_a_server_without_weight_routes_is_one_error_naming_the_flags(tiny_chat_model, tmp_path):
    from agentrl.distributed.weights import WeightPublisher
    from agentrl.policies.openai import OpenAIPolicy

    policy = HFPolicy(tiny_chat_model, device="cpu", seed=0)
    path = WeightPublisher(tmp_path).publish(policy.model.state_dict(), 1)
    with PolicyServer(policy) as server:
        client = OpenAIPolicy(server.url, max_retries=0)
        with pytest.raises(PolicyError, match="HTTP 404") as info:
            client.load_published(path, 1)
        assert "VLLM_SERVER_DEV_MODE=1" in info.value.hint and "--weights-dir" in info.value.hint
        client.close()


def test_a_weight_update_waits_for_the_requests_queued_before_it(tiny_chat_model, tmp_path):
    """The batcher's barrier: requests queued before a load finish on the old weights, later ones use the new."""
    from agentrl.distributed.weights import WeightPublisher
    from agentrl.policies.batching import GenerateBatcher, GenerateJob
    from agentrl.policies.published import read_version

    policy = HFPolicy(tiny_chat_model, device="cpu", seed=0)
    path = WeightPublisher(tmp_path).publish(perturbed(policy.model, scale=0.5), 1)
    prompt = [[5, 6, 7, 8]]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=())
    old_ids = policy.generate(prompt, greedy)[0].token_ids
    reference = HFPolicy(tiny_chat_model, device="cpu")
    reference.load_weights(read_version(path).tensors, 1)
    new_ids = reference.generate(prompt, greedy)[0].token_ids
    assert old_ids != new_ids
    batcher = GenerateBatcher(policy, max_wait_s=0.2)
    first = batcher.submit(GenerateJob(prompt, [None], greedy))
    load = batcher.call(lambda: policy.load_published(path, 1))
    second = batcher.submit(GenerateJob(prompt, [None], greedy))
    assert first.result(60)[0].token_ids == old_ids
    load.result(60)
    assert second.result(60)[0].token_ids == new_ids
    batcher.close()


def test_a_held_version_is_not_pruned_until_released(tmp_path):
    from agentrl.distributed.weights import WeightPublisher, hold_latest

    publisher = WeightPublisher(tmp_path, keep=1)
    publisher.publish({"w": torch.ones(2)}, 1)
    with hold_latest(tmp_path) as held:
        assert held == (1, tmp_path / "v1")
        publisher.publish({"w": torch.ones(2)}, 2)
        publisher.publish({"w": torch.ones(2)}, 3)
        assert publisher.versions() == [1, 3]  # a server may still be reading v1
    publisher.publish({"w": torch.ones(2)}, 4)
    assert publisher.versions() == [4]
    with hold_latest(tmp_path, newer_than=4) as held:
        assert held is None


# -- a misconfigured backend is one clear error -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.backend=sglang"], "rollout.backend"),
        (["rollout.backend=openai"], "rollout.backend=openai needs rollout.url=http://HOST:PORT"),
        (["rollout.url=http://127.0.0.1:9"], "rollout.url is only used with rollout.backend=openai, not hf"),
        (["rollout.backend=openai", "rollout.url=http://127.0.0.1:9", "rollout.engine_args={dtype: float16}"],
         "rollout.engine_args is only used with rollout.backend=vllm"),
    ],
)
def test_a_misconfigured_backend_is_one_config_error(overrides, message, tiny_chat_model, tmp_path):
    from agentrl.config import ConfigError, load_config
    from agentrl.recipes.textworld_grpo import Config, main

    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        main(load_config(Config, overrides=[f"model={tiny_chat_model}", f"output_dir={tmp_path}", *overrides]))
    assert "\n" not in str(info.value)


def test_the_command_line_reports_a_misconfigured_backend_in_one_line(tiny_chat_model, tmp_path):
    from agentrl.testing import installed_cli

    result = subprocess.run([installed_cli(), "train", "textworld_grpo", f"model={tiny_chat_model}",
                             f"output_dir={tmp_path}", "rollout.backend=openai"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "rollout.backend=openai needs rollout.url=http://HOST:PORT" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_vllm_backend_without_vllm_is_one_policy_error(tiny_chat_model, tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here: the missing-vLLM error cannot be shown")
    except ImportError:
        pass
    with pytest.raises(PolicyError, match="vLLM is not importable") as info:
        build_rollout_engine(RolloutConfig(backend="vllm"), tiny_chat_model, weights_dir=tmp_path, device="cpu")
    assert "agentrl[vllm]" in info.value.hint


def test_an_unreachable_server_is_one_policy_error(tiny_chat_model, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = RolloutConfig(backend="openai", url=f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(PolicyError, match="cannot connect"):
        build_rollout_engine(config, tiny_chat_model, weights_dir=Path(tmp_path), device="cpu")
    assert time.perf_counter() - started < 30


def test_an_async_worker_on_the_openai_backend_loads_each_version_into_its_server(tiny_chat_model, tmp_path):
    """mle_async's worker: between groups it makes its own server run the newest published version."""
    from agentrl.distributed.weights import WeightPublisher
    from agentrl.distributed.worker import RolloutWorker, WorkerSpec
    from agentrl.store import open_store

    weights = tmp_path / "weights"
    publisher = WeightPublisher(weights, keep=2)
    base = HFPolicy(tiny_chat_model, device="cpu", seed=0)
    publisher.publish(base.model.state_dict(), 0)
    newer = perturbed(base.model)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(store_url) as store:
        run_id = store.start_run("async", env_id=ENV_ID, kind="train")
    with PolicyServer(HFPolicy(tiny_chat_model, device="cpu", seed=0), weights_dir=weights) as server:
        spec = WorkerSpec(model=tiny_chat_model, env="textworld", store=store_url, run_id=run_id,
                          weights_dir=str(weights), split="valid", max_turns=1, max_new_tokens=8, max_parallel=2,
                          rollout=RolloutConfig(backend="openai", url=server.url))  # fmt: skip
        worker = RolloutWorker(spec, 0)
        first = worker.collect("c1", TASKS[0], group_size=2, seed=0)
        assert first["policy_version"] == 0 == server.policy.version
        publisher.publish(newer, 1)
        second = worker.collect("c2", TASKS[0], group_size=2, seed=0)
        assert second["policy_version"] == 1 == server.policy.version
        served = server.policy.model.state_dict()
        assert all(torch.equal(served[k], newer[k]) for k in newer)
        with open_store(store_url) as store:
            versions = {ep.policy_version for ep in store.read_episodes(run_id)}
        assert versions == {0, 1}
        worker.close()
        worker.policy.close()
