"""The ``mle_async`` recipe through ``agentrl train ... --ray local``, and Ctrl-C on a running actor-learner.

Run on TextWorld (``env=textworld``) with a tiny model so it takes seconds per update: the recipe's
loop is environment-agnostic. Ctrl-C must leave no process of the run behind (driver's Ray cluster,
rollout workers, game processes) and a store whose every group is complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("ray")
pytest.importorskip("textworld")

from agentrl.config import load_config  # noqa: E402
from agentrl.recipes import mle_async  # noqa: E402


def test_mle_async_defaults_are_the_papers():
    cfg = load_config(mle_async.Config, None, ["model=/m"])
    assert cfg.group_size * cfg.groups_per_update == 128  # batch 128
    assert cfg.learner.lr == 1e-5
    assert cfg.learner.shaping == [] and cfg.batching == "group"  # no duration weights: see test_duration_bias.py
    assert cfg.improve_fraction == 0.5 and cfg.max_staleness > 0 and cfg.env == "mle"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (walks /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_ctrl_c_leaves_no_orphans_and_a_consistent_store(tmp_path, tiny_chat_model):
    run_dir = tmp_path / "runs" / "ctrlc"
    command = [
        sys.executable, "-c", "from agentrl.cli import main; main()", "train", "mle_async", "--ray", "local",
        f"model={tiny_chat_model}", f"output_dir={tmp_path / 'runs'}", "run_name=ctrlc", "env=textworld",
        "env_args={difficulty: easy}", "split=valid", "train_tasks=2", "workers=2", "worker_cpus=0.5",
        "group_size=2", "groups_per_update=2", "updates=1000", "max_new_tokens=8", "max_parallel=2",
        "learner.lr=1e-3", "learner.total_steps=1000",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A background job of a non-interactive shell (CI may run us that way) inherits SIGINT *ignored*, and
    # Python then leaves it ignored: give the driver the default disposition, as a terminal's foreground job has.
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        metrics = run_dir / "metrics.jsonl"
        while time.monotonic() < deadline and driver.poll() is None:
            seen |= descendants(driver.pid)
            if metrics.exists() and any('"async/wait_seconds"' in line for line in metrics.read_text().splitlines()):
                break
            time.sleep(1)
        assert driver.poll() is None, driver.stdout.read()[-3000:]
        seen |= descendants(driver.pid)
        assert len(seen) >= 3  # Ray's own processes and the two workers were running
        driver.send_signal(signal.SIGINT)
        try:
            out, _ = driver.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGUSR1)  # the CLI dumps every thread's stack (faulthandler)
            time.sleep(2)
            driver.kill()
            out, _ = driver.communicate(timeout=30)
            pytest.fail(f"mle_async did not stop within 120 s of Ctrl-C; its stacks:\n{out[-6000:]}")
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0  # interrupted, not finished
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in seen):
        time.sleep(0.5)
    assert [p for p in seen if alive(p)] == [], out[-2000:]

    from agentrl.store import open_store

    with open_store(f"sqlite:///{run_dir / 'store.db'}", create=False) as store:
        assert store.check_integrity() == []
        episodes = store.read_episodes()
        assert episodes
        per_group = Counter(ep.group_id for ep in episodes)
        assert set(per_group.values()) == {2}  # every group complete: none cut off mid-write
        trained = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any(m.get("policy_version", 0) >= 1 for m in trained)
        assert [r.status for r in store.runs()] == ["interrupted"]
    # Ctrl-C left a checkpoint of the last update a resume continues from
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    saved = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert saved["state"]["updates"] >= 1 and saved["state"]["driver"]["since"] >= 0
    assert (run_dir / "checkpoint" / "learner" / "learner.pt").is_file()


@pytest.mark.slow
def test_mle_async_trains_lora_from_a_hub_id(tmp_path, tiny_hub_model):
    """The recipe with a Hub id (offline cache, workers pinned to its commit) and LoRA: adapters published each
    update, and the exported model is the base with the last published adapter merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    command = [
        sys.executable, "-c", "from agentrl.cli import main; main()", "train", "mle_async", "--ray", "local",
        f"model={tiny_hub_model['repo_id']}", f"output_dir={tmp_path}", "run_name=lora", "env=textworld",
        "env_args={difficulty: easy}", "split=valid", "train_tasks=1", "workers=1", "worker_cpus=0.5",
        "group_size=2", "groups_per_update=1", "updates=2", "max_staleness=1", "max_new_tokens=8", "max_parallel=2",
        "learner.lr=1e-2", "learner.total_steps=2", "learner.lora={r: 4, alpha: 8}",
        "learner.terms=[epo]",  # its entropy term has a gradient even when every episode of a group scores the same
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_CACHE": tiny_hub_model["cache"], "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = tmp_path / "lora"
    assert [u["policy_version"] for u in json.loads((run_dir / "summary.json").read_text())["updates"]] == [1, 2]
    weights = run_dir / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["LATEST", "v1", "v2"]  # keep max_staleness + 1
    assert sorted(p.name for p in (weights / "v2").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(tiny_hub_model["path"])
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_hub_model["path"]), weights / "v2")
    expected = merged.merge_and_unload().state_dict()
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    assert set(exported) == set(expected)
    for key, value in exported.items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)
    moved = max((exported[k] - v).abs().max().item() for k, v in base.state_dict().items())
    assert moved > 1e-4  # training changed the policy: the comparison above is not base == base
