"""Hugging Face Hub ids work wherever a model path does, offline, from a pre-populated cache.

The cache is laid out as huggingface_hub lays it out (``models--ORG--NAME/refs/main``, ``blobs/``,
``snapshots/<commit>/``) by :func:`agentrl.testing.hub_cache`; ``HF_HUB_OFFLINE=1`` holds for the
whole session (conftest), so any attempt to reach the network would fail the test. In-process tests
point huggingface_hub at the cache by patching ``constants.HF_HUB_CACHE`` (what transformers reads
at call time); the command-line tests set ``HF_HUB_CACHE`` in the environment as a user would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

torch = pytest.importorskip("torch")

from agentrl.policies import PolicyError, SamplingParams  # noqa: E402
from agentrl.policies.hf import HFPolicy  # noqa: E402
from agentrl.policies.loading import load_policy  # noqa: E402
from agentrl.policies.sources import hub_revision, model_source  # noqa: E402

CLI = [sys.executable, "-c", "from agentrl.cli import main; main()"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline_cache(monkeypatch, tiny_hub_model):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", tiny_hub_model["cache"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tiny_hub_model


def hub_env(hub: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": hub["cache"], "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_a_hub_id_loads_the_cached_snapshot(offline_cache):
    repo_id = offline_cache["repo_id"]
    hub, local = HFPolicy(repo_id, device="cpu"), HFPolicy(offline_cache["path"], device="cpu")
    assert hub.name == repo_id and hub.model.name_or_path == repo_id  # loaded by id, not by a path we resolved
    local_state = local.model.state_dict()
    assert all(torch.equal(value, local_state[key]) for key, value in hub.model.state_dict().items())
    text = "You open the fridge. <action>take apple</action>"
    assert hub.tokenizer(text)["input_ids"] == local.tokenizer(text)["input_ids"]
    prompt = [local.tokenizer("You see a fridge.", add_special_tokens=False)["input_ids"]]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=())
    assert hub.generate(prompt, greedy)[0].token_ids == local.generate(prompt, greedy)[0].token_ids
    assert hub_revision(repo_id) == offline_cache["commit"] and hub_revision(offline_cache["path"]) is None
    policy, tokenizer = load_policy(repo_id, device="cpu")  # what `agentrl eval --model ID` calls
    assert isinstance(policy, HFPolicy) and tokenizer is policy.tokenizer


def test_a_revision_pins_the_commit_when_main_moves_on(offline_cache, tmp_path):
    from agentrl.testing import hub_cache, tiny_model

    first = offline_cache["commit"]
    newer = tiny_model(tmp_path / "newer", texts=["You see a fridge."], seed=1)  # other weights, same id
    hub_cache(offline_cache["path"], offline_cache["cache"], "agentrl-test/moving", commit=first)
    hub_cache(newer, offline_cache["cache"], "agentrl-test/moving", commit="f" * 40)  # main moves on
    assert hub_revision("agentrl-test/moving") == "f" * 40
    pinned = HFPolicy("agentrl-test/moving", device="cpu", revision=first)
    original = HFPolicy(offline_cache["path"], device="cpu").model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in pinned.model.state_dict().items())
    moved = HFPolicy("agentrl-test/moving", device="cpu").model.state_dict()
    assert not torch.equal(moved["model.embed_tokens.weight"], original["model.embed_tokens.weight"])


def test_a_missing_hub_id_offline_is_one_error_naming_the_id_and_the_cache(offline_cache):
    with pytest.raises(PolicyError) as err:
        HFPolicy("agentrl-test/not-downloaded", device="cpu")
    message = str(err.value)
    assert "'agentrl-test/not-downloaded' not found" in message and offline_cache["cache"] in message
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message
    with pytest.raises(PolicyError, match="not-downloaded"):
        load_policy("agentrl-test/not-downloaded")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model", "no such local directory"),
        ("./no-such-model", "no such local directory"),
        ("runs/exp/model", "no such local directory"),  # two slashes: a path, never a Hub id
        ("~/no-such-model", "no such local directory"),
        ("bad id!", "neither a local directory nor a Hugging Face Hub id"),
    ],
)
def test_a_path_that_looks_local_is_never_looked_up_on_the_hub(offline_cache, spec, message):
    with pytest.raises(PolicyError, match=message):
        model_source(spec)


def test_local_directories_and_files_keep_their_own_errors(offline_cache, tmp_path):
    assert model_source(offline_cache["path"]) == offline_cache["path"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="not a Hugging Face model directory"):
        HFPolicy(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(PolicyError, match="is a file"):
        model_source(str(tmp_path / "weights.bin"))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_eval_with_a_hub_id_plays_like_the_local_directory(tiny_hub_model, tmp_path):
    pytest.importorskip("textworld")
    env = hub_env(tiny_hub_model)
    reports = {}
    for name, spec in (("hub", tiny_hub_model["repo_id"]), ("local", tiny_hub_model["path"])):
        reports[name] = tmp_path / f"{name}.json"
        done = run_cli("eval", "textworld", "--model", spec, "--episodes", "1", "--group-size", "2", "--max-turns", "2",
                       "--max-new-tokens", "8", "--output", str(reports[name]), env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    hub, local = (json.loads(reports[n].read_text()) for n in ("hub", "local"))
    assert [ep["actions"] for ep in hub["episodes"]] == [ep["actions"] for ep in local["episodes"]]
    assert hub["model"]["tokens_generated"] == local["model"]["tokens_generated"] > 0
    missing = run_cli("eval", "textworld", "--model", "agentrl-test/absent", "--episodes", "1", env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "'agentrl-test/absent' not found" in missing.stderr and "HF_HUB_OFFLINE=1" in missing.stderr


@pytest.mark.slow
def test_serve_a_hub_id(tiny_hub_model):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*CLI, "serve", tiny_hub_model["repo_id"], "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=hub_env(tiny_hub_model))  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as reply:
                    assert json.load(reply)["data"][0]["id"] == tiny_hub_model["repo_id"]
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                assert time.time() < deadline, "agentrl serve did not come up"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_recipe_trains_from_a_hub_id(tiny_hub_model, tmp_path):
    pytest.importorskip("textworld")
    done = run_cli(
        "train", "textworld_grpo", f"model={tiny_hub_model['repo_id']}", f"output_dir={tmp_path}", "run_name=hub",
        "iterations=1", "tasks_per_iteration=1", "group_size=2", "train_tasks=1", "eval_tasks=0", "max_turns=2",
        "max_new_tokens=8", "learner.lr=1e-3", "learner.total_steps=1",
        env=hub_env(tiny_hub_model),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from agentrl.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'hub' / 'store.db'}", create=False) as store:
        (run,) = store.runs()
        assert run.config["model"] == tiny_hub_model["repo_id"]
        assert len(store.read_episodes(run.id)) == 2  # one group of 2 played by the Hub model
    steps = [json.loads(line) for line in (tmp_path / "hub" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("policy_version") == 1 for m in steps)  # and trained on
    assert (tmp_path / "hub" / "model" / "model.safetensors").is_file()
