"""Every user mistake on the command line: one ``error:`` line, one ``hint:`` line, exit code 2.

Each case runs the installed ``agentrl`` console script in a subprocess, with the typer and click
this environment resolved, so the test sees what a user of a fresh install sees. A bug (an
exception that is not an agentrl error) must keep its traceback and exit 1.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import agentrl
from agentrl.testing import installed_cli

AGENTRL = installed_cli()


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTRL, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(out: subprocess.CompletedProcess, first_line: str, hint: str) -> None:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    # click up to 8.1 names a missing argument in capitals ('ENV'), typer's vendored click as declared ('env')
    assert lines[0] == first_line or (first_line.startswith("error: missing argument") and lines[0].lower() == first_line), lines
    assert lines[1].startswith("hint: ") and hint in lines[1], lines


@pytest.mark.parametrize(
    ("args", "first_line", "hint"),
    [
        # usage errors, raised by typer's (vendored or plain) click
        (("evall",), "error: no such command 'evall'", "did you mean 'eval'? see `agentrl --help`"),
        (("store", "lss"), "error: no such command 'lss'", "did you mean 'ls'? see `agentrl store --help`"),
        (("eval", "textworld", "--bogus-flag"), "error: no such option: --bogus-flag", "see `agentrl eval --help`"),
        (("eval", "textworld", "--epsiodes", "3"), "error: no such option: --epsiodes",
         "did you mean '--episodes'? see `agentrl eval --help`"),
        (("eval",), "error: missing argument 'env'", "see `agentrl eval --help`"),
        (("store", "show"), "error: missing argument 'run'", "see `agentrl store show --help`"),
        (("eval", "textworld", "--episodes"), "error: option '--episodes' requires an argument",
         "see `agentrl eval --help`"),
        # values checked by EvalOptions before any work
        (("eval", "textworld", "--episodes", "0"), "error: --episodes must be >= 1, got 0", "leave it out for the whole panel"),
        (("eval", "textworld", "--episodes", "-3"), "error: --episodes must be >= 1, got -3", "give --episodes 1 or more"),
        (("eval", "textworld", "--group-size", "0"), "error: --group-size must be >= 1, got 0", "give --group-size 1 or more"),
        (("eval", "textworld", "--top-p", "0"), "error: --top-p must be in (0, 1], got 0.0", "1 keeps the whole distribution"),
        (("eval", "textworld", "--agent", "bogus"), "error: unknown agent 'bogus'; choose one of random, expert, oracle, reflexion",
         "model agents are selected with --model"),
        (("eval", "textworld", "--agent", "reflexion"), "error: --agent reflexion needs an actor model", "add --model PATH"),
        (("eval", "textworld", "--output", "/nonexistent/dir/r.json"),
         "error: --output /nonexistent/dir/r.json: directory /nonexistent/dir does not exist", "mkdir -p /nonexistent/dir"),
        # -e key=value against the env's constructor
        (("eval", "textworld", "-e", "dificulty=hard"), "error: agentrl/TextWorld-v0 has no argument 'dificulty' (-e dificulty=hard)",
         "did you mean -e difficulty=...? its arguments: difficulty, split, max_turns, admissible_actions, render_mode"),
        (("eval", "textworld", "-e", "max_turns=abc"),
         "error: -e max_turns=abc: agentrl/TextWorld-v0 expects int for 'max_turns', got 'abc'", "e.g. -e max_turns=30 (the default)"),
        (("envs", "info", "textworld", "-e", "colour=blue"), "error: agentrl/TextWorld-v0 has no argument 'colour' (-e colour=blue)",
         "its arguments: difficulty,"),
        (("envs", "info", "textworld", "-e", "difficulty"), "error: --env-arg expects key=value, got 'difficulty'",
         "for example --env-arg max_turns=20"),
        (("envs", "info", "textworld", "-e", "difficulty=absurd"),
         "error: agentrl/TextWorld-v0 rejected difficulty='absurd': unknown difficulty 'absurd'; choose one of easy, long, medium, hard",
         "`agentrl envs info textworld` lists its arguments"),
        # names the registry and the env judge
        (("eval", "textwrld"), "error: unknown environment 'textwrld'; known aliases: alfworld, mle, scienceworld, textworld, webshop",
         "did you mean 'textworld'? see `agentrl envs list`"),
        (("eval", "textworld", "--split", "zzz"), "error: agentrl/TextWorld-v0 has no split 'zzz'", "choose one of train, valid, test"),
        (("play", "textworld", "--task", "easy/x"), "error: unknown TextWorld task 'easy/x': task ids look like "
         "'<difficulty>/<seed>' with difficulty one of easy, long, medium, hard (e.g. 'easy/100003')", "tasks of split 'train': easy/0,"),
        # errors met while working: a model path, a recipe's own check, a metrics file
        (("train", "textworld_grpo", "model=./missing"),
         "error: model './missing' not found: no such local directory", "save_pretrained"),
        (("train", "textworld_grpo", "learner.lr=fast"), "error: config key 'learner.lr': Input should be a valid number, "
         "unable to parse string as a number (got 'fast')", "--show-config` lists the keys"),
        (("plot", "/nonexistent/run"), "error: no metrics file at /nonexistent/run", "metrics.jsonl"),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line_errors(args, first_line, hint):
    assert_one_line_error(run(*args), first_line, hint)


def test_a_value_of_the_wrong_type_names_the_value():
    out = run("eval", "textworld", "--episodes", "abc")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    first, second = out.stderr.strip().splitlines()
    assert first.startswith("error: invalid value for '--episodes': ") and "'abc'" in first
    assert second == "hint: see `agentrl eval --help`"


def test_output_is_checked_before_any_work(tmp_path):
    store = tmp_path / "runs.db"
    out = run("eval", "textworld", "--agent", "expert", "--store", str(store), "--output", str(tmp_path / "no" / "r.json"))
    assert out.returncode == 2 and out.stderr.startswith(f"error: --output {tmp_path / 'no' / 'r.json'}: directory")
    assert not store.exists()  # neither the store nor an env was opened
    (tmp_path / "a_dir").mkdir()
    out = run("eval", "textworld", "--output", str(tmp_path / "a_dir"))
    assert_one_line_error(out, f"error: --output {tmp_path / 'a_dir'} is a directory", "give a file name")


def test_version_and_bare_command():
    out = run("--version")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"agentrl {agentrl.__version__}\n", "")
    out = run()
    assert out.returncode == 0 and "Usage: agentrl" in out.stdout and "eval" in out.stdout and out.stderr == ""


def _main_with_env(env_code: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() with an extra env registered first (what a plugin would do)."""
    code = textwrap.dedent(env_code) + "\nimport sys\nfrom agentrl.cli import main\nsys.argv = ['agentrl', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


BUGGY_ENV = """
import agentrl
from agentrl.core import TextEnv

class Buggy(TextEnv):
    splits = ("valid",)

    def __init__(self, *, split=None, max_turns=5, render_mode=None):
        super().__init__(split=split, max_turns=max_turns, render_mode=render_mode)
        self.words = "a b c".split()

    def task_ids(self, split=None):
        return [str(int(word)) for word in self.words]  # a bug: ValueError from int('a')

    def _reset_task(self, task_id):
        return "", {}

    def _step(self, action):
        return "", 0.0, True, {}

agentrl.register("test/Buggy-v0", Buggy, alias="buggy")
"""


def test_a_bug_keeps_its_traceback():
    """A ValueError that is not the user's (no value of theirs involved) is a bug: traceback, exit 1."""
    out = _main_with_env(BUGGY_ENV, "eval", "buggy")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and out.stderr.strip().endswith("ValueError: invalid literal for int() with base 10: 'a'")
    assert "error:" not in out.stderr.splitlines()[-1]


def test_agentrl_traceback_shows_the_traceback_of_a_user_error():
    out = subprocess.run([AGENTRL, "eval", "textwrld"], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "AGENTRL_TRACEBACK": "1"})  # fmt: skip
    assert out.returncode == 1 and "Traceback" in out.stderr and "UnknownEnvError" in out.stderr


def test_errors_do_not_pass_terminal_escapes_or_markup():
    """An error line quotes what the user typed; escapes in it are shown, not obeyed, and Rich markup stays text."""
    out = run("eval", "textworld", "-e", "x\x1b[2J[bold]=1")
    assert out.returncode == 2 and "\x1b" not in out.stderr
    assert out.stderr.startswith("error: agentrl/TextWorld-v0 has no argument 'x\\x1b[2J[bold]'")


def test_eval_options_check_their_values_in_python_too(tmp_path):
    """EvalOptions is the one place the eval options are checked; the CLI only builds it."""
    from agentrl.cli.eval_options import EvalOptions
    from agentrl.errors import UserError

    opts = EvalOptions(env="textworld", episodes=3, max_turns=5, output=tmp_path / "r.json")
    assert (opts.agent_kind, opts.env_overrides, opts.sampling().stop) == ("random", {"max_turns": 5}, ("</action>",))
    assert EvalOptions(env="textworld", model="/some/model").agent_kind == "model"
    for bad, message in [({"episodes": 0}, "--episodes must be >= 1, got 0"), ({"history": 0}, "--history must be >= 1"),
                         ({"layout": "zigzag"}, "unknown --layout 'zigzag'"),
                         ({"agent": "expert", "model": "m"}, "--agent expert and --model both choose the agent"),
                         ({"tokenizer": "t"}, "--tokenizer applies to a model agent"),
                         ({"reflector": "r", "model": "m"}, "--reflector applies to --agent reflexion")]:  # fmt: skip
        with pytest.raises(UserError, match=message.replace("(", "\\(")):
            EvalOptions(env="textworld", **bad)
