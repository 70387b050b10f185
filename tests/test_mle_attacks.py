"""agentrl/MLE-v0 against a hostile program: the host side of the workspace, the grading budget, and
forged milestones. Real sandboxes (bubblewrap, and Docker through a private daemon).

Every link target is a file this test made in its own tmp dir; nothing outside it is written.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import agentrl
from agentrl.environments.mle import env as env_module
from agentrl.environments.mle.grader import GraderSpec, SubmissionBudget, grade_submission
from agentrl.environments.mle.instrument import MILESTONES
from agentrl.environments.mle.milestones import tag
from agentrl.environments.mle.tasks import builtin_task
from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

_works, _why = BubblewrapSandbox.availability()
needs_bwrap = pytest.mark.skipif(not _works, reason=f"bubblewrap does not work here: {_why}")

ENV_FILES = ("solution.py", "submission.csv", ".run.bin")


def fenced(code: str) -> str:
    return f"```python\n{textwrap.dedent(code).strip()}\n```"


def _env_maker(request, backend: str):
    if backend == "bubblewrap" and not _works:
        pytest.skip(f"bubblewrap does not work here: {_why}")
    url = request.getfixturevalue("docker_url") if backend == "docker" else None
    made = []

    def make(**kw):
        kw = {"time_budget_s": 60, "memory_mb": 512, "max_turns": 100, "stop_on_win": False, **kw}
        env = agentrl.make("mle", sandbox=backend, docker_url=url, **kw)
        env.reset(options={"task": "iris"})
        made.append(env)
        return env

    return make, made


@pytest.fixture(params=["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
def make_env(request):
    """Makes MLE envs on the parametrised backend (closed at the end)."""
    make, made = _env_maker(request, request.param)
    yield make
    for env in made:
        env.close()


# -- 1. the host never follows a link or opens a special file in the workspace ------------------------


#: The sandbox itself never brings FIFOs, sockets or devices back from its quota filesystem, so the
#: host sees no submission at all; either way the host must not open one.
DROPPED = "did not write submission.csv"


def plants(victim: Path, absent: Path, host_dir: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """kind -> (code that puts one at `name`, what the grader may call a submission.csv of that kind)."""
    return {
        "symlink to a host file": (f"os.symlink({str(victim)!r}, name)", ("symbolic link",)),
        "symlink to a missing host path": (f"os.symlink({str(absent)!r}, name)", ("symbolic link",)),
        "symlink to a host directory": (f"os.symlink({str(host_dir)!r}, name)", ("symbolic link",)),
        "FIFO": ("os.mkfifo(name)", ("is a FIFO", DROPPED)),
        "unix socket": ("s = socket.socket(socket.AF_UNIX); s.bind(name); keep.append(s)", ("is a socket", DROPPED)),
        "directory": ("os.makedirs(name + '/sub'); open(name + '/sub/f', 'w').write('x')", ("is a directory",)),
        "hard link to a workspace file": (
            "open('keep.txt', 'w').write('mine\\n'); os.link('keep.txt', name)",
            ("missing column(s)",),
        ),
        "setuid copy of python": ("shutil.copy(sys.executable, name); os.chmod(name, 0o4755)", ("submission",)),
    }


def plant_program(code: str) -> str:
    return fenced(
        f"""
import os, shutil, socket, sys
keep = []
for name in {list(ENV_FILES)!r}:
    if os.path.lexists(name) and not os.path.isdir(name):
        os.remove(name)
{textwrap.indent(code, "    ")}
print("planted")
"""
    )


def test_host_never_follows_or_opens_special_files_in_the_workspace(make_env, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    absent = tmp_path / "absent.txt"
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    env = make_env()
    ws = env._workspace
    attacks = 0
    for kind, (code, grade_says) in plants(victim, absent, host_dir).items():
        obs, reward, terminated, truncated, info = env.step(plant_program(code))
        assert info["run_reason"] == "finished" and info["exit_code"] == 0, (kind, obs)
        assert any(says in info["submission_message"] for says in grade_says), (kind, info["submission_message"])
        attacks += len(ENV_FILES)
        # the next attempts write solution.py and .run.bin, read submission.csv and must run normally
        for _ in range(2 if kind == "directory" else 1):
            start = time.monotonic()
            obs, reward, terminated, truncated, info = env.step(fenced("print('still fine')"))
            assert time.monotonic() - start < 60, kind  # a FIFO never blocks the host
            assert info["run_reason"] == "finished" and info["exit_code"] == 0 and "still fine" in obs, (
                kind,
                obs,
            )
            assert info["submission_message"].startswith("no submission"), kind
        assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600, kind
        assert not absent.exists() and list(host_dir.iterdir()) == [], kind
        assert sorted(p.name for p in tmp_path.iterdir()) == before, kind
        solution = ws / "solution.py"
        assert stat.S_ISREG(solution.lstat().st_mode) and solution.read_text() == "print('still fine')\n", (
            kind
        )
        assert not solution.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), kind
        assert not os.path.lexists(ws / ".run.bin"), kind
        if kind.startswith("hard link"):
            assert (ws / "keep.txt").read_text() == "mine\n"  # nothing was written through the link
    assert attacks == 24


DEEP = "here = os.getcwd(); os.mkdir(name); os.chdir(name)\nfor _ in range(1100):\n    os.mkdir('d'); os.chdir('d')\nos.chdir(here)"


@pytest.mark.parametrize(
    "backend",
    [
        "bubblewrap",
        pytest.param("docker", marks=pytest.mark.docker),
    ],
)
def test_trees_deeper_than_the_recursion_limit_named_like_the_envs_files(request, backend):
    """Deeper than shutil.rmtree's recursion: the host falls back to rm -rf and the name is free again."""
    make, made = _env_maker(request, backend)
    try:
        env = make()
        obs, *_, info = env.step(plant_program(DEEP))
        assert info["run_reason"] == "finished" and info["exit_code"] == 0, obs
        assert "is a directory" in info["submission_message"]
        for _ in range(2):
            obs, *_, info = env.step(fenced("print('still fine')"))
            assert info["run_reason"] == "finished" and "still fine" in obs, obs
        assert sorted(p.name for p in env._workspace.iterdir()) == ["solution.py"]
    finally:
        for env in made:
            env.close()


@needs_bwrap
def test_a_program_that_empties_or_locks_its_workspace_does_not_break_the_next_attempt(tmp_path):
    env = agentrl.make("mle", sandbox="bubblewrap", time_budget_s=30, memory_mb=512, max_turns=10)
    try:
        env.reset(options={"task": "iris"})
        ws = env._workspace
        wipe = "import os, shutil\nfor n in os.listdir('.'):\n    shutil.rmtree(n) if os.path.isdir(n) else os.remove(n)\n"
        _, _, _, _, info = env.step(fenced(wipe + "os.chmod('.', 0o500)\nprint(os.listdir('.'))"))
        assert info["run_reason"] in ("finished",) and ws.is_dir()
        _, _, _, _, info = env.step(fenced("print('again')"))
        assert info["run_reason"] == "finished" and info["exit_code"] == 0
    finally:
        env.close()
    assert not ws.exists()


# -- 2. grading within a budget of the answers' size -------------------------------------------------


def _iris():
    task = builtin_task("iris")
    return task, task.answers, GraderSpec("accuracy")


def test_submission_budget_follows_the_answers():
    answers = b"id,target\n" + b"".join(b"%d,%d\n" % (i, i % 3) for i in range(100, 138))
    budget = SubmissionBudget.for_answers(answers)
    assert budget.max_bytes == 1 << 20  # 8 x 290 bytes is below the 1 MiB floor
    assert budget.answer_rows == 38 and budget.max_lines == 38 + 1 + 16
    assert budget.max_line_bytes == 4096 and budget.max_columns == 2 * 2 + 8
    big = b"id,target\n" + b"".join(b"%d,0.123456\n" % i for i in range(300_000))
    assert SubmissionBudget.for_answers(big).max_bytes == 8 * len(big)


def test_oversized_and_special_submissions_are_refused_before_parsing(tmp_path):
    task, answers, spec = _iris()
    sub = tmp_path / "submission.csv"
    cases = []
    with open(sub, "wb") as f:  # the 510 MB of `1,1` rows, as a sparse file of that size
        f.truncate(510_000_000)
    cases.append(
        ("submission too large: submission.csv has 510,000,000 bytes, at most 1,048,576 for this task", sub)
    )
    header = tmp_path / "header.csv"  # the 44 MB header with 5 million columns
    header.write_bytes(b",".join(b"c%07d" % i for i in range(5_000_000))[:44_000_000])
    cases.append(
        ("submission too large: header.csv has 44,000,000 bytes, at most 1,048,576 for this task", header)
    )
    rows = tmp_path / "rows.csv"  # within the bytes, far too many rows
    rows.write_bytes(b"id,target\n" + b"1,1\n" * 200_000)
    cases.append(("submission too large: rows.csv has 200,001 lines, the task has 38 test rows", rows))
    line = tmp_path / "line.csv"  # one 1 MB field
    line.write_bytes(b"id,target\n1," + b"9" * 1_000_000 + b"\n")
    cases.append(("submission too large: line.csv has a line of 1,000,002 bytes, at most 4,096", line))
    columns = tmp_path / "columns.csv"
    columns.write_bytes(b",".join(b"c%d" % i for i in range(800)) + b"\n")
    cases.append(("submission too large: columns.csv has 800 columns in its header, at most 12", columns))
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    cases.append(("malformed submission: fifo.csv is a FIFO, not a file", fifo))
    directory = tmp_path / "dir.csv"
    directory.mkdir()
    cases.append(("malformed submission: dir.csv is a directory, not a file", directory))
    link = tmp_path / "link.csv"
    link.symlink_to(answers)
    cases.append(("malformed submission: link.csv is a symbolic link, not a file", link))
    for expected, path in cases:
        start = time.monotonic()
        for grade in (grade_submission(path, answers, spec), task.grade(path)):
            assert not grade.valid and grade.message == expected, grade
        assert time.monotonic() - start < 10, expected


_RSS_PROBE = """
import json, re, sys
from pathlib import Path
import pandas  # imported before the baseline: the grader's own cost is what is measured
from agentrl.environments.mle.grader import GraderSpec, grade_submission

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

open("/proc/self/clear_refs", "w").write("5")  # restart this process's peak-RSS record (VmHWM) here
base = status("VmRSS")
grade = grade_submission(Path(sys.argv[1]), Path(sys.argv[2]), GraderSpec(sys.argv[3]))
peak = status("VmHWM")
print(json.dumps({"valid": grade.valid, "message": grade.message, "delta_mb": round((peak - base) / 1024, 1)}))
"""


def _grading_rss(submission: Path, answers: Path, metric: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(submission), str(answers), metric],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_host_memory_of_grading_stays_a_small_multiple_of_the_budget(tmp_path):
    """Measured in a fresh process per case (benchmarks/mle_grading_memory.py has the full-size figures)."""
    answers = tmp_path / "answers.csv"  # a 100,000-row task: 1.4 MB of answers, an 11.5 MB budget
    answers.write_bytes(b"id,target\n" + b"".join(b"%d,0.123456\n" % i for i in range(100_000)))
    budget = SubmissionBudget.for_answers(answers.read_bytes())
    width = min(budget.max_line_bytes, budget.max_bytes // budget.max_lines) - 1
    largest = tmp_path / "largest.csv"
    with open(largest, "wb") as f:
        f.write(b"id,target\n")
        for i in range(100_000):
            head = b"%d,0." % i
            f.write(head + b"1" * (width - len(head)) + b"\n")
    assert budget.max_bytes - 100_000 * 2 < largest.stat().st_size <= budget.max_bytes
    result = _grading_rss(largest, answers, "rmse")
    assert result["valid"] and result["message"] == "rmse = 0.0123"
    assert result["delta_mb"] < 6 * budget.max_bytes / 2**20 + 30, result
    iris = builtin_task("iris").answers
    flood = tmp_path / "flood.csv"  # the 510 MB: refused on its size, never read
    with open(flood, "wb") as f:
        f.truncate(510_000_000)
    result = _grading_rss(flood, iris, "accuracy")
    assert result["message"].startswith("submission too large: flood.csv has 510,000,000 bytes")
    assert result["delta_mb"] < 5, result


@needs_bwrap
def test_an_oversized_submission_is_a_clear_observation():
    env = agentrl.make("mle", sandbox="bubblewrap", time_budget_s=30, memory_mb=512)
    try:
        env.reset(options={"task": "iris"})
        obs, reward, _, _, info = env.step(
            fenced("open('submission.csv', 'w').write('id,target\\n' + '1,1\\n' * 600_000)")
        )
    finally:
        env.close()
    assert "Submission: submission too large: submission.csv has 2,400,010 bytes" in obs
    assert not info["submission_valid"] and reward == 0.0


# -- 3. milestones cannot be forged -----------------------------------------------------------------

#: Code that calls every milestone's typical function, in a branch that never runs.
DEAD_BRANCH = """
if len(sys.argv) > 99:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    df = pd.read_csv('/data/train.csv')
    model = LogisticRegression()
    model.fit(df, df)
    predictions = model.predict(df)
    df.to_csv('submission.csv')
"""

FORGERIES = {
    # the issue's attack: the milestone statements' strings, printed from the code objects
    "print the code objects' constants": """
def walk(code):
    for const in code.co_consts:
        if isinstance(const, str):
            print(const)
        elif hasattr(const, 'co_consts'):
            walk(const)
walk(sys._getframe().f_code)
""",
    "scan the heap with gc": """
import gc
found = []
for scan in (gc.get_objects, lambda: gc.get_referrers(sys.audit), lambda: gc.get_referents(sys.modules)):
    try:
        found.extend(scan())
    except RuntimeError as exc:
        print('refused:', exc)
forge(found)
""",
    "read process memory": """
import ctypes, subprocess
def tryit(label, fn):
    try:
        print(label, 'read', len(fn()))
    except (OSError, RuntimeError) as exc:
        print(label, 'refused:', type(exc).__name__)
tryit('direct', lambda: open('/proc/self/mem', 'rb').read(16))
os.symlink('/proc/self/mem', '/tmp/m')
tmp = os.open('/tmp', os.O_RDONLY)
tryit('link behind a directory fd', lambda: os.read(os.open('m', os.O_RDONLY, dir_fd=tmp), 16))
tryit('ctypes', lambda: ctypes.string_at(id(sys.audit), 64))
tryit('cmdline', lambda: open('/proc/self/cmdline', 'rb').read())
child = subprocess.run([sys.executable, '-c', f"print(len(open('/proc/{os.getpid()}/mem', 'rb').read(1)))"],
                       capture_output=True, text=True)
print('child', child.returncode, child.stderr.strip().splitlines()[-1:])
""",
    "call the emitter for every milestone": """
names = ['imports', 'data_loaded', 'model_defined', 'model_trained', 'predictions_made', 'submission_written']
emitters = [v for k, v in globals().items() if ' ' in k]
for _ in range(3):
    for name in names:
        sys.audit('agentrl.milestone', name)
        for emit in emitters:
            emit('agentrl.milestone', name)
if len(sys.argv) > 99:
    for name in names:
        sys.audit('agentrl.milestone', name)
def relay(*args):
    for name in names:
        sys.audit('agentrl.milestone', name)
for k in [k for k in globals() if ' ' in k]:
    globals()[k] = relay
relay()
""",
    "monkeypatch print and sys.audit": """
import builtins
real_print = builtins.print
def fake_print(*args, **kwargs):
    for name in ['data_loaded', 'model_trained', 'submission_written']:
        real_print(f'@@agentrl-milestone {name} ' + '0' * 32 + '@@')
        real_print(f'@@milestone 0123456789abcdef {name}@@')
    real_print(*args, **kwargs)
builtins.print = fake_print
sys.audit = lambda *a: real_print('audit', a)
print('hello')
""",
    "jump into the dead branch with a trace function": """
def tracer(frame, event, arg):
    if event == 'line' and frame.f_code.co_filename == 'solution.py' and frame.f_lineno == 4:
        frame.f_lineno = 5
    return tracer
try:
    sys.settrace(tracer)
    sys._getframe().f_trace = tracer
except RuntimeError as exc:
    print('refused:', exc)
""",
    "steal frames with a signal handler": """
import signal
seen = []
def grab(signum, frame):
    while frame is not None:
        seen.extend(frame.f_locals.values())
        frame = frame.f_back
signal.signal(signal.SIGALRM, grab)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
for i in range(3000):
    sys.audit('agentrl.milestone', 'model_trained')
    os.stat('.')
signal.setitimer(signal.ITIMER_REAL, 0, 0)
inner = []
for value in seen:
    inner.append(value)
    if callable(value) and getattr(value, '__closure__', None):
        inner.extend(c.cell_contents for c in value.__closure__ if c.cell_contents is not None)
forge(inner)
""",
}

#: Given a list of objects, forge markers with any HMAC-like object among them (the attacker's goal).
FORGE = """
def forge(objects):
    names = ['imports', 'data_loaded', 'model_defined', 'model_trained', 'predictions_made', 'submission_written']
    macs = [o for o in objects if hasattr(o, 'copy') and hasattr(o, 'hexdigest')]
    print('hmac-like objects found:', len(macs))
    for mac in macs:
        for name in names:
            t = mac.copy(); t.update(name.encode())
            print(f'@@agentrl-milestone {name} {t.hexdigest()[:32]}@@')
"""


def forgery(body: str) -> str:
    return fenced("import os, sys\n" + FORGE + DEAD_BRANCH + textwrap.dedent(body))


def test_milestones_cannot_be_forged(make_env, monkeypatch):
    """Each program reaches one milestone for real (its imports) and tries to forge the other five."""
    keys = []

    def recording_new_key():
        keys.append(os.urandom(32))
        return keys[-1]

    monkeypatch.setattr(env_module, "new_key", recording_new_key)
    env = make_env()
    escapes, seen = {}, {}
    for name, body in FORGERIES.items():
        obs, reward, _, _, info = env.step(forgery(body))
        seen[name] = obs
        assert info["run_reason"] == "finished" and info["exit_code"] == 0, (name, obs)
        if info["milestones"] != ["imports"]:
            escapes[name] = info["milestones"]
        assert reward == pytest.approx(0.1), (name, obs)
        assert not any(tag(keys[-1], milestone) in obs for milestone in MILESTONES), name
        assert not re.search(r"@@agentrl-milestone [a-z_]+ [0-9a-f]{32}@@", obs), name
    assert escapes == {}
    # what the programs saw: refusals, and no key material (Landlock refuses /proc reads here)
    memory = seen["read process memory"]
    for label in (
        "direct refused",
        "link behind a directory fd refused",
        "ctypes refused",
        "cmdline refused",
    ):
        assert label in memory, memory
    assert "child 1" in memory and "Permission denied" in memory
    assert seen["scan the heap with gc"].count("refused: gc.get_") == 3
    assert "hmac-like objects found: 0" in seen["scan the heap with gc"]
    assert "hmac-like objects found: 0" in seen["steal frames with a signal handler"]
    assert "refused: sys.settrace is not allowed" in seen["jump into the dead branch with a trace function"]


CHEAP = """import numpy as np
test = np.loadtxt('/data/test.csv', delimiter=',', skiprows=1)
ids = test[:, 0].astype(int)
def never_called(model):
    model.fit(test, ids)
    return model.predict(test)
def write(rows):
    np.savetxt('submission.csv', rows, fmt='%d', delimiter=',', header='id,target', comments='')
for _ in range(1000):
    write(np.c_[ids, np.zeros_like(ids)])
"""


def test_genuine_milestones_count_once_each_and_markers_of_another_run_do_not(make_env, monkeypatch):
    keys = []

    def recording_new_key():
        keys.append(os.urandom(32))
        return keys[-1]

    monkeypatch.setattr(env_module, "new_key", recording_new_key)
    env = make_env()
    _, reward, _, _, info = env.step(fenced(CHEAP))
    # the milestones inside a function never called do not count; the one in a function called
    # 1000 times counts once
    assert info["milestones"] == ["imports", "data_loaded", "submission_written"], info
    assert info["submission_valid"] and reward == pytest.approx(info["normalized_score"] + 0.3)
    replay = "\n".join(f"print('@@agentrl-milestone {name} {tag(keys[0], name)}@@')" for name in MILESTONES)
    _, reward, _, _, info = env.step(fenced("import os\n" + replay))
    assert info["milestones"] == ["imports"] and reward == pytest.approx(0.1)


@needs_bwrap
def test_modules_planted_in_the_workspace_do_not_reach_the_loader():
    env = agentrl.make("mle", sandbox="bubblewrap", time_budget_s=30, memory_mb=512, max_turns=10)
    plant = "\n".join(
        f"open('{module}.py', 'w').write('print(\"SHADOW {module}\")')"
        for module in ("hmac", "dis", "stat", "traceback", "ctypes", "marshal", "hashlib", "_queue")
    )
    try:
        env.reset(options={"task": "iris"})
        env.step(fenced(plant))
        obs, reward, _, _, info = env.step(fenced("import os, sys\n" + DEAD_BRANCH + "print('ran')"))
    finally:
        env.close()
    assert "ran" in obs and "SHADOW" not in obs
    assert info["milestones"] == ["imports"] and reward == pytest.approx(0.1)


def test_disk_limit_is_a_failed_run_named_in_the_observation():
    """A sandbox with a per-workspace quota ends such a run with reason "disk_limit" (the sandbox package
    defines it); the env compares the string, so this holds before and after that reason exists."""
    from agentrl.sandboxes import RunResult

    class QuotaSandbox:
        def run(self, command, *, workspace, limits):
            return RunResult(None, "writing\n", "", 1.5, "disk_limit", "bubblewrap")

        def close(self):
            pass

    env = agentrl.make("mle", sandbox="bubblewrap", disk_mb=64, time_budget_s=30)
    try:
        env.reset(options={"task": "iris"})
        env._sandbox, env._sandbox_data = QuotaSandbox(), env._task.public_dir
        obs, reward, terminated, truncated, info = env.step(fenced("import os\nprint('x')"))
    finally:
        env.close()
    assert info["run_reason"] == "disk_limit" and reward == -10.0 and not terminated
    assert "it wrote more than the workspace's disk quota (64 MB" in obs
    assert info["reward_breakdown"] == {"score": 0.0, "milestones": 0.0, "penalty": -10.0}
