"""The command line, invoked for real as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from agentrl.testing import installed_cli

AGENTRL = installed_cli()


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTRL, *args], capture_output=True, text=True, input=input, timeout=600)


def test_envs_list_and_info():
    out = run("envs", "list")
    assert out.returncode == 0 and "agentrl/TextWorld-v0" in out.stdout and "textworld" in out.stdout
    out = run("envs", "info", "textworld")
    assert out.returncode == 0
    assert "split valid: 50 tasks (easy/100000, easy/100001, easy/100002, ...)" in out.stdout
    assert "argument -e difficulty: str = 'easy'" in out.stdout and "argument -e max_turns: int = 30" in out.stdout


def test_eval_expert_writes_a_reproducible_report(tmp_path):
    report = tmp_path / "report.json"
    out = run("eval", "textworld", "--agent", "expert", "--episodes", "3", "--seed", "5", "--output", str(report))
    assert out.returncode == 0, out.stderr
    # the table fits the 80 columns a pipe gets: every header whole
    header = [c.strip() for c in next(line for line in out.stdout.splitlines() if line.startswith("┃")).split("┃")[1:-1]]
    assert header == ["tasks", "episodes", "success", "pass@1", "return", "progress", "turns", "invalid", "errors", "seconds"]
    row = [c.strip() for c in next(line for line in out.stdout.splitlines() if line.startswith("│all")).split("│")[1:-1]]
    assert row[:9] == ["all", "3", "1.000", "1.000", "1.000", "1.000", "2.0", "0.000", "0"]  # the expert wins in 2 turns
    data = json.loads(report.read_text())
    assert data["panel"] == ["easy/100000", "easy/100001", "easy/100002"]
    assert (data["seed"], data["split"], data["agent"], data["env_id"]) == (5, "valid", "expert", "agentrl/TextWorld-v0")
    assert data["summary"]["success_rate"] == 1.0 and data["summary"]["episodes"] == 3 and data["partial"] is False
    assert [ep["seed"] for ep in data["episodes"]] == [5, 5, 5]


def test_eval_random_groups(tmp_path):
    report = tmp_path / "r.json"
    out = run("eval", "textworld", "--agent", "random", "--split", "test", "--episodes", "2", "--group-size", "2",
              "--max-turns", "4", "--output", str(report))
    assert out.returncode == 0, out.stderr
    data = json.loads(report.read_text())
    assert [ep["task_id"] for ep in data["episodes"]] == ["easy/200000"] * 2 + ["easy/200001"] * 2
    assert [ep["seed"] for ep in data["episodes"]] == [0, 1, 0, 1]
    assert all(ep["turns"] <= 4 for ep in data["episodes"])


def test_play_in_the_terminal():
    out = run("play", "textworld", "--task", "easy/100000", input="take controller from shelf\ninsert controller into safe\n")
    assert out.returncode == 0, out.stderr
    assert "actions: " in out.stdout and "episode won" in out.stdout


def test_play_quit():
    out = run("play", "textworld", "--task", "easy/100000", input="look\nquit\n")
    assert out.returncode == 0 and "episode" not in out.stdout.split("look")[-1]


def test_envs_check():
    out = run("envs", "check", "textworld")
    assert out.returncode == 0 and "OK agentrl/TextWorld-v0" in out.stdout


def test_cli_modules_import_no_private_names_and_form_no_cycle():
    """The CLI's modules share helpers through public names (cli.common, cli.env_setup), and no two import
    each other, at module level or inside a function."""
    import ast
    from pathlib import Path

    import agentrl.cli

    package = Path(agentrl.cli.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        name = path.stem
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentrl.cli"):
                target = node.module.removeprefix("agentrl.cli").lstrip(".") or "__init__"
                if target == "__init__":
                    target = next((a.name for a in node.names if (package / f"{a.name}.py").exists()), "__init__")
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{name} imports private {private} from {node.module}"
                if node.module != "agentrl.cli" or target != "__init__":
                    graph[name].add(target)
    graph["__init__"] = set()  # the app module mounts every command module; nothing imports it back

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert cycles == [], {name: graph[name] for name in cycles}
    assert "envs" not in graph["reflexion"] and "evaluate" not in graph["model"]


def test_the_consoles_follow_columns_at_every_print_not_at_import():
    """Rich fixes a console's width when COLUMNS is set at construction; the CLI's consoles are built at import,
    so without care a table's width would depend on the environment of whoever imported agentrl.cli first."""
    code = "import os\nfrom agentrl.cli.common import console, console_err\nos.environ['COLUMNS'] = '250'\nprint(console.width, console_err.width)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "COLUMNS": "40"}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["250", "250"]
