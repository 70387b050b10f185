"""Recipe configs (typed dataclass + YAML + key=value), `agentrl train` errors and `agentrl plot`."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field

import pytest

from agentrl.config import ConfigError, describe, load_config
from agentrl.plotting import plot_run
from agentrl.testing import installed_cli


@dataclass
class Inner:
    lr: float = 1e-6  # learning rate
    kind: str = "grpo"  # algorithm


@dataclass
class Outer:
    steps: int = 10  # RL iterations
    env: str = "textworld"  # environment alias
    inner: Inner = field(default_factory=Inner)  # nested block
    maybe: Inner | None = None  # optional block


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  lr: 0.001\n")
    cfg = load_config(Outer, path, ["inner.kind=empg", "steps=7", "maybe={lr: 2}"])
    assert (cfg.steps, cfg.env, cfg.inner.lr, cfg.inner.kind) == (7, "textworld", 0.001, "empg")
    assert isinstance(cfg.maybe, Inner) and cfg.maybe.lr == 2.0 and cfg.maybe.kind == "grpo"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stepz=3"], "unknown config key 'stepz'; did you mean 'steps'?"),
        (["inner.lrr=1"], "unknown config key 'inner.lrr'; did you mean 'inner.lr'?"),
        (["steps=many"], "config key 'steps': Input should be a valid integer"),
        (["inner.lr=fast"], "config key 'inner.lr': Input should be a valid number"),
        (["steps"], "override 'steps' must look like key=value"),
    ],
)
def test_wrong_key_or_type_names_it(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        load_config(Outer, None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Outer, bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, tmp_path / "list.yaml")


def test_describe_reads_field_comments():
    rows = {key: (default, doc) for key, default, doc in describe(Outer)}
    assert rows["steps"] == ("10", "RL iterations")
    assert rows["inner.lr"] == ("1e-06", "learning rate")


def test_plot_writes_a_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(5):
            f.write(json.dumps({"step": step, "loss": 1.0 / (step + 1), "entropy": 2.0 - 0.1 * step,
                                "eval/success_rate": 0.1 * step}) + "\n")
    path = plot_run(run)
    assert path == run / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="metric\\(s\\) nope not in the run"):
        plot_run(run, metrics=["nope"])
    out = subprocess.run([installed_cli(), "plot", str(run), "-o", str(tmp_path / "c.png")], capture_output=True, text=True)
    assert out.returncode == 0 and (tmp_path / "c.png").exists()
    out = subprocess.run([installed_cli(), "plot", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: no metrics file at")


def test_train_unknown_recipe_is_one_line():
    out = subprocess.run([installed_cli(), "train", "no_such_recipe"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: unknown recipe 'no_such_recipe'")
