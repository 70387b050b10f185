"""Ctrl-C during ``agentrl eval``: stop, say what was done, write the partial report, keep the store whole, exit 130.

The installed console script runs as a real subprocess and gets a real SIGINT once it has
recorded its first episodes, on TextWorld (Python engine) and on ScienceWorld, where the signal
usually lands while py4j waits for the JVM (py4j catches that ``KeyboardInterrupt`` and turns it
into an ordinary error, which used to become one failed episode and let the evaluation run on).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agentrl.store import open_store
from agentrl.testing import installed_cli

AGENTRL = installed_cli()


def recorded(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with open_store(store, create=False) as opened:
            runs = opened.runs()
    except Exception:  # the writer is still creating the schema
        return 0
    return runs[0].episodes if runs else 0


def interrupt_eval(tmp_path: Path, env: str, episodes: int, after: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Start an expert eval of ``env``, send SIGINT once ``after`` episodes are in the store."""
    report, store = tmp_path / "report.json", tmp_path / "runs.db"
    command = [AGENTRL, "eval", env, "--agent", "expert", "--episodes", str(episodes), "--output", str(report),
               "--store", str(store)]  # fmt: skip
    # A background job of a non-interactive shell (CI may run us that way) inherits SIGINT *ignored*, and Python
    # then leaves it ignored: give the command the default disposition, as a terminal's foreground job has.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while recorded(store) < after:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no episode recorded in 600 s"
            time.sleep(0.2)
        time.sleep(0.5)  # into the next episode
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err), report, store


def check_stopped_cleanly(done: subprocess.CompletedProcess, report: Path, store: Path, episodes: int) -> list[dict]:
    assert done.returncode == 130, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    data = json.loads(report.read_text())
    finished = len(data["episodes"])
    assert 1 <= finished < episodes
    assert done.stderr.strip().splitlines()[-1] == f"interrupted after {finished} of {episodes} episodes; partial report in {report}"
    assert data["partial"] is True and data["episodes_planned"] == episodes and data["summary"]["episodes"] == finished
    assert f"partial report written to {report}" in done.stdout and f"recorded {finished} episodes as run 1" in done.stdout
    with open_store(store, create=False) as opened:
        assert opened.check_integrity() == []
        stored = opened.read_episodes(1)
    # the store holds exactly the report's episodes, each complete; the one cut short is in neither
    assert [(ep.task_id, ep.seed, ep.won, ep.turns) for ep in stored] == [
        (ep["task_id"], ep["seed"], ep["won"], ep["turns"]) for ep in data["episodes"]
    ]
    assert data["panel"][:finished] == [ep["task_id"] for ep in data["episodes"]]
    return data["episodes"]


@pytest.mark.slow
def test_ctrl_c_stops_a_textworld_eval_cleanly(tmp_path):
    done, report, store = interrupt_eval(tmp_path, "textworld", episodes=20, after=2)
    episodes = check_stopped_cleanly(done, report, store, 20)
    assert all(ep["won"] and ep["error"] is None for ep in episodes)  # the expert wins every finished quest


@pytest.mark.slow
def test_ctrl_c_stops_a_scienceworld_eval_cleanly(tmp_path):
    pytest.importorskip("scienceworld")
    done, report, store = interrupt_eval(tmp_path, "scienceworld", episodes=12, after=1)
    episodes = check_stopped_cleanly(done, report, store, 12)
    # no episode was turned into an error by the interrupt (py4j's failed handler raised AttributeError)
    assert not [ep["error"] for ep in episodes if ep["error"] and ("Gateway" in ep["error"] or "Interrupt" in ep["error"])]
    assert "KeyboardInterrupt" not in done.stderr  # py4j's log of the interrupt it caught is not shown
