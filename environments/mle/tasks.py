"""MLE tasks: folders in the MLE-bench layout, built-in ones made from scikit-learn's bundled data.

A task folder looks like an MLE-bench prepared competition::

    <task>/
      description.md               what to predict, how it is scored, the submission format
      grader.json                  metric, direction, id and target columns
      prepared/public/             mounted read-only at /data in the sandbox
        train.csv  test.csv  sample_submission.csv  description.md
      prepared/private/test.csv    the hidden answers (never mounted)

Built-in tasks are written on first use from data sets that ship inside scikit-learn (no download)
with a fixed stratified 75/25 split (``random_state=0``), into ``$AGENTRL_CACHE/mle`` (default
``~/.cache/agentrl/mle``), keyed by the scikit-learn version.

:func:`load_mlebench` reads competitions prepared by MLE-bench (``mlebench prepare``) from a data
directory: with the ``mlebench`` package installed its own grader scores the submission; without
it the folder needs a ``grader.json`` like the built-in ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from agentrl.environments.mle.grader import (
    Grade,
    GraderSpec,
    SubmissionBudget,
    SubmissionRejected,
    grade_csv,
    read_answers,
    read_submission,
)

#: Data paths inside the sandbox.
DATA_DIR = "/data"
SUBMISSION = "submission.csv"


@dataclass(frozen=True)
class BuiltinSpec:
    """How to make a built-in task from a scikit-learn loader."""

    loader: str  # name of the sklearn.datasets function
    metric: str
    kind: str  # "classification" or "regression"
    win_threshold: float  # normalized score at which the task counts as solved
    title: str
    summary: str


BUILTIN: dict[str, BuiltinSpec] = {
    "digits": BuiltinSpec(
        "load_digits",
        "accuracy",
        "classification",
        0.95,
        "Handwritten digits",
        "8x8 grey-level images of handwritten digits (64 pixel features, values 0-16); predict the digit 0-9.",
    ),
    "wine": BuiltinSpec(
        "load_wine",
        "accuracy",
        "classification",
        0.93,
        "Wine cultivars",
        "13 chemical measurements of Italian wines; predict which of 3 cultivars (0, 1, 2) made the wine.",
    ),
    "breast-cancer": BuiltinSpec(
        "load_breast_cancer",
        "accuracy",
        "classification",
        0.94,
        "Breast cancer diagnosis",
        "30 features computed from images of breast mass cell nuclei; predict malignant (0) or benign (1).",
    ),
    "diabetes": BuiltinSpec(
        "load_diabetes",
        "rmse",
        "regression",
        0.15,
        "Diabetes progression",
        "10 baseline variables (age, sex, BMI, blood pressure, 6 serum measurements, standardised) of diabetes "
        "patients; predict a quantitative measure of disease progression one year later.",
    ),
    "iris": BuiltinSpec(
        "load_iris",
        "accuracy",
        "classification",
        0.9,
        "Iris species",
        "4 measurements of iris flowers (sepal and petal length and width, cm); predict the species (0, 1, 2).",
    ),
}

#: The fixed task panels of the built-in tasks.
PANELS: dict[str, list[str]] = {
    "train": ["digits", "wine", "diabetes"],
    "valid": ["breast-cancer"],
    "test": ["iris"],
}


@dataclass(frozen=True)
class Task:
    """One MLE task, ready to run: where its files are and how to grade a submission."""

    id: str
    root: Path
    description: str
    grader: GraderSpec
    win_threshold: float | None = None
    expert: str | None = None  # a reference solution program (built-in tasks)
    grade_fn: Callable[[bytes], Grade] | None = field(default=None, compare=False)  # external grader

    @property
    def public_dir(self) -> Path:
        return self.root / "prepared" / "public"

    @property
    def answers(self) -> Path:
        return self.root / "prepared" / "private" / "test.csv"

    @cached_property
    def answer_bytes(self) -> bytes:
        """The hidden answers (the sample submission when an external grader keeps them elsewhere)."""
        path = self.answers if self.answers.is_file() else self.public_dir / "sample_submission.csv"
        return path.read_bytes()

    @cached_property
    def truth(self) -> Any:
        """The answers as a DataFrame, parsed once per task."""
        return read_answers(self.answer_bytes)

    @cached_property
    def budget(self) -> SubmissionBudget:
        """What a submission may be before it is parsed, derived from the answers."""
        return SubmissionBudget.for_answers(self.answer_bytes)

    def grade(self, submission: Path) -> Grade:
        """Grade a submission file on the host, never following a link or opening a special file there
        (the program wrote it inside the sandbox; a link could lead to the hidden answers, a FIFO
        would block) and only within :attr:`budget`."""
        try:
            data = read_submission(submission, self.budget)
        except SubmissionRejected as exc:
            return Grade(False, None, str(exc))
        if self.grade_fn is not None:
            return self.grade_fn(data)
        return grade_csv(data, self.truth, self.grader)

    def baseline_score(self) -> float:
        """The metric of the sample submission (a constant predictor): the floor a model must beat."""
        grade = self.grade(self.public_dir / "sample_submission.csv")
        if not grade.valid or grade.score is None:
            raise RuntimeError(f"task {self.id}: its own sample submission does not grade: {grade.message}")
        return grade.score


def cache_root() -> Path:
    import sklearn

    root = Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))
    return root / "mle" / f"sklearn-{sklearn.__version__}"


def _description(name: str, spec: BuiltinSpec, n_train: int, n_test: int, features: list[str]) -> str:
    direction = "higher is better" if spec.metric in ("accuracy", "f1_macro", "r2") else "lower is better"
    return (
        f"# {spec.title} ({name})\n\n{spec.summary}\n\n"
        f"## Data (in {DATA_DIR}, read-only)\n"
        f"- `train.csv`: {n_train} rows: `id`, {len(features)} feature columns, `target`.\n"
        f"- `test.csv`: {n_test} rows: `id` and the same feature columns, no target.\n"
        f"- `sample_submission.csv`: the expected format (a constant prediction).\n\n"
        f"## Evaluation\n{spec.metric} of `target` on the test rows ({direction}).\n\n"
        f"## Submission\nWrite `{SUBMISSION}` in the current directory (/workspace) with columns `id,target`, "
        f"one row per test id.\n"
    )


def _write_builtin(name: str, dest: Path) -> None:
    import numpy as np
    import pandas as pd
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    spec = BUILTIN[name]
    bunch = getattr(sklearn.datasets, spec.loader)()
    features = [str(f).replace(" ", "_").replace("(", "").replace(")", "") for f in bunch.feature_names]
    X = pd.DataFrame(bunch.data, columns=features)
    y = pd.Series(bunch.target, name="target")
    stratify = y if spec.kind == "classification" else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=stratify
    )
    ids_train = np.arange(len(X_train))
    ids_test = np.arange(len(X_train), len(X_train) + len(X_test))
    public = dest / "prepared" / "public"
    private = dest / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    train = X_train.reset_index(drop=True)
    train.insert(0, "id", ids_train)
    train["target"] = y_train.to_numpy()
    train.to_csv(public / "train.csv", index=False)
    test = X_test.reset_index(drop=True)
    test.insert(0, "id", ids_test)
    test.to_csv(public / "test.csv", index=False)
    if spec.kind == "classification":
        constant = int(pd.Series(y_train).mode().iloc[0])
    else:
        constant = float(np.mean(y_train))
    pd.DataFrame({"id": ids_test, "target": constant}).to_csv(public / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids_test, "target": y_test.to_numpy()}).to_csv(private / "test.csv", index=False)
    text = _description(name, spec, len(train), len(test), features)
    (dest / "description.md").write_text(text)
    (public / "description.md").write_text(text)
    GraderSpec(metric=spec.metric).save(dest / "grader.json")


def builtin_task(name: str) -> Task:
    """The built-in task ``name``, its folder written to the cache on first use (safe across processes)."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in MLE task {name!r}; choose one of {', '.join(BUILTIN)}")
    root = cache_root() / name
    if not (root / "grader.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{name}-"))
        try:
            _write_builtin(name, tmp / "task")
            try:
                os.replace(tmp / "task", root)
            except OSError:  # another process won the race; its folder is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    spec = BUILTIN[name]
    return Task(
        id=name,
        root=root,
        description=(root / "description.md").read_text(),
        grader=GraderSpec.load(root / "grader.json"),
        win_threshold=spec.win_threshold,
        expert=expert_program(spec.kind),
    )


def expert_program(kind: str) -> str:
    """A reasonable scikit-learn solution: standardised features and a well-tuned standard model."""
    if kind == "classification":
        model = "make_pipeline(StandardScaler(), SVC(C=10.0, gamma='scale'))"
    else:
        model = "make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))"
    return f"""import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

train = pd.read_csv("{DATA_DIR}/train.csv")
test = pd.read_csv("{DATA_DIR}/test.csv")
features = [c for c in train.columns if c not in ("id", "target")]
model = {model}
model.fit(train[features], train["target"])
predictions = model.predict(test[features])
pd.DataFrame({{"id": test["id"], "target": predictions}}).to_csv("{SUBMISSION}", index=False)
print("wrote", len(predictions), "predictions")
"""


def load_mlebench(data_dir: str | os.PathLike[str], competition_id: str) -> Task:
    """A competition prepared by MLE-bench in ``data_dir`` (``<data_dir>/<id>/prepared/{public,private}``)."""
    root = Path(data_dir) / competition_id
    public = root / "prepared" / "public"
    answers = root / "prepared" / "private" / "test.csv"
    if not public.is_dir():
        raise ValueError(
            f"{root} is not a prepared MLE-bench competition (no prepared/public); run `mlebench prepare`"
        )
    description_file = public / "description.md"
    description = description_file.read_text() if description_file.exists() else f"# {competition_id}\n"
    if (root / "grader.json").exists():
        return Task(f"mlebench/{competition_id}", root, description, GraderSpec.load(root / "grader.json"))
    try:
        from mlebench.registry import Registry
    except ImportError:
        raise ValueError(
            f"{competition_id}: grading needs the mlebench package (pip install mlebench) or a grader.json in {root}"
        ) from None
    competition = Registry(data_dir=Path(data_dir)).get_competition(competition_id)
    try:
        import pandas as pd

        lower = bool(competition.grader.is_lower_better(pd.read_csv(competition.leaderboard)))
    except Exception:
        lower = False
    spec = GraderSpec(metric=str(competition.grader.name), direction="minimize" if lower else "maximize")

    def grade(submission: bytes) -> Grade:
        import io

        import pandas as pd

        try:
            score = competition.grader(pd.read_csv(io.BytesIO(submission)), pd.read_csv(answers))
        except Exception as exc:
            return Grade(False, None, f"invalid submission: {type(exc).__name__}: {str(exc)[:150]}")
        if score is None:
            return Grade(False, None, "invalid submission (the MLE-bench grader returned no score)")
        return Grade(True, float(score), f"{competition.grader.name} = {float(score):.4f}")

    return Task(f"mlebench/{competition_id}", root, description, spec, grade_fn=grade)


def list_mlebench(data_dir: str | os.PathLike[str]) -> list[str]:
    """Competition ids with a prepared public folder under ``data_dir``, sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "prepared" / "public").is_dir())
