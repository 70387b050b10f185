"""agentrl/MLE-v0: task folders, grader, instrumentation (LM accepted / refused / AST fallback), episodes.

Programs run in the bubblewrap sandbox (the Docker backend is covered by test_sandbox.py); the
expert solution runs through it and must earn what scikit-learn's own metric says.
"""

from __future__ import annotations

import ast
import marshal
import re
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import agentrl
from agentrl.environments.mle.grader import GraderSpec, compute_metric, grade_submission, normalized_score
from agentrl.environments.mle.instrument import (
    CallableInstrumenter,
    Instrumenter,
    ast_instrument,
    extract_code,
    instrument,
    marker,
    only_prints_added,
)
from agentrl.environments.mle.milestones import EMITTER, compile_program, milestones_seen, strip_markers, tag
from agentrl.environments.mle.tasks import BUILTIN, builtin_task, expert_program, load_mlebench
from agentrl.sandboxes.bubblewrap import BubblewrapSandbox

_works, _why = BubblewrapSandbox.availability()
needs_sandbox = pytest.mark.skipif(not _works, reason=f"bubblewrap does not work here: {_why}")


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def make_env(**kw):
    return agentrl.make("mle", **{"sandbox": "bubblewrap", "time_budget_s": 60, "memory_mb": 1024, **kw})


# -- grader -----------------------------------------------------------------------------------------


def test_metrics_match_scikit_learn():
    from sklearn import metrics

    rng = np.random.default_rng(0)
    labels_true, labels_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y_true, y_pred = rng.normal(size=200), rng.normal(size=200)
    assert compute_metric("accuracy", labels_true, labels_pred) == pytest.approx(
        metrics.accuracy_score(labels_true, labels_pred)
    )
    assert compute_metric("f1_macro", labels_true, labels_pred) == pytest.approx(
        metrics.f1_score(labels_true, labels_pred, average="macro")
    )
    assert compute_metric("rmse", y_true, y_pred) == pytest.approx(
        np.sqrt(metrics.mean_squared_error(y_true, y_pred))
    )
    assert compute_metric("mae", y_true, y_pred) == pytest.approx(metrics.mean_absolute_error(y_true, y_pred))
    assert compute_metric("r2", y_true, y_pred) == pytest.approx(metrics.r2_score(y_true, y_pred))


def test_grader_rejects_bad_submissions_with_a_reason(tmp_path):
    answers = tmp_path / "answers.csv"
    pd.DataFrame({"id": [10, 11, 12], "target": [0, 1, 1]}).to_csv(answers, index=False)
    spec = GraderSpec("accuracy")
    cases = {
        "id,target\n10,0\n11,1\n12,0\n": (True, "accuracy = 0.6667"),
        "id,target\n12,1\n10,0.0\n11,1\n": (True, "accuracy = 1.0000"),  # any row order, 0.0 is class 0
        # inf is no class (an IntCastingNaNError out of step() before; found by the fuzz)
        "id,target\n10,inf\n11,1\n12,1.0\n": (True, "accuracy = 0.6667"),
        "id,target\n10,1e300\n11,1\n12,a\n": (True, "accuracy = 0.3333"),
        "a,b\n1,2\n": (False, "missing column(s) id, target"),
        "id,target\n10,0\n11,1\n": (False, "2 rows, expected 3"),
        "id,target\n10,0\n10,1\n12,1\n": (False, "duplicated ids"),
        "id,target\n10,0\n11,1\n99,1\n": (False, "not the test ids"),
        "id,target\n10,0\n11,\n12,1\n": (False, "1 missing prediction"),
        "": (False, "cannot read it as CSV"),
    }
    for text, (valid, message) in cases.items():
        sub = tmp_path / "submission.csv"
        sub.write_text(text)
        grade = grade_submission(sub, answers, spec)
        assert grade.valid is valid and message in grade.message, (text, grade)
    missing = grade_submission(tmp_path / "nothing.csv", answers, spec)
    assert not missing.valid and missing.message.startswith("no submission")
    sub.write_text("id,target\n10,a\n11,1\n12,1\n")
    assert "finite numbers" in grade_submission(sub, answers, GraderSpec("rmse")).message


def test_normalized_score():
    assert normalized_score(GraderSpec("accuracy"), 0.97, baseline=0.3) == 0.97
    # rmse: fraction of the constant predictor's error removed
    assert normalized_score(GraderSpec("rmse"), 0.5, baseline=np.sqrt(1.25)) == pytest.approx(
        1 - 0.5 / np.sqrt(1.25)
    )
    assert normalized_score(GraderSpec("rmse"), 3.0, baseline=1.0) == 0.0


def test_builtin_task_folder_layout_and_fixed_split():
    from sklearn.datasets import load_iris

    task = builtin_task("iris")
    public = task.public_dir
    assert sorted(p.name for p in public.iterdir()) == [
        "description.md",
        "sample_submission.csv",
        "test.csv",
        "train.csv",
    ]
    train, test = pd.read_csv(public / "train.csv"), pd.read_csv(public / "test.csv")
    answers = pd.read_csv(task.answers)
    assert (len(train), len(test)) == (112, 38)  # 150 rows, test_size=0.25 -> ceil(37.5) = 38
    assert "target" not in test.columns and list(answers.columns) == ["id", "target"]
    assert set(train["id"]).isdisjoint(test["id"]) and list(answers["id"]) == list(test["id"])
    assert sorted(answers["target"].value_counts()) == [12, 13, 13]  # stratified 50/50/50
    # together, the rows are exactly scikit-learn's data set
    iris = load_iris()
    features = [c for c in train.columns if c not in ("id", "target")]
    ours = np.vstack([
        np.c_[train[features].to_numpy(), train["target"].to_numpy()],
        np.c_[test[features].to_numpy(), answers["target"].to_numpy()],
    ])  # fmt: skip
    reference = np.c_[iris.data, iris.target]
    assert np.array_equal(ours[np.lexsort(ours.T)], reference[np.lexsort(reference.T)])
    # the sample submission predicts the train majority class (38 of 112 rows), which has 12 of the 38 test rows
    assert train["target"].value_counts().max() == 38
    assert task.grader.metric == "accuracy" and task.baseline_score() == pytest.approx(12 / 38)
    assert builtin_task("iris").root == task.root  # cached, not rebuilt
    with pytest.raises(ValueError, match="unknown built-in MLE task 'nope'"):
        builtin_task("nope")


# -- instrumentation ------------------------------------------------------------------------------


PROGRAM = expert_program("classification")


def honest_lm(prompt: str) -> str:
    """Adds three milestone prints, with the statement's indentation, and changes nothing else."""
    token = re.search(r"@@milestone ([0-9a-f]+) imports@@", prompt).group(1)
    program = extract_code(prompt.split("Reply with the complete program", 1)[1])
    after = {
        "train = pd.read_csv": "data_loaded",
        "model.fit(": "model_trained",
        ".to_csv(": "submission_written",
    }
    out = []
    for line in program.splitlines():
        out.append(line)
        for needle, name in after.items():
            if needle in line:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}print({marker(token, name)!r}, flush=True)")
    return "Sure:\n```python\n" + "\n".join(out) + "\n```"


def tampering_lm(prompt: str) -> str:
    """Instruments honestly but also 'improves' the model: must be refused."""
    return honest_lm(prompt).replace("C=10.0", "C=100.0")


def test_lm_output_accepted_only_when_it_adds_prints():
    token = "a1b2c3"
    good = instrument(PROGRAM, token, CallableInstrumenter(honest_lm))
    assert good.method == "lm" and "3 milestone print(s) added" in good.note
    assert good.source.count("@@milestone a1b2c3") == 3
    bad = instrument(PROGRAM, token, CallableInstrumenter(tampering_lm))
    assert bad.method == "ast" and "changes more than print calls" in bad.note
    assert "C=10.0" in bad.source and "C=100.0" not in bad.source
    assert bad.source.count("@@milestone a1b2c3") == 6  # the fallback's own prints

    def drops_a_print(prompt: str) -> str:
        dropped = honest_lm(prompt).replace('print("wrote", len(predictions), "predictions")', "")
        assert dropped != honest_lm(prompt)
        return dropped

    def crashes(prompt: str) -> str:
        raise ConnectionError("server down")

    assert (
        "changes more than print calls"
        in instrument(PROGRAM, token, CallableInstrumenter(drops_a_print)).note
    )
    failed = instrument(PROGRAM, token, CallableInstrumenter(crashes))
    assert failed.method == "ast" and "ConnectionError" in failed.note
    assert "no code block" in instrument(PROGRAM, token, CallableInstrumenter(lambda p: "I refuse")).note
    assert isinstance(CallableInstrumenter(honest_lm), Instrumenter)


def test_verifier_ignores_prints_with_another_token_or_extra_arguments():
    base = "import os\nx = 1\n"
    ok, _ = only_prints_added(
        base, f"import os\nprint({marker('aa11', 'imports')!r}, flush=True)\nx = 1\n", "aa11"
    )
    assert ok
    ok, why = only_prints_added(base, f"import os\nprint({marker('bb22', 'imports')!r})\nx = 1\n", "aa11")
    assert not ok  # a print with another token is a change like any other
    ok, why = only_prints_added(
        base, f"import os\nprint({marker('aa11', 'imports')!r}, x := 2)\nx = 1\n", "aa11"
    )
    assert not ok
    assert only_prints_added(base, base, "aa11") == (False, "no milestone print was added")


def test_ast_instrumenter_places_each_milestone_after_its_statement():
    token = "c0ffee"
    source = ast_instrument(PROGRAM, token)
    assert only_prints_added(PROGRAM, source, token)[0]
    lines = source.splitlines()

    def after(name: str) -> str:
        return lines[lines.index(f"print({marker(token, name)!r}, flush=True)") - 1]

    assert after("imports") == "from sklearn.svm import SVC"
    assert after("data_loaded").startswith("train = pd.read_csv(")
    assert after("model_defined").startswith("model = make_pipeline(")
    assert after("model_trained").startswith("model.fit(")
    assert after("predictions_made").startswith("predictions = model.predict(")
    assert ".to_csv(" in after("submission_written")
    nested = "import pandas as pd\ndef main():\n    df = pd.read_csv('x')\n    return LogisticRegression().fit(df, df)\nmain()\n"
    out = ast_instrument(nested, token)
    # the print for a milestone reached on a `return` line goes before it, inside the function
    assert f"    print({marker(token, 'model_trained')!r}, flush=True)\n    return" in out
    assert only_prints_added(nested, out, token)[0]


def test_milestone_parser_counts_each_once_and_only_with_the_runs_tag():
    key, other = b"k" * 32, b"o" * 32

    def line(k: bytes, name: str) -> str:
        return f"@@agentrl-milestone {name} {tag(k, name)}@@\n"

    out = (
        line(key, "imports") + "hello\n" + line(key, "imports") + line(other, "model_trained")
        + marker("t1", "predictions_made") + "\n" + line(key, "model_trained")
        + f"@@agentrl-milestone data_loaded {'0' * 32}@@\n"
    )  # fmt: skip
    assert milestones_seen(out, key) == ["imports", "model_trained"]
    assert strip_markers(out) == "hello\n"
    # the tag is HMAC-SHA256(key, name), first 128 bits, as an independent implementation gives it
    import hashlib
    import hmac as hmac_module

    assert tag(key, "imports") == hmac_module.new(key, b"imports", hashlib.sha256).hexdigest()[:32]


# -- the env --------------------------------------------------------------------------------------


def test_registered_and_passes_check_env():
    entry = agentrl.registry.resolve("mle")
    assert entry.id == "agentrl/MLE-v0" and entry.extra == "mle"
    env = make_env()
    assert env.task_ids("train") == ["digits", "wine", "diabetes"] and env.task_ids("mlebench") == []
    agentrl.check_env(env)


@needs_sandbox
def test_expert_with_honest_lm_earns_the_grader_score_plus_milestones():
    from sklearn.metrics import accuracy_score

    env = make_env(instrumenter=CallableInstrumenter(honest_lm))
    try:
        obs, info = env.reset(options={"task": "iris"})
        assert "accuracy" in obs and info["baseline_metric"] == pytest.approx(12 / 38)
        obs, reward, terminated, truncated, info = env.step(env.expert_action())
        answers = pd.read_csv(builtin_task("iris").answers)
        submission = pd.read_csv(env._workspace / "submission.csv").set_index("id").loc[answers["id"]]
        expected = accuracy_score(answers["target"], submission["target"])
    finally:
        env.close()
    assert info["instrumentation"] == "lm", info["instrumentation_note"]
    assert info["milestones"] == ["data_loaded", "model_trained", "submission_written"]
    assert info["raw_metric"] == pytest.approx(expected) and expected >= 0.9
    assert reward == pytest.approx(expected + 0.3)
    assert info["reward_breakdown"] == {"score": pytest.approx(expected), "milestones": 0.3, "penalty": 0.0}
    assert info["won"] and info["progress"] == 1.0 and terminated and not truncated
    assert 0 < info["execution_seconds"] < 60 and "@@milestone" not in obs


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("task", [t for t in BUILTIN if t != "iris"])
def test_expert_solves_every_builtin_task(task):
    env = make_env()
    try:
        env.reset(options={"task": task})
        _, reward, terminated, _, info = env.step(env.expert_action())
    finally:
        env.close()
    assert info["run_reason"] == "finished" and info["submission_valid"], info
    assert len(info["milestones"]) == 6 and info["instrumentation"] == "ast"
    assert reward == pytest.approx(info["normalized_score"] + 0.6)
    assert info["won"] and terminated


CHEAP = """import numpy as np
test = np.loadtxt('/data/test.csv', delimiter=',', skiprows=1)
ids = test[:, 0].astype(int)
np.savetxt('submission.csv', np.c_[ids, np.zeros_like(ids)], fmt='%d', delimiter=',', header='id,target', comments='')
"""


@needs_sandbox
def test_tampering_lm_falls_back_to_ast_and_partial_credit_adds_up():
    env = make_env(
        instrumenter=CallableInstrumenter(lambda p: honest_lm(p).replace("zeros_like", "ones_like"))
    )
    try:
        env.reset(options={"task": "iris"})
        obs, reward, terminated, _, info = env.step(fenced(CHEAP))
    finally:
        env.close()
    answers = pd.read_csv(builtin_task("iris").answers)
    expected = float((answers["target"] == 0).mean())  # everything predicted as class 0
    assert info["instrumentation"] == "ast" and "refused" in info["instrumentation_note"]
    assert info["milestones"] == ["imports", "data_loaded", "submission_written"]
    assert info["raw_metric"] == pytest.approx(expected)
    assert reward == pytest.approx(expected + 0.3) and not terminated and not info["won"]
    assert info["progress"] == pytest.approx(expected / 0.9)


@needs_sandbox
def test_bad_programs_are_well_defined_outcomes():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    env = make_env(time_budget_s=5, memory_mb=128, max_turns=20, stop_on_win=False)
    cases = [
        # (action, reward, invalid, run_reason, text in the observation)
        ("I would train a random forest.", 0.0, True, "no_program", "no program found"),
        (fenced("def f(:\n    pass"), -10.0, True, "syntax_error", "does not parse"),
        (fenced("x = 1\0"), -10.0, True, "syntax_error", "does not parse"),
        (fenced("x = 1"), 0.0, False, "finished", "did not write submission.csv"),
        (fenced("open('submission.csv', 'w').write('a,b\\n1,2\\n')"), 0.0, False, "finished", "missing column(s) id, target"),
        (fenced("import os\nx = 1\nraise RuntimeError('boom')"), -9.9, False, "finished",
         'File "solution.py", line 3, in <module>\n    raise RuntimeError(\'boom\')\nRuntimeError: boom'),
        (fenced("while True:\n    pass"), -10.0, False, "timeout", "stopped at the time budget (5 s)"),
        (fenced("while True:\n    print('x' * 1000)"), -10.0, False, "output_limit", "more than the output limit"),
        (fenced("x = bytearray(1 << 30)"), -10.0, False, "out_of_memory", "memory limit (128 MB)"),
        (fenced(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"), -9.9, False, "finished",
         "ConnectionRefusedError"),
        (fenced("print(open('/root/.bashrc').read())"), -10.0, False, "finished", "FileNotFoundError"),
        (fenced(f"print({marker('0123456789ab', 'model_trained')!r})"), 0.0, False, "finished", "Milestones reached (0/6)"),
        (fenced(f"import os\nos.symlink({str(builtin_task('iris').answers)!r}, 'submission.csv')"), 0.1, False, "finished",
         "symbolic link"),
    ]  # fmt: skip
    try:
        env.reset(options={"task": "iris"})
        for action, reward_expected, invalid, run_reason, text in cases:
            obs, reward, terminated, truncated, info = env.step(action)
            assert (reward, info["invalid_action"], info["run_reason"]) == (
                pytest.approx(reward_expected),
                invalid,
                run_reason,
            ), (action, obs)
            assert text in obs, (action, obs)
            assert not terminated and not truncated and info["submission_valid"] is not True
            if run_reason == "timeout":
                assert 5.0 <= info["execution_seconds"] < 10.0
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
        env.close()
    assert "@@milestone" not in obs


@needs_sandbox
def test_mlebench_loader_grades_a_prepared_competition(tmp_path):
    comp = tmp_path / "toy-regression"
    public, private = comp / "prepared" / "public", comp / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    (public / "description.md").write_text("# Toy regression\nPredict y.\n")
    pd.DataFrame({"id": [1, 2, 3, 4], "x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0]}).to_csv(
        public / "train.csv", index=False
    )
    pd.DataFrame({"id": [5, 6, 7, 8], "x": [1.0, 2.0, 3.0, 4.0]}).to_csv(public / "test.csv", index=False)
    pd.DataFrame({"id": [5, 6, 7, 8], "y": [2.5] * 4}).to_csv(public / "sample_submission.csv", index=False)
    pd.DataFrame({"id": [5, 6, 7, 8], "y": [1.0, 2.0, 3.0, 4.0]}).to_csv(private / "test.csv", index=False)
    GraderSpec("rmse", target_column="y").save(comp / "grader.json")
    (tmp_path / "unprepared").mkdir()

    env = make_env(mlebench_dir=str(tmp_path))
    try:
        assert env.task_ids("mlebench") == ["mlebench/toy-regression"]
        obs, info = env.reset(options={"task": "mlebench/toy-regression"})
        assert obs.startswith("# Toy regression") and info["baseline_metric"] == pytest.approx(np.sqrt(1.25))
        program = "open('submission.csv', 'w').write('id,y\\n5,1\\n6,2\\n7,3\\n8,5\\n')"
        _, reward, _, _, info = env.step(fenced(program))
        assert env.expert_action() is None
    finally:
        env.close()
    assert info["raw_metric"] == pytest.approx(0.5)  # rmse of errors (0, 0, 0, 1)
    assert reward == pytest.approx(1 - 0.5 / np.sqrt(1.25))  # no milestones, no penalty
    (comp / "grader.json").unlink()
    with pytest.raises(ValueError, match="needs the mlebench package"):
        load_mlebench(tmp_path, "toy-regression")
    with pytest.raises(ValueError, match="not a prepared MLE-bench competition"):
        load_mlebench(tmp_path, "unprepared")


def test_unknown_task_and_bad_arguments_are_clear_errors():
    env = make_env()
    with pytest.raises(ValueError, match="unknown MLE task 'nope'"):
        env.reset(options={"task": "nope"})
    with pytest.raises(ValueError, match="needs mlebench_dir"):
        env.reset(options={"task": "mlebench/x"})
    env.close()
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        make_env(time_budget_s=0)


def test_expert_program_files_exist_for_every_builtin_task():
    for name in BUILTIN:
        task = builtin_task(name)
        assert task.expert and "/data/train.csv" in task.expert and Path(task.answers).is_file()


def test_policy_instrumenter_adapts_a_token_level_policy():
    """A policy in the agentrl.policies shape (ids in, ids out) behind a byte-level tokenizer."""
    from agentrl.environments.mle.instrument import PolicyInstrumenter
    from agentrl.policies.base import Completion, SamplingParams

    class ByteTokenizer:
        chat_template = None

        def encode(self, text: str) -> list[int]:
            return list(text.encode())

        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return bytes(ids).decode()

    class HonestPolicy:
        name, version = "honest", 0

        def generate(self, prompts, sampling):
            return [
                Completion(ByteTokenizer().encode(honest_lm(ByteTokenizer().decode(p))), None, "stop")
                for p in prompts
            ]

    lm = PolicyInstrumenter(
        HonestPolicy(), ByteTokenizer(), SamplingParams(max_new_tokens=4096, temperature=0)
    )
    result = instrument(PROGRAM, "d00d", lm)
    assert result.method == "lm" and result.source.count("@@milestone d00d") == 3


def test_no_working_sandbox_fails_the_episode_not_the_run():
    env = make_env(sandbox="docker", docker_url="unix:///nonexistent/docker.sock")
    try:
        env.reset(options={"task": "iris"})
        obs, reward, terminated, _, info = env.step(fenced("print(1)"))
    finally:
        env.close()
    assert terminated and reward == -10.0 and info["run_reason"] == "error"
    assert "the sandbox could not run the program: no Docker daemon answers" in obs


def test_instrumented_code_keeps_the_agents_line_numbers():
    """Tracebacks must point at the agent's own lines, whichever instrumenter added the prints."""
    token = "5eed"
    honest = instrument(PROGRAM, token, CallableInstrumenter(honest_lm))
    fallback = instrument(PROGRAM, token, None)
    assert (honest.method, fallback.method) == ("lm", "ast")
    original = [(type(n).__name__, n.lineno) for n in ast.walk(ast.parse(PROGRAM)) if isinstance(n, ast.stmt)]
    for result in (honest, fallback):
        stmts = [n for n in ast.walk(result.tree) if isinstance(n, ast.stmt)]
        prints = [n for n in stmts if isinstance(n, ast.Expr) and "@@milestone" in ast.unparse(n)]
        kept = [(type(n).__name__, n.lineno) for n in stmts if n not in prints]
        assert kept == original, result.method
        assert compile_program(result.tree, token).co_filename == "solution.py"
    # a crash on line 2 of a three-line program is reported on line 2, after a milestone call at line 1
    program = "import os\nraise ValueError(os.sep)\nx = 1\n"
    code = marshal.loads(marshal.dumps(compile_program(instrument(program, token).tree, token)))
    calls = []
    with pytest.raises(ValueError) as err:
        exec(code, {"__name__": "__main__", EMITTER: lambda *args: calls.append(args)})
    assert err.traceback[-1].lineno + 1 == 2  # pytest's lineno is 0-based
    assert calls == [("agentrl.milestone", "imports")]
