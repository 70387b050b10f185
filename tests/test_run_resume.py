"""Runs people can trust: a recipe killed with SIGKILL and resumed ends exactly where an uninterrupted run
ends (weights, metrics, store), Ctrl-C/SIGTERM checkpoint and mark the run interrupted, and a finished run
is never silently overwritten.

The recipe runs for real (``agentrl train textworld_grpo`` in a subprocess, a tiny model, TextWorld),
with one torch thread so that two processes compute bit for bit the same thing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("textworld")

from agentrl.testing import installed_cli  # noqa: E402

#: Values that measure time, not what was computed: left out of the comparison.
TIMING_KEYS = {"seconds", "tokens_per_s", "rollout/seconds", "rollout/tokens_per_s", "wall_seconds", "saved_at"}


def recipe_args(model: str, output_dir: Path, run_name: str, **extra: object) -> list[str]:
    settings = dict(
        model=model, output_dir=str(output_dir), run_name=run_name, max_turns=2, train_tasks=6, iterations=3,
        tasks_per_iteration=2, group_size=2, eval_tasks=1, eval_every=2, eval_before=True, eval_temperature=1.0,
        max_new_tokens=24, layout="per_step", history=0, admissible_only=True, sft_episodes=2, sft_epochs=1,
        checkpoint_every=2, seed=3, logger="[jsonl]",
        # EPO's entropy term moves the weights even when every rollout fails (zero GRPO advantages), and its
        # entropy history is plug-in state the checkpoint must carry; two mini-batches use the learner's generator
        **{"learner.lr": 1e-3, "learner.mini_batches": 2, "learner.terms": "[epo]"},
    )  # fmt: skip
    settings.update(extra)
    return [installed_cli(), "train", "textworld_grpo", *(f"{k}={v}" for k, v in settings.items())]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def train(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def store_rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "store.db") as db:
        episodes = db.execute("SELECT id, task_id, seed, agent, won, episode_return, turns, policy_version FROM episodes "
                              "ORDER BY id").fetchall()  # fmt: skip
        steps = db.execute("SELECT episode_id, turn, action FROM steps ORDER BY episode_id, turn").fetchall()
        runs = db.execute("SELECT name, status FROM runs").fetchall()
    actions: dict[int, list[str]] = {}
    for episode_id, _, action in steps:
        actions.setdefault(episode_id, []).append(action)
    return [(*row[1:], tuple(actions.get(row[0], ()))) for row in episodes] + [("runs", *r) for r in runs]


def evaluations(run_dir: Path) -> list[dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in summary["evaluations"]]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_equals_an_uninterrupted_run(tiny_chat_model, tmp_path):
    import torch

    train(recipe_args(tiny_chat_model, tmp_path, "straight"))
    straight = tmp_path / "straight"

    # The same run, killed (SIGKILL: no handler runs) after iteration 1 reached the store and the metrics,
    # but before the checkpoint of iteration 2: the last checkpoint is the one after the warm-up (iteration 0).
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(recipe_args(tiny_chat_model, tmp_path, "killed"), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    state_file, deadline, killed_at = run_dir / "checkpoint" / "state.json", time.monotonic() + 600, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists():
                checkpoint = json.loads(state_file.read_text())
                with sqlite3.connect(run_dir / "store.db") as db:
                    newest = db.execute("SELECT MAX(id) FROM episodes").fetchone()[0] or 0
                if checkpoint["state"]["iteration"] == 0 and newest > checkpoint["watermarks"]["main"]:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = checkpoint
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed where the test wanted: " + proc.stderr.read()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "running"  # nobody could record anything

    # resume: only resume=true and where the run is are needed; its saved config does the rest
    out = train([installed_cli(), "train", "textworld_grpo", f"output_dir={tmp_path}", "run_name=killed", "resume=true"])
    assert "iteration 1/3" in out.stdout and "iteration 3/3" in out.stdout
    assert "warm-up" not in out.stdout  # the warm-up is in the checkpoint, not done twice

    a, b = weights(straight), weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(run_dir) == metrics(straight)  # no step twice, none missing, same values
    assert [m["step"] for m in metrics(run_dir) if "loss" in m] == [1, 2, 3, 4, 5, 6]  # 3 iterations x 2 mini-batches
    rows_a, rows_b = store_rows(straight), store_rows(run_dir)
    assert rows_b == [r if r[0] != "runs" else ("runs", "killed", "finished") for r in rows_a]  # the killed iteration's episodes are gone
    assert evaluations(run_dir) == evaluations(straight)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["resumes"] == 1


@pytest.mark.slow
def test_sigterm_checkpoints_and_marks_the_run_interrupted_and_a_finished_run_is_not_overwritten(tiny_chat_model, tmp_path):
    args = recipe_args(tiny_chat_model, tmp_path, "r", iterations=4, checkpoint_every=0, sft_episodes=0, eval_tasks=0)
    proc = subprocess.Popen(args, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "r"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:  # wait for iteration 1 to be committed
        if (run_dir / "metrics.jsonl").exists() and '"iteration": 1' in (run_dir / "metrics.jsonl").read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted; checkpoint in" in stdout and "continue with resume=true" in stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    checkpoint = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert checkpoint["state"]["iteration"] >= 1  # what was done is kept although checkpoint_every=0
    with sqlite3.connect(run_dir / "store.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]

    # starting it again without resume/overwrite is refused, and changes nothing
    again = subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=300)
    assert again.returncode == 2 and "run 'r' already exists" in again.stderr and "resume=true" in again.stderr
    # resuming with a different learning rate is refused: the run continues with its own config
    changed = subprocess.run([installed_cli(), "train", "textworld_grpo", f"output_dir={tmp_path}", "run_name=r", "resume=true",
                              "learner.lr=0.5"], capture_output=True, text=True, env=environment(), timeout=300)  # fmt: skip
    assert changed.returncode == 2 and "learner.lr=0.5" in changed.stderr
    train([installed_cli(), "train", "textworld_grpo", f"output_dir={tmp_path}", "run_name=r", "resume=true"])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert [m["iteration"] for m in metrics(run_dir) if "rollout/success_rate" in m] == [1, 2, 3, 4]

    finished = subprocess.run([installed_cli(), "train", "textworld_grpo", f"output_dir={tmp_path}", "run_name=r", "resume=true"],
                              capture_output=True, text=True, env=environment(), timeout=300)  # fmt: skip
    assert finished.returncode == 2 and "finished; there is nothing to resume" in finished.stderr
    before = (run_dir / "metrics.jsonl").read_bytes()
    refused = subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=300)
    assert refused.returncode == 2 and "(finished); it is not overwritten" in refused.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    train([*args, "iterations=1", "overwrite=true"])  # explicit: start over
    assert [m["iteration"] for m in metrics(run_dir) if "rollout/success_rate" in m] == [1]
    with sqlite3.connect(run_dir / "store.db") as db:
        assert db.execute("SELECT name, status FROM runs").fetchall() == [("r", "finished")]


@pytest.mark.slow
def test_a_resumed_run_makes_a_fresh_rollout_server_run_the_checkpoints_weights(tiny_chat_model, tmp_path):
    """rollout.backend=openai: after Ctrl-C the server is restarted on its base weights, and the resumed run must
    publish and load the checkpoint's weights before it samples, or the token-exactness check (tolerance 1e-4,
    on_mismatch=raise) fails or finds no token of the learner's version."""
    pytest.importorskip("fastapi")
    from agentrl.policies.hf import HFPolicy
    from agentrl.policies.server import PolicyServer

    run_dir = tmp_path / "r"
    (run_dir / "weights").mkdir(parents=True)

    def serve(port: int = 0) -> PolicyServer:
        return PolicyServer(HFPolicy(tiny_chat_model, device="cpu", seed=0), port=port, weights_dir=run_dir / "weights")

    with serve() as server:
        port = server.url.removesuffix("/v1").rsplit(":", 1)[1]
        args = recipe_args(tiny_chat_model, tmp_path, "r", iterations=3, checkpoint_every=1, sft_episodes=0, eval_tasks=0,
                           admissible_only="false", **{"rollout.backend": "openai", "rollout.url": server.url,
                                                       "rollout.tolerance": 1e-4, "rollout.on_mismatch": "raise"})  # fmt: skip
        proc = subprocess.Popen(args, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:  # wait for iteration 1 to be committed
            if (run_dir / "metrics.jsonl").exists() and '"iteration": 1' in (run_dir / "metrics.jsonl").read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    done = json.loads((run_dir / "checkpoint" / "state.json").read_text())["state"]["iteration"]
    assert done >= 1
    with serve(int(port)) as fresh:
        assert fresh.policy.version == 0  # the base weights: nothing of the first process survives here
        train([installed_cli(), "train", "textworld_grpo", f"output_dir={tmp_path}", "run_name=r", "resume=true"])
        assert fresh.policy.version == 6  # learner steps: 3 iterations x 2 mini-batches
        from safetensors.torch import load_file

        served = fresh.policy.model.state_dict()
        final = load_file(str(run_dir / "model" / "model.safetensors"))
        assert all(torch_equal(served[k], final[k]) for k in final)  # the server ends on the run's final weights
    checks = [m for m in metrics(run_dir) if "rollout/exact/tokens" in m]
    assert [m["iteration"] for m in checks] == [1, 2, 3]
    assert all(m["rollout/exact/tokens"] > 0 and m["rollout/exact/max_abs_logp_diff"] <= 1e-4 for m in checks)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
