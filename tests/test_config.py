"""Recipe configs (typed dataclass + YAML + key=value), `agentrl train` errors and `agentrl plot`."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

import pytest

from agentrl.config import ConfigError, describe, load_config, setting
from agentrl.plotting import plot_run
from agentrl.testing import installed_cli


@dataclass
class Inner:
    lr: float = setting(1e-6, "learning rate")
    kind: str = setting("grpo", "algorithm")


@dataclass
class Outer:
    steps: int = setting(10, "RL iterations")
    env: str = setting("textworld", "environment alias")
    inner: Inner = setting(factory=Inner, doc="nested block")
    maybe: Inner | None = setting(None, "optional block")
    layout: str = setting(
        "concat",
        "token layout: concat (one transcript per episode) or per_step "
        "(one per turn, with a history window)",
    )  # a field spread over several lines keeps its whole description


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


def test_describe_lists_every_key_with_the_description_it_was_declared_with():
    rows = {key: (value, doc) for key, value, doc in describe(Outer)}
    assert rows["steps"] == ("10", "RL iterations")
    assert rows["inner.lr"] == ("1e-06", "learning rate")
    assert rows["layout"] == ("'concat'", "token layout: concat (one transcript per episode) or per_step (one per turn, with a history window)")
    # an unset section lists the keys it takes, with the defaults it would get
    assert rows["maybe"] == ("None", "optional block")
    assert rows["maybe.kind"] == ("'grpo' (when set)", "algorithm")
    # a merged config shows its own values
    merged = {key: value for key, value, _ in describe(load_config(Outer, None, ["maybe.lr=0.5", "steps=3"]))}
    assert (merged["steps"], merged["maybe.lr"], merged["maybe.kind"]) == ("3", "0.5", "'grpo'")


def test_describe_lists_the_options_of_the_plugins_in_use():
    from agentrl.training.config import LearnerConfig, plugin_option_sections

    cfg = LearnerConfig(shaping=["empg"], terms=["kl"], options={"empg": {"zeta": 0.3}})
    rows = {key: (value, doc) for key, value, doc in describe(cfg, sections=plugin_option_sections)}
    assert rows["options.empg.zeta"] == ("0.3", "weight of the future-clarity bonus")
    assert rows["options.empg.k"][0] == "1.0" and rows["options.kl.coef"][0] == "0.01"
    assert rows["options.grpo.eps"][0] == "1e-06"  # the advantage estimator in use
    assert not any(key.startswith("options.epo.") for key in rows)  # not in use: not listed
    assert rows["lora.r"] == ("16 (when set)", "adapter rank")


def test_every_recipe_key_and_every_plugin_option_has_a_description():
    """Recipes, sections (rollout, learner, lora) and the options of every registered plug-in document each key."""
    import importlib

    from agentrl.algorithms import registry
    from agentrl.cli.train import recipe_names
    from agentrl.training.config import LearnerConfig, plugin_option_sections

    undocumented = []
    for name in recipe_names():
        cfg = importlib.import_module(f"agentrl.recipes.{name}").Config()
        undocumented += [f"{name}: {key}" for key, _, doc in describe(cfg, sections=plugin_option_sections) if not doc]
    def ours(kind: str) -> list[str]:  # other test modules register toy plug-ins when they are collected
        return [name for name in registry.names(kind) if registry.get(kind, name).__module__.startswith("agentrl.")]

    every_plugin = LearnerConfig(advantage="gigpo", shaping=ours("shaping"), policy_loss="kl_cov", terms=ours("term"))
    rows = describe(every_plugin, sections=plugin_option_sections)
    undocumented += [key for key, _, doc in rows if not doc]
    assert undocumented == []
    keys = {key for key, _, _ in rows}
    assert {"options.gigpo.gamma", "options.inclusion.max_weight", "options.entropy.coef", "options.kl_cov.k_ratio"} <= keys
    described = {key for key, _, _ in describe(importlib.import_module("agentrl.recipes.alfworld_gigpo").Config(),
                                               sections=plugin_option_sections)}  # fmt: skip
    assert {"rollout.backend", "rollout.check_every", "learner.options.gigpo.omega", "learner.importance_cap"} <= described


def test_show_config_prints_the_merged_config_after_every_override(tmp_path):
    (tmp_path / "c.yaml").write_text("learner:\n  lr: 0.125\n")
    out = subprocess.run(
        [installed_cli(), "train", "textworld_grpo", "--show-config", "--config", str(tmp_path / "c.yaml"),
         "iterations=3", "learner.lora.r=4", "learner.shaping=[empg]", "learner.options.empg.k=2.5"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]] for line in out.stdout.splitlines() if line.count("│") >= 4}
    assert lines["iterations"][0] == "3" and lines["learner.lr"][0] == "0.125"
    assert lines["learner.lora.r"][0] == "4" and lines["learner.lora.alpha"][0] == "32"
    assert lines["learner.options.empg.k"] == ["2.5", "sharpness of the self-calibrating scale g = exp(-k H~)"]
    assert lines["learner.options.empg.zeta"][0] == "0.1"
    assert "5 keys set by --config or key=value" in out.stdout  # iterations, lr, lora.r, shaping, empg.k
    bad = subprocess.run([installed_cli(), "train", "textworld_grpo", "--show-config", "learner.shaping=[empgg]"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown shaping 'empgg'")


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
