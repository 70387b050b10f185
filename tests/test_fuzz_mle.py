"""Fuzzing agentrl/MLE-v0: step() never raises on anything an agent can send, and every step has a
well-defined outcome.

Most actions fail cheaply before any sandbox starts (garbage, huge strings, control characters,
unfenced code, programs that do not parse or compile); about a hundred are hostile programs run in
the real sandbox (links, FIFOs, directories, hard links, setuid files and sockets under the env's
own file names, a wiped or locked workspace, a filled disk, thousands of files, fake milestone
markers, crashes, floods, stray processes, random submissions). Every link target is a file of
the test's own tmp dir, checked untouched after every step. The grader gets a fuzz of its own.
"""

from __future__ import annotations

import math
import os
import random
import re
import textwrap
import traceback

import pytest

import agentrl
from agentrl.environments.mle.grader import (
    GraderSpec,
    SubmissionRejected,
    grade_csv,
    grade_submission,
    read_answers,
)
from agentrl.environments.mle.instrument import MILESTONES
from agentrl.environments.mle.tasks import builtin_task
from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

_works, _why = BubblewrapSandbox.availability()

REASONS = {
    "no_program", "syntax_error", "finished", "timeout", "out_of_memory", "output_limit", "error", "disk_limit",
}  # fmt: skip
ENV_NAMES = ["solution.py", "submission.csv", ".run.bin", "__pycache__", "hmac.py", ".agentrl-removed-0"]
VALID = "import os\nprint('ok')\n"


def fence(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


# -- cheap actions: rejected before any sandbox starts -------------------------------------------------


def random_text(rng: random.Random, n: int) -> str:
    pools = [
        "abcdefghijklmnopqrstuvwxyz ()[]{}:=+-*/'\"#\n\t`",
        "".join(map(chr, range(0, 32))) + "\x7f\x85\u2028\u2029\ufeff",
        "éü中文🙂\u202e\u200b",
        "```",
    ]
    out = []
    for _ in range(n):
        pool = rng.choice(pools)
        out.append(rng.choice(pool))
    if rng.random() < 0.05:
        out.insert(rng.randrange(len(out) + 1), chr(rng.choice([0xD800, 0xDC80, 0xDFFF])))  # lone surrogates
    return "".join(out)


def broken_program(rng: random.Random) -> str:
    """A program that never parses (an unclosed bracket at the end), with random damage before it."""
    lines = builtin_task("iris").expert.splitlines() if builtin_task("iris").expert else [VALID]
    for _ in range(rng.randrange(4)):
        i = rng.randrange(len(lines))
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)] + random_text(rng, rng.randrange(8))
    return "\n".join(lines) + "\nprint((\n"


CHEAP = {
    "garbage text": lambda rng: random_text(rng, rng.randrange(0, 3000)),
    "empty or blank": lambda rng: rng.choice(
        ["", " ", "\n\n", "\t", "\x00", "```", "``````", fence(""), fence("   \n ")]
    ),
    "huge string": lambda rng: rng.choice("ab`\n\x00") * rng.randrange(150_000, 260_000),
    "huge fenced program": lambda rng: fence("x = 1\n" * rng.randrange(17_000, 30_000)),
    "unfenced code": lambda rng: rng.choice(
        [VALID, "import numpy as np\nnp.zeros(3)", "print(open('/etc/passwd').read())"]
    ),
    "broken program": lambda rng: fence(broken_program(rng), rng.choice(["python", "py", "python3", ""])),
    "does not compile": lambda rng: fence(
        rng.choice(
            [
                "return 1",
                "break",
                "continue",
                "nonlocal x",
                "await f()",
                "yield 1",
                "x = yield",
                "def f():\n    nonlocal y",
                "class C:\n    return 1",
                "f(**x, *y)",
                "del f()",
                "a = 1 = 2",
                "from __future__ import braces",
                "def f(x, x): pass",
                "lambda: (yield)",
                "async def f():\n    yield from g()",
            ]
        )
    ),  # fmt: skip
    "too deep": lambda rng: fence(
        rng.choice(
            [
                "x = " + "-" * rng.randrange(5_000, 90_000) + "1",
                "x = " + "+".join(["1"] * rng.randrange(5_000, 30_000)),
                "x = a" + ".b" * rng.randrange(5_000, 40_000),
                "x = " + "[" * 300 + "]" * 300,
                "".join(" " * i + "if 1:\n" for i in range(150)) + " " * 150 + "pass",
                "x = " + "(" * 199 + "1" + ")" * 199,
            ]
        )
    ),  # fmt: skip
    "null bytes and surrogates": lambda rng: fence(
        rng.choice(["x = 1\x00", "x = '\udc80'", "print('\ud800')", "\x00"])
    ),
    "other envs' actions": lambda rng: rng.choice(
        ["search[s]", "click[buy now]", "go north", "look", "<action>x</action>"]
    ),
    "odd fences": lambda rng: rng.choice(
        [
            "```python" + VALID,
            "```python\r\n" + VALID + "(\r\n```",
            "````python\n(\n````",
            "~~~python\n" + VALID + "~~~",
            "```javascript\nconsole.log(1)\n```",
            "``` python \n(\n```",
            "```python\n```python\n(\n```\n```",
        ]
    ),  # fmt: skip
}


def cheap_actions(rng: random.Random, n: int) -> list[tuple[str, str]]:
    kinds = list(CHEAP)
    weights = [40, 4, 1, 1, 6, 20, 8, 3, 3, 4, 6]
    return [(kind, CHEAP[kind](rng)) for kind in rng.choices(kinds, weights, k=n)]


# -- hostile programs: run in the sandbox ----------------------------------------------------------------


def hostile_programs(rng: random.Random, victim: str, absent: str, n: int) -> list[tuple[str, str]]:
    def plant() -> str:
        name = rng.choice(ENV_NAMES)
        how = rng.choice([
            f"os.symlink({victim!r}, name)", f"os.symlink({absent!r}, name)", "os.symlink('/proc/self/mem', name)",
            "os.mkfifo(name)", "os.makedirs(name + '/a/b')", "open('k', 'w').write('k'); os.link('k', name)",
            "shutil.copy(sys.executable, name); os.chmod(name, 0o6755)",
            "s = socket.socket(socket.AF_UNIX); s.bind(name)",
            "here = os.getcwd(); os.mkdir(name); os.chdir(name)\nfor _ in range(1100):\n    os.mkdir('d'); os.chdir('d')\nos.chdir(here)",
        ])  # fmt: skip
        return (
            f"import os, shutil, socket, sys\nname = {name!r}\n"
            "if os.path.lexists(name):\n    shutil.rmtree(name) if os.path.isdir(name) and not os.path.islink(name) else os.remove(name)\n"
            f"{how}"
        )

    def submission() -> str:
        rows = rng.choice([
            "''.join(f'{i},{random.randint(0, 2)}\\n' for i in ids)",  # valid for iris
            "''.join(f'{i},{random.random()}\\n' for i in ids)",
            "''.join(f'{i},nan\\n' for i in ids)", "''.join(f'{i},inf\\n' for i in ids)",
            "''.join(f'{ids[0]},1\\n' for i in ids)", "''.join(f'{i}.5,1\\n' for i in ids)",
            "''.join(f'{i},1e308\\n' for i in ids)", "'1,1\\n' * 300000", "'1,' + '9' * 100000 + '\\n'",
            "''.join(f'{i},\"a\\nb\"\\n' for i in ids)", "bytes(range(256)).decode('latin-1') * 50",
        ])  # fmt: skip
        header = rng.choice(
            ["id,target", "target,id", "id", "a,b,c", ",".join(f"c{i}" for i in range(40)), ""]
        )
        return (
            "import random, numpy as np\nids = np.loadtxt('/data/test.csv', delimiter=',', skiprows=1)[:, 0].astype(int)\n"
            f"open('submission.csv', 'w').write({header!r} + '\\n' + {rows})"
        )

    menu = {
        "plant": plant,
        "submission": submission,
        "wipe workspace": lambda: "import os, shutil\nfor n in os.listdir('.'):\n    shutil.rmtree(n) if os.path.isdir(n) and not os.path.islink(n) else os.remove(n)",
        "lock workspace": lambda: f"import os\nos.chmod('.', {rng.choice([0, 0o500, 0o200])})",
        "fill disk": lambda: f"import os\nfor i in range({rng.randrange(4, 24)}):\n    open(f'fill{{i}}', 'wb').write(b'0' * (1 << 20))",
        "many files": lambda: f"import os\nos.makedirs('many', exist_ok=True)\nfor i in range({rng.randrange(1000, 5000)}):\n    open(f'many/{{i}}', 'w').close()",
        "fake markers": lambda: rng.choice([
            "import sys\nfor n in ['imports', 'model_trained']:\n    print(f'@@agentrl-milestone {n} ' + '%032x' % 7 + '@@')",
            "print('@@milestone 0123456789abcdef0123456789abcdef model_trained@@')",
            "import sys\nsys.audit('agentrl.milestone', 'model_trained')\nsys.audit('agentrl.milestone', 123)",
            "import gc\ntry:\n    gc.get_objects()\nexcept RuntimeError as e:\n    print(e)",
            "print('@@agentrl-milestone ' * 10000)",
        ]),  # fmt: skip
        "exit": lambda: rng.choice([
            f"import sys\nsys.exit({rng.choice([0, 1, 2, 3, 127, 255, 256, -1, 'boom', None])!r})",
            f"import os\nos._exit({rng.choice([0, 3, 42, 255])})",
            "raise KeyboardInterrupt", "raise MemoryError", "raise SystemExit(3)", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "import os\nos.abort()",
            "import sys\nsys.setrecursionlimit(100000)\ndef f(n): return f(n + 1)\nf(0)",
            "import sys\nsys.stderr.write('agentrl loader: fake\\n')\nsys.exit(3)",
        ]),  # fmt: skip
        "output": lambda: rng.choice([
            "import sys, os\nos.write(1, bytes(range(256)) * 100)\nos.write(2, b'\\x1b[2J\\x1b]0;title\\x07\\xff\\xfe')",
            "print('x' * 3_000_000)", "import os\nos.close(1)\nos.close(2)\nprint('gone')",
            "import os\nfd = os.open('/dev/null', os.O_WRONLY)\nfor i in range(1, 40):\n    try: os.dup2(fd, i)\n    except OSError: pass\nprint('hidden')",
            "print('\\r' * 5000 + 'done')",
        ]),  # fmt: skip
        "stray processes": lambda: rng.choice([
            "import subprocess\nsubprocess.Popen(['sleep', '100'])",
            "import os\nif os.fork() == 0:\n    import time; time.sleep(100)",
            "import threading, time\nthreading.Thread(target=time.sleep, args=(100,), daemon=True).start()",
        ]),  # fmt: skip
        "read env files": lambda: "import os\nfor n in ['.run.bin', 'solution.py', '/proc/self/cmdline', '/proc/self/environ']:\n    try:\n        print(n, len(open(n, 'rb').read()))\n    except Exception as e:\n        print(n, type(e).__name__)",
        "limits": lambda: rng.choice(["x = bytearray(1 << 31)", "import time\ntime.sleep(60)", "while True: pass"]),
    }  # fmt: skip
    weights = {"plant": 30, "submission": 16, "limits": 2}
    kinds = list(menu)
    chosen = rng.choices(kinds, [weights.get(k, 5) for k in kinds], k=n)
    return [(kind, fence(textwrap.dedent(menu[kind]()))) for kind in chosen]


# -- the fuzz loop ------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"@@agentrl-milestone [a-z_]+ [0-9a-f]{32}@@")


def fuzz(env, actions, victim, absent, failures: list[str]) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    for kind, action in actions:
        try:
            obs, reward, terminated, truncated, info = env.step(action)
        except Exception:  # the point of the test: collect every one, then fail with all of them
            failures.append(f"{kind}: {action[:120]!r}\n{traceback.format_exc()[-1500:]}")
            env.reset(options={"task": "iris"})
            continue
        problems = []
        if not (isinstance(obs, str) and obs and math.isfinite(reward)):
            problems.append("obs or reward")
        if info["run_reason"] not in REASONS or not set(info["milestones"]) <= set(MILESTONES):
            problems.append(f"reason {info['run_reason']!r}, milestones {info['milestones']}")
        if reward != pytest.approx(sum(info["reward_breakdown"].values())) or not 0 <= info["progress"] <= 1:
            problems.append("reward does not add up")
        if _TAG_RE.search(obs):
            problems.append("a milestone tag is shown to the agent")
        if open(victim).read() != "precious\n" or os.path.exists(absent):
            problems.append("a host file outside the workspace changed")
        if env._workspace is not None and os.path.lexists(env._workspace / ".run.bin"):
            problems.append("the payload outlived the run")
        if problems:
            failures.append(f"{kind}: {action[:120]!r}: {'; '.join(problems)}\n{obs[-500:]}")
        outcomes[info["run_reason"]] = outcomes.get(info["run_reason"], 0) + 1
        if info["run_reason"] == "error":  # the sandbox failed: say which program made it fail
            print(f"sandbox error after {kind}: {action[:200]!r}\n{obs[:300]}")
        if terminated or truncated:
            env.reset(options={"task": "iris"})
    return outcomes


def _victims(tmp_path):
    victim, absent = tmp_path / "victim.txt", tmp_path / "absent.txt"
    victim.write_text("precious\n")
    return str(victim), str(absent)


@pytest.mark.slow
@pytest.mark.skipif(not _works, reason=f"bubblewrap does not work here: {_why}")
def test_fuzz_mle_bubblewrap_2000_actions_no_exception(tmp_path):
    rng = random.Random(20261130)
    victim, absent = _victims(tmp_path)
    actions = cheap_actions(rng, 1900) + hostile_programs(rng, victim, absent, 110)
    rng.shuffle(actions)
    env = agentrl.make(
        "mle",
        sandbox="bubblewrap",
        time_budget_s=3,
        memory_mb=256,
        disk_mb=16,
        max_turns=10_000,
        stop_on_win=False,
    )
    failures: list[str] = []
    try:
        env.reset(options={"task": "iris"})
        outcomes = fuzz(env, actions, victim, absent, failures)
    finally:
        env.close()
        env.close()
    print(f"{len(actions)} actions, {len(failures)} failures, outcomes {outcomes}")
    assert len(actions) >= 2000 and failures == [], "\n\n".join(failures[:20])
    assert (
        outcomes.get("finished", 0) > 50
        and outcomes.get("syntax_error", 0) > 200
        and outcomes["no_program"] > 500
    )


@pytest.mark.slow
@pytest.mark.docker
def test_fuzz_mle_docker_hostile_programs_no_exception(tmp_path, docker_url):
    rng = random.Random(7)
    victim, absent = _victims(tmp_path)
    actions = hostile_programs(rng, victim, absent, 30) + cheap_actions(rng, 100)
    env = agentrl.make(
        "mle", sandbox="docker", docker_url=docker_url, time_budget_s=3, memory_mb=256, disk_mb=16,
        max_turns=10_000, stop_on_win=False,
    )  # fmt: skip
    failures: list[str] = []
    try:
        env.reset(options={"task": "iris"})
        outcomes = fuzz(env, actions, victim, absent, failures)
    finally:
        env.close()
    print(f"{len(actions)} actions, {len(failures)} failures, outcomes {outcomes}")
    assert failures == [], "\n\n".join(failures[:20])


def test_fuzz_grader_3000_grades_no_exception(tmp_path):
    """Random bytes, CSV-like text and near-valid submissions, under every metric: always a Grade."""
    rng = random.Random(3)
    task = builtin_task("iris")
    truth = read_answers(task.answer_bytes)
    ids = [line.split(",")[0] for line in task.answers.read_text().splitlines()[1:]]
    pieces = [
        "id",
        "target",
        ",",
        "\n",
        "\r\n",
        '"',
        "nan",
        "inf",
        "-1e400",
        "1e308",
        "0",
        "1",
        "2",
        "x",
        "\x00",
        " ",
    ]
    sub = tmp_path / "submission.csv"
    failures = []
    for i in range(600):
        mode = i % 4
        if mode == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        elif mode == 1:
            data = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 300))).encode()
        else:
            predictions = ["0", "1", "2", "3.0", "", "a", "inf", "-inf", "1e999", "1e300", "nan", "-0", " 1"]
            row_ids = [rng.choice([*ids, "999", "1.5", "", "nan"]) for _ in ids] if mode == 2 else ids
            # a few distinct values per submission, as real prediction columns have
            palette = rng.sample(predictions, rng.randrange(1, 4))
            rows = [f"{i},{rng.choice(palette)}" for i in row_ids]
            header = rng.choice(["id,target", "id,target", "target,id", "id,target,extra", "id;target"])
            data = (header + "\n" + "\n".join(rows[: rng.randrange(len(rows) - 2, len(rows) + 2)])).encode()
        sub.write_bytes(data)
        for metric in ("accuracy", "f1_macro", "rmse", "mae", "r2"):
            try:
                if metric == "accuracy":  # the whole path once: safe read, budget, parse
                    grade = grade_submission(sub, task.answers, GraderSpec(metric))
                else:
                    task.budget.check(data)
                    grade = grade_csv(data, truth, GraderSpec(metric))
                assert isinstance(grade.message, str) and (grade.valid == (grade.score is not None))
            except SubmissionRejected:
                pass
            except Exception:
                failures.append(f"{metric} {data[:80]!r}\n{traceback.format_exc()[-800:]}")
    assert failures == [], "\n\n".join(failures[:10])
