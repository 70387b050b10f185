"""Fuzzing every text environment's ``step``: any string is a legal action (DESIGN.md, the contract).

Each env gets at least 2,000 actions over several tasks and resets: admissible actions (so episodes go
deep), mutated admissible actions, wrapped forms (``search[...]``, ``click[...]`` with odd contents),
interpreter meta-commands, garbage, empty strings, 1 MB strings, control characters and unicode. The
test counts the exceptions ``reset``/``step`` raise (target 0) and checks every turn's output with
:func:`agentrl.checker.check_step_output` (types, info keys, progress in [0, 1], turn and truncation
bookkeeping). Ended episodes are reset, never stepped (stepping them raises ``EpisodeOver`` by
contract, checked once per env). MLE has its own fuzz test (programs that plant directories, FIFOs
and symlinks) in tests/test_mle.py.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

import agentrl
from agentrl.checker import EnvCheckError, check_reset_output, check_step_output

MEGABYTE = 1 << 20

#: Contents for wrapped forms and mutations: brackets, format strings, markup, paths, shell, unicode.
ODD_CONTENTS = (
    "", " ", "s", "%s", "%d%n", "{}", "{0}", "it s a gift", "women s running shoes", "[", "]", "[]", "][",
    "[[x]]", "click[x]", "search[", "buy now", "back to search", "next >", "< prev", "description",
    "\\", "\\n", "'", '"', "`rm -rf /`", "$(id)", "; DROP TABLE x;--", "../../../etc/passwd", "<b>x</b>",
    "&amp;", "\x00", "\x1b[2J", "\r\n", "\t", "é", "ß", "women’s", "size：large", "–", "中文", "🤖",
    "\u202e", "\u200b", "\ufeff", "\ud800", "\U0010ffff", "x" * 5_000, "0", "-1", "99999999999999999999",
    "nan", "None", "null", "true", "*", "?", ".", ",", "!", "...", "  a  b  ",
)  # fmt: skip

#: Interpreter and engine meta-commands, and ways to sneak them past an exact-match filter.
META = (
    "quit", "QUIT", "q", "q.", "quit.", "quit!", " quit ", "restart", "restart.", "undo", "undo.", "save",
    "restore", "load", "script", "unscript", "transcript", "verbose", "brief", "superbrief", "notify",
    "score", "version", "y", "yes", "n", "no", "again", "g", "oops", "oops x", "look. quit", "look. restart",
    "north. undo", "look, quit", "look then quit", "inventory. save", "x me. quit", "take all", "drop all",
    "help", "hint", "about", "xyzzy", "$debug", "#", "* comment", "wait", "wait1", "wait 100000", "sleep",
    "reset", "reset task", "exit", "look around", "inventory", "task", "focus on agent", "teleport to kitchen",
    "0", "1", "2", "9", "open door", "go north", "examine me", "l", "i", "x", "z",
)  # fmt: skip

CONTROL = "".join(chr(c) for c in range(32)) + "\x7f\x80\x85\x9f\u2028\u2029"
UNICODE_POOL = "aé中🤖\u202e\u200b\ufeff\u0301\ud800\udfff\U0001f600\u0000ʼ’–—：×÷\u00a0\u3000İıﬁ"


class ActionFuzzer:
    """A seeded stream of hostile and ordinary actions.

    With probability ``ordinary_rate`` the action is an ordinary one (from the turn's admissible
    list, else ``extra``), a fifth of those mutated; otherwise it is hostile: wrapped forms, meta
    commands, unicode and control-character garbage, blanks, 1 MB strings or odd contents.
    ``ordinary_rate`` trades depth for time on engines whose valid steps are slow.
    """

    def __init__(self, seed: int, extra: tuple[str, ...] = (), ordinary_rate: float = 0.5):
        self.rng = random.Random(seed)
        self.extra = extra
        self.ordinary_rate = ordinary_rate

    def __call__(self, admissible: list[str] | None) -> str:
        rng = self.rng
        ordinary = list(admissible or []) or list(self.extra)
        if ordinary and rng.random() < self.ordinary_rate:
            action = rng.choice(ordinary)
            return self._mutate(action) if rng.random() < 0.2 else action
        kind = rng.random()
        if kind < 0.25:
            return self._wrapped()
        if kind < 0.40:
            return rng.choice(META)
        if kind < 0.55:
            return "".join(rng.choice(UNICODE_POOL + CONTROL + "[] ") for _ in range(rng.randint(1, 40)))
        if kind < 0.65:
            return "".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 10)))
        if kind < 0.75:
            return rng.choice(("", " ", "\n", "\t\t", "\r\n", "\u3000", "\x00", "\u200b"))
        if kind < 0.79:
            return rng.choice(("x", "search[", "click[", "look ", "\x00", "é")) * (MEGABYTE // 2)
        return rng.choice(ODD_CONTENTS)

    def _wrapped(self) -> str:
        rng = self.rng
        name = rng.choice(("search", "click", "Search", "CLICK", "buy", "", "search search", "click]", "[click"))
        inner = rng.choice(ODD_CONTENTS)
        if rng.random() < 0.3:
            inner = f"{inner} {rng.choice(ODD_CONTENTS)}"
        closing = rng.choice(("]", "]", "]", "", "]]", "] trailing", "]\nclick[buy now]"))
        return f"{name}[{inner}{closing}"

    def _mutate(self, action: str) -> str:
        rng = self.rng
        how = rng.randrange(8)
        if how == 0:
            return action.upper()
        if how == 1:
            return f"  {action}\t\n"
        if how == 2:
            return action + rng.choice((".", "!", "?", ";", ". quit", ". restart", " and then undo", "\x00"))
        if how == 3:
            return action[: rng.randint(0, len(action))]
        if how == 4:
            return action.replace(" ", rng.choice(("  ", "\t", "\u00a0", "_", "")))
        if how == 5:
            return f"{action}\n{rng.choice(META)}"
        if how == 6:
            return action + " " + rng.choice(ODD_CONTENTS)
        return rng.choice(("search[", "click[")) + action + "]"


def fuzz_env(
    env: agentrl.TextEnv,
    tasks: list[str],
    *,
    n_actions: int,
    seed: int,
    extra: tuple[str, ...] = (),
    ordinary_rate: float = 0.5,
    ordinary: Callable[[agentrl.TextEnv, dict], list[str] | None] | None = None,
) -> dict:
    """Play ``n_actions`` fuzzed actions over ``tasks`` (cycled on every reset); collect what went wrong.

    Returns ``{"actions", "episodes", "max_turn", "invalid", "exceptions": [(where, action, traceback)],
    "violations": [...], "engine_errors": [...]}``. ``ordinary(env, info)`` gives the ordinary actions of a turn (default: the
    admissible actions of ``info``).
    """
    fuzzer = ActionFuzzer(seed, extra, ordinary_rate)
    report = {"actions": 0, "episodes": 0, "exceptions": [], "violations": [], "max_turn": 0, "invalid": 0,
              "engine_errors": []}  # fmt: skip
    info: dict | None = None
    turn = 0
    while report["actions"] < n_actions:
        if info is None:  # start the next episode
            task = tasks[report["episodes"] % len(tasks)]
            report["episodes"] += 1
            try:
                result = env.reset(seed=report["episodes"], options={"task": task})
                check_reset_output(env, result)
            except EnvCheckError as exc:
                report["violations"].append((f"reset({task!r})", "", str(exc)))
                return report
            except Exception:
                report["exceptions"].append((f"reset({task!r})", "", traceback.format_exc(limit=6)))
                return report
            info, turn = result[1], 0
        admissible = ordinary(env, info) if ordinary else info.get("admissible_actions")
        action = fuzzer(admissible)
        turn += 1
        report["actions"] += 1
        try:
            result = env.step(action)
        except Exception:
            report["exceptions"].append((f"{env.task_id} turn {turn}", action[:200], traceback.format_exc(limit=6)))
            info = None
            continue
        try:
            done = check_step_output(env, result, action=action, turn=turn)
        except EnvCheckError as exc:
            report["violations"].append((f"{env.task_id} turn {turn}", action[:200], str(exc)))
            done = True
        report["max_turn"] = max(report["max_turn"], turn)
        report["invalid"] += bool(result[4].get("invalid_action"))
        if result[4].get("engine_error"):  # a well-defined end, but an agent must not be able to kill the engine
            report["engine_errors"].append((f"{env.task_id} turn {turn}", action[:200], result[4]["engine_error"]))
        info = None if done else result[4]
    if info is None:  # the contract for an ended episode, once per env
        with pytest.raises(agentrl.EpisodeOver):
            env.step("look")
    return report


def assert_clean(report: dict, n_actions: int, workdir: Path, capfd: pytest.CaptureFixture) -> None:
    """No exception, no contract violation, no engine death; nothing written to the working directory
    or to the process's stdout (an engine that writes there leaks agent input to the host)."""
    def show(rows: list) -> str:
        return "\n".join(f"- {where}: action {action!r}\n{detail}" for where, action, detail in rows[:5])

    assert not report["exceptions"], f"{len(report['exceptions'])} exception(s):\n{show(report['exceptions'])}"
    assert not report["violations"], f"{len(report['violations'])} contract violation(s):\n{show(report['violations'])}"
    assert not report["engine_errors"], f"the engine died:\n{show(report['engine_errors'])}"
    assert report["actions"] >= n_actions
    assert sorted(p.name for p in workdir.iterdir()) == []
    assert capfd.readouterr().out == ""


# -- the environments ------------------------------------------------------------------------------


def test_fuzz_webshop(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # what an engine writes to its working directory shows up here
    pytest.importorskip("bm25s")
    env = agentrl.make("webshop", max_turns=40)
    try:
        tasks = env.task_ids("valid")[:8]
        report = fuzz_env(env, tasks, n_actions=3_000, seed=16)
    finally:
        env.close()
    assert_clean(report, 3_000, tmp_path, capfd)
    assert report["max_turn"] >= 30 and report["episodes"] >= 8  # episodes went deep, over every task


@pytest.mark.slow
def test_fuzz_textworld(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # what an engine writes to its working directory shows up here
    pytest.importorskip("textworld")
    env = agentrl.make("textworld", split="valid", max_turns=60)
    try:
        tasks = env.task_ids("valid")[:3]
        report = fuzz_env(env, tasks, n_actions=2_000, seed=16)
    finally:
        env.close()
    assert_clean(report, 2_000, tmp_path, capfd)
    assert report["max_turn"] >= 40 and report["episodes"] >= 3


@pytest.mark.slow
def test_fuzz_alfworld(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # what an engine writes to its working directory shows up here
    pytest.importorskip("alfworld")
    from agentrl.environments.alfworld import data as alf_data

    try:
        alf_data.resolve_root()
    except alf_data.DataRootError as exc:  # pragma: no cover - CI always has the data (as tests/test_alfworld.py)
        pytest.skip(f"no ALFWorld data: {exc}")
    env = agentrl.make("alfworld", split="valid_unseen", max_turns=250)
    try:
        panel = env.task_ids()
        tasks = [panel[0]] * 4 + [panel[60]] * 4  # loading a game costs ~4 s of CPU, resetting the loaded one ~1 s
        # An admissible command costs the engine ~0.15 s of CPU, anything else ~0.2 ms (it never reaches
        # the engine): 6% ordinary actions (~15 per episode) keep this test near 40 s of CPU.
        report = fuzz_env(env, tasks, n_actions=2_000, seed=16, ordinary_rate=0.06)
    finally:
        env.close()
    assert_clean(report, 2_000, tmp_path, capfd)
    assert report["max_turn"] == 250 and report["episodes"] >= 8


class _ValidActions:
    """ScienceWorld lists no admissible actions by default: fetch them every few turns (one JVM call)."""

    def __init__(self, every: int = 6):
        self.every, self.turns, self.cached = every, 0, []

    def __call__(self, env, info) -> list[str]:
        if info["turn"] == 0 or self.turns % self.every == 0:
            # "focus on X" ends the episode unless X is the task's object: keep episodes long
            self.cached = [a for a in env.valid_actions() if not a.startswith("focus on")]
        self.turns += 1
        return self.cached


@pytest.mark.slow
def test_fuzz_scienceworld(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # what an engine writes to its working directory shows up here
    pytest.importorskip("scienceworld")
    env = agentrl.make("scienceworld", split="dev", max_turns=120)
    try:
        panel = env.task_ids()
        tasks = [panel[i] for i in (0, 200, 400, 600, 800, 1000)]
        # the JVM answers unparsed input in ~20 ms and a real action in 40-150 ms
        report = fuzz_env(env, tasks, n_actions=2_000, seed=16, ordinary_rate=0.15, ordinary=_ValidActions())
    finally:
        env.close()
    assert_clean(report, 2_000, tmp_path, capfd)
    assert report["max_turn"] >= 100 and report["episodes"] >= 6
