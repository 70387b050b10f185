"""The GiGPO recipes: their verl-agent defaults, and the GiGPO learner path through the online loop on TextWorld."""

from __future__ import annotations

import json
import os

import pytest

from agentrl.config import load_config

WIDE = {**os.environ, "COLUMNS": "400"}  # one table row per line

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("recipe", "env", "max_turns", "scale_by_std"),
    [("alfworld_gigpo", "alfworld", 50, True), ("webshop_gigpo", "webshop", 15, False)],
)
def test_gigpo_recipe_defaults_are_verl_agents(recipe, env, max_turns, scale_by_std):
    import importlib

    from agentrl.config import ConfigError
    from agentrl.training.learner import build_plugins

    module = importlib.import_module(f"agentrl.recipes.{recipe}")
    cfg = module.Config()
    assert cfg.model == ""  # required, as in every recipe (verl-agent: Qwen/Qwen2.5-1.5B-Instruct)
    with pytest.raises(ConfigError, match="set model="):
        module.main(cfg)
    assert (cfg.env, cfg.max_turns, cfg.run_name) == (env, max_turns, recipe)
    assert (cfg.iterations, cfg.tasks_per_iteration, cfg.group_size) == (150, 16, 8)
    assert (cfg.layout, cfg.history, cfg.max_new_tokens, cfg.temperature) == ("per_step", 2, 512, 1.0)
    assert (cfg.eval_temperature, cfg.eval_every, cfg.eval_before) == (0.4, 5, True)
    learner = cfg.learner
    assert (learner.lr, learner.weight_decay, learner.min_lr_ratio, learner.for_run(cfg.iterations).total_steps) == (
        1e-6,
        0.01,
        1.0,
        150,  # trainer.total_epochs=150, one batch per epoch: derived from the run's iterations
    )
    assert (learner.eps_low, learner.eps_high, learner.agg, learner.max_grad_norm) == (
        0.2,
        0.2,
        "token-mean",
        1.0,
    )
    assert (learner.advantage, learner.shaping, learner.terms) == ("gigpo", [], ["kl", "entropy"])
    plugins = build_plugins(learner)  # the options are valid for the plug-ins they name
    gigpo = plugins["advantage"].config
    assert (gigpo.gamma, gigpo.omega, gigpo.scale_by_std, gigpo.episode_weighting) == (
        0.95,
        1.0,
        scale_by_std,
        "step",
    )
    assert (gigpo.invalid_penalty, gigpo.invalid_key, gigpo.similarity_threshold) == (
        0.1,
        "parse_error",
        None,
    )
    kl, entropy = plugins["terms"]
    assert (kl.name, kl.config.coef, entropy.name, entropy.config.coef) == ("kl", 0.01, "entropy", 1e-3)
    # one option overridden the way the CLI does it; the others keep their defaults
    cfg = load_config(module.Config, None, ["learner.options.gigpo.omega=0.8", "model=m"])
    assert cfg.learner.options["gigpo"]["omega"] == 0.8 and cfg.learner.options["gigpo"]["gamma"] == 0.95


def test_cli_lists_the_gigpo_recipes_and_shows_their_config():
    import subprocess

    from agentrl.testing import installed_cli

    def run(*args: str) -> str:
        out = subprocess.run([installed_cli(), *args], capture_output=True, text=True, timeout=600, env=WIDE)
        assert out.returncode == 0, out.stderr
        return out.stdout

    listing = run("train", "--list")
    assert "alfworld_gigpo" in listing and "webshop_gigpo" in listing
    for recipe, mode in (("alfworld_gigpo", "'scale_by_std': True"), ("webshop_gigpo", "'scale_by_std': False")):
        shown = run("train", recipe, "--show-config")
        assert "'gigpo'" in shown and mode in shown and "0.4" in shown  # advantage, mode, eval temperature


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_gigpo_learner_runs_in_the_online_loop_on_textworld(tiny_chat_model, tmp_path):
    """alfworld_gigpo's learner (GiGPO + k3 KL + entropy bonus) on two TextWorld iterations with a tiny model.

    The advantages the run logged equal those the pure functions give on the episodes read back from
    the store. A supervised warm-up on the two training games' walkthroughs makes some first-iteration
    episodes win (measured: one of six, in 2 turns), so both advantage levels are non-trivial.
    """
    import dataclasses

    pytest.importorskip("textworld")
    from agentrl.algorithms import gigpo
    from agentrl.recipes import alfworld_gigpo
    from agentrl.recipes.textworld_grpo import Config, main
    from agentrl.store import open_store
    from agentrl.training.batch import build_batch

    learner = dataclasses.replace(alfworld_gigpo.Config().learner, lr=1e-4, total_steps=2)
    cfg = Config(model=tiny_chat_model, run_name="run", output_dir=str(tmp_path), max_turns=4, train_tasks=2,
                 sft_episodes=2, sft_epochs=10, iterations=2, tasks_per_iteration=2, group_size=3, eval_tasks=0,
                 max_new_tokens=24, layout="per_step", history=2, admissible_only=True, learner=learner)  # fmt: skip
    main(cfg)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    updates = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in updates] == [1, 2]
    assert all(m["kl"] >= 0 and m["entropy_bonus"] > 0 and not m["skipped"] for m in updates)
    with open_store(f"sqlite:///{tmp_path / 'run' / 'store.db'}") as store:
        (run,) = store.runs()
        episodes = store.read_episodes(run.id)
    episodes = [ep for ep in episodes if ep.agent != "expert"]  # the warm-up's demonstrations are stored too
    assert len(episodes) == 2 * 2 * 3
    first = [
        ep for ep in episodes if ep.steps[0].policy_version == 0
    ]  # iteration 1, sampled before any update
    assert len(first) == 2 * 3
    batch = build_batch(first)
    options = learner.options["gigpo"]
    scale, gamma = options["reward_scale"], options["gamma"]
    step_returns = gigpo.returns_over_turns(
        [[scale * r for r in rewards] for rewards in batch.episode_rewards],
        batch.traj_index,
        batch.turn,
        gamma,
    )
    invalid = torch.tensor([bool(info.get("parse_error")) for info in batch.infos], dtype=torch.float32)
    expected = gigpo.advantages_from_step_returns(
        batch.returns * scale, batch.group_ids, batch.traj_index, step_returns, batch.observations,
        action_penalty=0.1 * invalid,
    )  # fmt: skip
    episode_level = gigpo.episode_advantages(batch.returns * scale, batch.group_ids, batch.traj_index)
    assert any(ep.won for ep in first) and (expected - episode_level).abs().max() > 0.1  # A^S contributes
    logged = updates[0]
    assert logged["adv_mean"] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert logged["adv_std"] == pytest.approx(expected.std().item(), abs=1e-5)
    assert logged["adv_min"] == pytest.approx(expected.min().item(), abs=1e-5)
    assert logged["adv_max"] == pytest.approx(expected.max().item(), abs=1e-5)
    # every group's first observation is one anchor state shared by its 3 episodes
    codes, _ = gigpo.anchor_groups(batch.observations, [batch.group_ids[t] for t in batch.traj_index])
    firsts = [codes[s].item() for s in range(len(batch.turn)) if batch.turn[s] == 0]
    assert len(firsts) == 6 and len(set(firsts)) == 2
