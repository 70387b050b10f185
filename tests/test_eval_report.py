"""Evaluation reports people can read and reproduce: observations, max_turns, git SHA, results per task type,
return and invalid-action rate in the table, WebShop's built-in catalog flagged, and a shortened panel
spread over the task types (ScienceWorld's panel lists its 30 tasks one after the other)."""

from __future__ import annotations

import json
import subprocess

import pytest

from agentrl.testing import installed_cli


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([installed_cli(), *args], capture_output=True, text=True, timeout=900, env={
        **__import__("os").environ, "COLUMNS": "220"})  # fmt: skip


def table_row(output: str, first_cell: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("│") and line.split("│")[1].strip() == first_cell)
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_webshop_builtin_catalog_is_flagged_and_the_report_carries_what_reproduces_it(tmp_path):
    pytest.importorskip("rapidfuzz")
    report = tmp_path / "r.json"
    out = cli("eval", "webshop", "--agent", "expert", "--episodes", "2", "--output", str(report))
    assert out.returncode == 0, out.stderr
    assert "NOT the benchmark" in out.stdout
    header = [c.strip() for c in next(line for line in out.stdout.splitlines() if line.startswith("┃")).split("┃")[1:-1]]
    assert header == ["tasks", "episodes", "success", "pass@1", "return", "progress", "turns", "invalid", "errors", "seconds"]
    data = json.loads(report.read_text())
    assert data["benchmark"] is False and isinstance(data["max_turns"], int) and data["max_turns"] > 0
    assert "git_sha" in data and (data["git_sha"] is None or len(data["git_sha"]) >= 40)
    for ep in data["episodes"]:
        assert len(ep["steps"]) == ep["turns"] == len(ep["actions"])
        assert all(step["observation"] for step in ep["steps"])  # what the agent saw before each action
        assert [s["action"] for s in ep["steps"]] == ep["actions"]
    summary = data["summary"]
    assert table_row(out.stdout, "all")[1:3] == ["2", f"{summary['success_rate']:.3f}"]
    assert table_row(out.stdout, "all")[4] == f"{summary['mean_return']:.3f}"
    assert table_row(out.stdout, "all")[7] == f"{summary['invalid_action_rate']:.3f}"


def test_a_short_scienceworld_panel_spreads_over_tasks_with_results_per_task(tmp_path):
    pytest.importorskip("scienceworld")
    import agentrl
    from agentrl.evaluation import eval_panel

    env = agentrl.make("scienceworld", split="dev")
    try:
        full = env.task_ids("dev")
        spread = eval_panel(env, "dev", 31)
        kinds = [env.task_type(task) for task in spread]
        assert len(set(kinds[:30])) == 30 and kinds[30] == kinds[0]  # one of each task, then round two
        assert spread[30] == [t for t in full if env.task_type(t) == kinds[0]][1]  # each task's variations in order
        assert eval_panel(env, "dev", None) == full
    finally:
        env.close()

    report = tmp_path / "sw.json"
    out = cli("eval", "scienceworld", "--split", "dev", "--agent", "random", "--episodes", "3", "--max-turns", "2",
              "--output", str(report))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"panel: 3 of the {len(full)} tasks of dev, 3 of its 30 task types (taken round-robin over the task types)" in out.stdout
    data = json.loads(report.read_text())
    assert data["max_turns"] == 2 and data["benchmark"] is None
    assert list(data["by_task_type"]) == kinds[:3]
    for kind, rates in data["by_task_type"].items():
        assert rates["episodes"] == 1
        episode = next(ep for ep in data["episodes"] if ep["task_type"] == kind)
        assert rates["mean_return"] == pytest.approx(episode["return"])
        assert table_row(out.stdout, kind)[1] == "1"
