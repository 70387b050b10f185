"""Algorithms are plug-ins: one registered from outside the package trains through the unchanged learner.

Two ways in: a class registered in this test module (code the learner has never seen), and a
third-party package installed into a temporary directory that registers through the entry-point
group ``agentrl.algorithms``. Neither edits agentrl.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentrl.algorithms import registry  # noqa: E402
from agentrl.algorithms.registry import AdvantageShaper, AlgorithmConfigError, LossTerm, Reduce, Steps, Tokens  # noqa: E402
from agentrl.config import setting  # noqa: E402
from agentrl.testing import install_plugin, token_episode  # noqa: E402
from agentrl.training.batch import build_batch  # noqa: E402
from agentrl.training.config import LearnerConfig  # noqa: E402
from agentrl.training.learner import Learner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@registry.register
class Clamp(AdvantageShaper):
    """A toy shaper: advantages clamped to [-limit, limit], the limit taken over the whole batch's max |A|."""

    name = "toy_clamp"

    @dataclass
    class Config:
        fraction: float = setting(0.5, "limit = fraction x max_batch |A|")

    def __call__(self, steps: Steps, advantages: torch.Tensor, reduce: Reduce) -> torch.Tensor:
        limit = self.config.fraction * reduce.max(advantages.abs().max())
        return advantages.clamp(-limit, limit)


@registry.register
class Length(LossTerm):
    """A toy loss term: ``coef`` x the aggregated log-prob of the sampled tokens (and its value as a metric)."""

    name = "toy_loglik"

    @dataclass
    class Config:
        coef: float = setting(1.0, "weight of the log-likelihood in the loss")

    def __call__(self, tokens: Tokens) -> tuple[torch.Tensor, dict[str, float]]:
        value = tokens.aggregate(tokens.logp)
        return self.config.coef * value, {"toy_loglik": value.item()}


def tiny_model() -> torch.nn.Module:
    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def batch():
    prompt = [1, 2, 3]
    return [
        token_episode([dict(prompt=prompt, response=[5, 6], reward=r)], group_id="g", task_id="t")
        for r in (3.0, 1.0, 0.0, 0.0)
    ]


def test_a_plugin_registered_outside_the_package_trains_through_the_unchanged_learner():
    learner = Learner(tiny_model(), LearnerConfig(lr=1e-3, shaping=["toy_clamp"], terms=["toy_loglik"],
                                                  options={"toy_clamp": {"fraction": 0.25}, "toy_loglik": {"coef": 0.5}}))  # fmt: skip
    episodes = batch()
    grpo = registry.get("advantage", "grpo")()(learner.steps_view(build_batch(episodes)), Reduce())
    limit = 0.25 * grpo.abs().max()
    torch.testing.assert_close(learner.advantages(build_batch(episodes)), grpo.clamp(-limit, limit))
    (metrics,) = learner.update(episodes)
    assert metrics["loss"] == pytest.approx(metrics["pg_loss"] + 0.5 * metrics["toy_loglik"], abs=1e-6)
    assert metrics["toy_loglik"] < 0  # a log-likelihood: the term really ran on the sampled tokens
    assert "toy_clamp" in registry.names("shaping") and "toy_loglik" in registry.names("term")


def test_plugin_names_and_options_are_checked_in_one_line():
    with pytest.raises(AlgorithmConfigError, match="unknown shaping 'empgg'; did you mean 'empg'"):
        Learner(tiny_model(), LearnerConfig(shaping=["empgg"]))
    with pytest.raises(AlgorithmConfigError, match="unknown option 'learner.options.toy_clamp.fractoin'.*did you mean 'learner.options.toy_clamp.fraction'"):
        Learner(tiny_model(), LearnerConfig(shaping=["toy_clamp"], options={"toy_clamp": {"fractoin": 1.0}}))
    with pytest.raises(AlgorithmConfigError, match="option 'learner.options.toy_clamp.fraction'"):
        Learner(tiny_model(), LearnerConfig(shaping=["toy_clamp"], options={"toy_clamp": {"fraction": "half"}}))
    with pytest.raises(AlgorithmConfigError, match="learner.options.epo is set but 'epo' is not in use"):
        Learner(tiny_model(), LearnerConfig(options={"epo": {"lam": 1.0}}))


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "agentrl-toy-algorithm"
        version = "0.1"
        [project.entry-points."agentrl.algorithms"]
        toy = "toy_algorithm:register"
    """,
    "toy_algorithm.py": """
        from dataclasses import dataclass
        from agentrl.algorithms.registry import AdvantageEstimator, register as register_plugin

        class Sign(AdvantageEstimator):
            '''The sign of each trajectory's return minus the group's smallest (a toy).'''
            name = "toy_sign"

            @dataclass
            class Config:
                scale: float = 1.0

            def __call__(self, steps, reduce):
                return self.config.scale * (steps.returns > 0).float()[steps.traj_index]

        def register():
            register_plugin(Sign)
    """,
}


def test_a_third_party_package_registers_through_the_entry_point_group(tmp_path):
    env = install_plugin(PLUGIN, tmp_path)
    code = textwrap.dedent(
        """
        from agentrl.algorithms import registry
        from agentrl.testing import token_episode
        from agentrl.training.batch import build_batch
        from agentrl.training.config import LearnerConfig
        from agentrl.training.learner import build_plugins
        plugins = build_plugins(LearnerConfig(advantage="toy_sign", options={"toy_sign": {"scale": 3.0}}))
        episodes = [token_episode([dict(prompt=[1, 2], response=[3], reward=r)], group_id="g") for r in (2.0, 0.0)]
        from agentrl.training.learner import Learner
        import transformers, torch
        model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(
            vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1))
        learner = Learner(model, LearnerConfig(advantage="toy_sign", options={"toy_sign": {"scale": 3.0}}))
        print(registry.names("advantage"), learner.advantages(build_batch(episodes)).tolist())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "'toy_sign'" in out and out.strip().endswith("[3.0, 0.0]")
