"""Run hygiene without a model: the run directory's rules, commits and checkpoints, run status in the store,
the metrics sinks (W&B offline gets the whole config), and what `agentrl store ls` shows.

The recipe end to end (SIGKILL, resume, exact equality) is in test_run_resume.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentrl.config import ConfigError, setting
from agentrl.store import open_store
from agentrl.testing import token_episode
from agentrl.training.run import Run, RunOptions, iteration_line, phase_seed


@dataclass
class Demo(RunOptions):
    """A recipe config as small as one can be."""

    run_name: str = setting("demo", "run name")
    output_dir: str = setting("runs", "where runs go")
    store: str = setting("", "store URL")
    lr: float = setting(0.1, "a learning rate")
    nested: dict = setting(factory=lambda: {"a": 1}, doc="a mapping")


def episodes(n: int, agent: str = "policy", won: bool = False) -> list:
    return [token_episode([{"prompt": [1, 2], "response": [3], "reward": float(won)}], task_id=f"t{i}", agent=agent, won=won)
            for i in range(n)]  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_commits_checkpoints_and_resumes_where_its_last_commit_was(tmp_path):
    cfg = Demo(output_dir=str(tmp_path), logger=["jsonl"])
    run = Run.open(cfg).__enter__()
    store, runs = run.open_store({"main": "demo"}, env_id="e")
    logger = run.metrics_logger()
    assert run.restore({}) is False
    run.state.update(iteration=0)
    with run.critical():
        store.write_episodes(runs["main"], episodes(2))
        logger.log(1, {"loss": 0.5})
        run.state["iteration"] = 1
    run.checkpoint()
    # iteration 2 reaches the store and the metrics, then the process is killed before its checkpoint:
    # nothing else of this run executes (we only release what a dead process would release)
    with run.critical():
        store.write_episodes(runs["main"], episodes(3))
        logger.log(2, {"loss": 0.25})
        run.state["iteration"] = 2
    store.close(), logger.close(), run.progress.stop(), run.guard.__exit__(None, None, None)
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["status"] == "running"

    resumed = Run.open(Demo(output_dir=str(tmp_path), run_name="demo", resume=True))
    assert resumed.config.logger == ["jsonl", "tensorboard"]  # run-control keys come from this invocation
    assert resumed.config.lr == 0.1 and resumed.state == {"iteration": 1}
    with resumed as run:
        store, runs = run.open_store({"main": "demo"}, env_id="e")
        assert store.count_episodes(runs["main"]) == 2  # iteration 2's episodes are gone
        logger = run.metrics_logger()
        assert lines(logger.path) == [{"step": 1, "loss": 0.5}]  # and its metrics line
        assert run.restore({}) is True
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["status"] == "finished"
    with open_store(f"sqlite:///{tmp_path / 'demo' / 'store.db'}", create=False) as store:
        (info,) = store.runs()
        assert info.status == "finished" and info.finished_at is not None
        assert info.config["lr"] == 0.1 and info.config["nested"] == {"a": 1}  # the resolved config
        assert info.git_sha is None or len(info.git_sha) >= 40


def test_the_rules_of_a_run_directory(tmp_path):
    def config(**kw):
        return Demo(output_dir=str(tmp_path), logger=["jsonl"], **kw)

    with Run.open(config()) as run:
        with run.critical():
            pass
    with pytest.raises(ConfigError, match=r"run 'demo' already exists in .* \(finished\); it is not overwritten") as err:
        Run.open(config())
    assert "resume=true" in err.value.hint and "overwrite=true" in err.value.hint
    with pytest.raises(ConfigError, match="finished; there is nothing to resume"):
        Run.open(config(resume=True))
    with pytest.raises(ConfigError, match="contradict"):
        Run.open(config(resume=True, overwrite=True))
    with pytest.raises(ConfigError, match="nothing to resume"):
        Run.open(config(run_name="other", resume=True))
    for bad in ("", "..", "a/b"):
        with pytest.raises(ConfigError, match="must be a plain directory name"):
            Run.open(config(run_name=bad))
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'"):
        Run.open(Demo(output_dir=str(tmp_path), run_name="x", logger=["mlflow"]))

    (tmp_path / "demo" / "keep.txt").write_text("old")
    with Run.open(config(overwrite=True)) as run:  # explicit: the old run goes
        with run.critical():
            pass
    assert not (tmp_path / "demo" / "keep.txt").exists()

    # a run that stops before its first commit (a model that does not load) leaves nothing behind
    with pytest.raises(RuntimeError, match="no model"):
        with Run.open(config(run_name="broken")) as run:
            run.open_store({"main": "broken"}, env_id="e")
            raise RuntimeError("no model")
    assert not (tmp_path / "broken").exists()


def test_an_interrupt_checkpoints_the_last_commit_and_marks_the_run_interrupted(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'shared.db'}"
    cfg = Demo(output_dir=str(tmp_path), store=store_url, logger=["jsonl"], checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        with Run.open(cfg) as run:
            run.open_store({"main": "demo"}, env_id="e")
            run.state["iteration"] = 0
            with run.critical():
                run.state["iteration"] = 1
            run.state["iteration"] = 99  # changed outside a commit: not what a checkpoint may save
            raise KeyboardInterrupt
    saved = json.loads((tmp_path / "demo" / "checkpoint" / "state.json").read_text())
    assert saved["state"] == {"iteration": 1} and saved["watermarks"] == {"main": 0}
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["status"] == "interrupted"
    with open_store(store_url, create=False) as store:
        assert [(r.name, r.status) for r in store.runs()] == [("demo", "interrupted")]
    # a shared store already holding a run of that name is not given a second one silently
    with pytest.raises(ConfigError, match="already has a run named 'demo'"):
        with Run.open(Demo(output_dir=str(tmp_path / "elsewhere"), store=store_url, logger=["jsonl"])) as run:
            run.open_store({"main": "demo"}, env_id="e")
    # resuming with a deliberately different value is refused, naming it
    with pytest.raises(ConfigError, match=r"lr=0.5 \(run: 0.1\)"):
        Run.open(Demo(output_dir=str(tmp_path), store=store_url, resume=True, lr=0.5))


def test_phase_seeds_and_the_iteration_line():
    seeds = {phase_seed(0, i, p) for i in range(3) for p in ("rollout", "eval", "tasks")}
    assert len(seeds) == 9 and all(0 <= s < 2**63 for s in seeds)
    assert phase_seed(5, 2, "rollout") == phase_seed(5, 2, "rollout") != phase_seed(6, 2, "rollout")
    updates = [{"loss": 0.5, "lr": 1e-3, "seconds": 2.0, "total_tokens": 300, "skipped": False},
               {"loss": 0.25, "lr": 5e-4, "seconds": 1.0, "total_tokens": 300, "skipped": False}]  # fmt: skip
    line = iteration_line("r", 3, 10, {"success_rate": 0.25, "mean_return": 0.5, "tokens_per_s": 42.0}, updates, 12.34)
    assert line == ("[r] iteration 3/10: rollout success 0.250 return 0.500 | loss 0.3750 lr 5.00e-04 | "
                    "tokens/s 42 generated, 200 trained | 12.3 s")  # fmt: skip


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file (a LevelDB-style log of protobuf ``Record`` messages)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, out, pending, pos = path.read_bytes(), 32 * 1024, [], b"", 7
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (2, 3):
            pending += chunk
    return out


def test_wandb_offline_gets_the_whole_config_and_every_metric(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = Demo(output_dir=str(tmp_path), logger=["jsonl", "wandb"], lr=0.25, nested={"deep": {"x": [1, 2]}})
    with Run.open(cfg) as run:
        logger = run.metrics_logger()
        with run.critical():
            logger.log(1, {"loss": 0.5, "rollout/success_rate": 0.25})
            logger.log(2, {"loss": 0.125})
        wandb_id = run.record["wandb_id"]
    (run_file,) = (tmp_path / "demo" / "wandb").glob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb")
    deadline = time.monotonic() + 60
    while True:  # W&B's own process writes the file; it may finish flushing after finish() returned
        records = _wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for item in r.run.config.update}  # fmt: skip
    assert config["lr"] == 0.25
    assert config["nested"] == {"deep": {"x": [1, 2]}}
    assert config["logger"] == ["jsonl", "wandb"] and config["run_name"] == "demo" and config["checkpoint_every"] == 5
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["loss"]) for h in history] == [(1, 0.5), (2, 0.125)] and history[0]["rollout/success_rate"] == 0.25


def test_store_ls_shows_status_and_keeps_demonstrations_apart(tmp_path):
    from typer.testing import CliRunner

    from agentrl.cli import app

    url = f"sqlite:///{tmp_path / 's.db'}"
    with open_store(url) as store:
        train = store.start_run("train", kind="train", git_sha="f" * 40)
        store.write_episodes(train, episodes(3, agent="expert", won=True) + episodes(4, won=False) + episodes(1, won=True))
        store.set_run_status(train, "interrupted")
        evaluation = store.start_run("eval expert", kind="eval")
        store.write_episodes(evaluation, episodes(2, agent="expert", won=True))
        store.set_run_status(evaluation, "finished")
        info = store.get_run(train)
    assert (info.episodes, info.demonstrations, info.rollouts, info.rollout_success) == (8, 3, 5, 0.2)
    result = CliRunner().invoke(app, ["store", "ls", "--store", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if " train " in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:9] == ["1", "train", "train", "interrupted", "-", "5", "3 (3 won)", "8", "0.200"]
    row = next(line for line in result.output.splitlines() if "eval expert" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[3:9] == ["finished", "-", "2", "-", "2", "1.000"]  # an evaluation of the expert is no demonstration


def test_the_actor_learner_resumes_where_its_checkpoint_left_the_store_and_its_task_draws(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from agentrl.distributed.actor_learner import ActorLearner
    from agentrl.distributed.batching import WindowBatching
    from agentrl.distributed.worker import WorkerSpec
    from agentrl.training.config import LearnerConfig

    def driver() -> ActorLearner:  # no worker starts before run(); the learner only lends its config here
        spec = WorkerSpec(model="m", env="textworld", store="sqlite://", run_id=1, weights_dir=str(tmp_path / "w"))
        return ActorLearner(SimpleNamespace(config=LearnerConfig()), None, spec, workers=1, group_size=2,
                            groups_per_update=1, sample_task=lambda rng: (str(rng.integers(100)), "scratch"), seed=7)  # fmt: skip

    before = driver()
    before.rng.integers(100, size=5)  # five groups were drawn
    before.last_seen_id = 40
    before.batching.add([(31, episodes(1)[0]), (35, episodes(1)[0])])  # read, not trained on yet
    state = json.loads(json.dumps(before.state_dict()))  # what the run's checkpoint stores (JSON)
    after = driver()
    after.load_state_dict(state)
    assert after.last_seen_id == 30  # the two untrained episodes are read again
    assert np.array_equal(after.rng.integers(100, size=5), before.rng.integers(100, size=5))  # same next draws
    # window batching decides by the driver's clock, which a restart does not keep: its open window is not replayed
    before.batching = WindowBatching(60.0, 0, start=0.0)
    before.batching.add([(31, episodes(1)[0])])
    assert before.state_dict()["since"] == 40
