"""The online recipe loop end to end on a tiny model: warm-up, constrained rollouts, EPO updates, evaluations."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("textworld")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_textworld_recipe_runs_warm_up_rl_and_sampled_evaluation(tiny_chat_model, tmp_path):
    from agentrl.recipes.textworld_grpo import Config, main
    from agentrl.store import open_store
    from agentrl.training.config import LearnerConfig

    cfg = Config(model=tiny_chat_model, run_name="run", output_dir=str(tmp_path), max_turns=2, train_tasks=20,
                 iterations=2, tasks_per_iteration=2, group_size=2, eval_tasks=2, eval_every=1, eval_before=False,
                 eval_temperature=1.0, eval_samples=3, max_new_tokens=48, layout="per_step", history=0,
                 admissible_only=True, sft_episodes=2, sft_epochs=1,
                 learner=LearnerConfig(lr=1e-4, total_steps=2, terms=["epo"]))  # fmt: skip
    summary = main(cfg)
    assert summary["sft"]["demonstrations"] == 2
    assert [e["iteration"] for e in summary["evaluations"]] == [1, 2]  # eval_before=False
    assert all(e["episodes"] == 6 and e["invalid_action_rate"] == 0.0 for e in summary["evaluations"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    updates = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in updates] == [1, 2] and all(m["epo_beta"] > 1.0 for m in updates)
    assert (tmp_path / "run" / "model" / "config.json").exists()
    evals = sorted((tmp_path / "run" / "evals").glob("*.json"))
    assert [p.name for p in evals] == ["iteration-0001.json", "iteration-0002.json"]  # each evaluation's report
    report = json.loads(evals[-1].read_text())
    assert (report["iteration"], report["max_turns"], len(report["episodes"])) == (2, 2, 6)
    assert all(len(ep["steps"]) == ep["turns"] and ep["steps"][0]["observation"] for ep in report["episodes"])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    with open_store(f"sqlite:///{tmp_path / 'run' / 'store.db'}") as store:
        (run,) = store.runs()
        episodes = store.read_episodes(run.id)
    assert (run.status, run.demonstrations, run.rollouts) == ("finished", 2, 8)
    rollouts = [ep for ep in episodes if ep.agent != "expert"]
    assert len(episodes) - len(rollouts) == 2 and len(rollouts) == 2 * 2 * 2
    masks = [m for ep in rollouts for t in ep.transcripts for m, s in zip(t.loss_mask, t.sampled, strict=True) if s]
    assert 0 < sum(masks) < len(masks)  # tokens forced by the constraint carry no gradient
    assert all(not s.info["invalid_action"] for ep in rollouts for s in ep.steps)
