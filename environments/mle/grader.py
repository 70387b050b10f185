"""Graders: read a submission CSV, check its format against the hidden answers, compute the metric.

A grade never raises for a bad submission: a missing file, a wrong header, wrong or duplicated
ids, missing or non-numeric values are all ``valid=False`` with a one-line message. It raises only
when the *task* is broken (unknown metric, unreadable answers): a grader bug is a bug report.

Grading runs in the host process, so it has a budget fixed by the task's own answers
(:class:`SubmissionBudget`): before anything is parsed, the submission must be a regular file (no
link, FIFO or directory; see :mod:`.workspace`) of at most ``BYTES_FACTOR`` times the answers'
size (at least ``MIN_BYTES``), with no more lines than the answers have rows (plus a little
slack), no line longer than ``LINE_FACTOR`` times the answers' longest (at least
``MIN_LINE_BYTES``) and no more header columns than twice the answers' (plus 8). Anything else
is "submission too large: ..." after a bounded read, so the parser only ever sees an input of
the task's own size; the cost of grading stays a small multiple of parsing the answers
(measured in ``tests/test_mle_attacks.py``). This was chosen over grading in a second sandbox:
it costs no sandbox start per attempt and the bound is exact.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.environments.mle.workspace import TooLarge, UnsafeEntry, read_regular_file

#: The submission budget relative to the answers (see the module docstring).
BYTES_FACTOR = 8
MIN_BYTES = 1 << 20
LINE_FACTOR = 8
MIN_LINE_BYTES = 4096
EXTRA_LINES = 16

#: metric -> direction. Scores of "maximize" metrics below live in [0, 1] (r2 can go below 0).
METRICS: dict[str, str] = {
    "accuracy": "maximize",
    "f1_macro": "maximize",
    "r2": "maximize",
    "rmse": "minimize",
    "mae": "minimize",
}


@dataclass(frozen=True)
class GraderSpec:
    """How a task is graded (stored as ``grader.json`` in the task folder)."""

    metric: str
    id_column: str = "id"
    target_column: str = "target"
    direction: str = ""  # filled from METRICS when empty

    def __post_init__(self) -> None:
        if self.metric not in METRICS and not self.direction:  # an external grader must state its direction
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        if not self.direction:
            object.__setattr__(self, "direction", METRICS[self.metric])
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be maximize or minimize, got {self.direction!r}")

    @classmethod
    def load(cls, path: Path) -> GraderSpec:
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in ("metric", "id_column", "target_column", "direction") if k in data})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one submission."""

    valid: bool
    score: float | None  # the raw metric (None when invalid)
    message: str


def compute_metric(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The metric by its textbook definition (checked against scikit-learn in the tests)."""
    if metric == "accuracy":
        return float(np.mean(y_true == y_pred))
    if metric == "rmse":
        return float(math.sqrt(np.mean((y_true.astype(float) - y_pred.astype(float)) ** 2)))
    if metric == "mae":
        return float(np.mean(np.abs(y_true.astype(float) - y_pred.astype(float))))
    if metric == "r2":
        y_true, y_pred = y_true.astype(float), y_pred.astype(float)
        ss_res = np.sum((y_true - y_pred) ** 2)
        ss_tot = np.sum((y_true - y_true.mean()) ** 2)
        return float(1.0 - ss_res / ss_tot)
    if metric == "f1_macro":
        scores = []
        for label in np.unique(y_true):
            tp = np.sum((y_pred == label) & (y_true == label))
            fp = np.sum((y_pred == label) & (y_true != label))
            fn = np.sum((y_pred != label) & (y_true == label))
            scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return float(np.mean(scores))
    raise ValueError(f"unknown metric {metric!r}")


class SubmissionRejected(Exception):
    """A submission refused before parsing; ``str(exc)`` is the one-line reason for the agent."""


@dataclass(frozen=True)
class SubmissionBudget:
    """Upper bounds on a submission, derived from the hidden answers (see the module docstring)."""

    max_bytes: int
    max_lines: int
    max_line_bytes: int
    max_columns: int
    answer_rows: int

    @classmethod
    def for_answers(cls, answers: bytes) -> SubmissionBudget:
        lines = answers.splitlines()
        header = next(csv.reader([lines[0].decode("utf-8", "replace")])) if lines else []
        rows = max(0, len(lines) - 1)
        return cls(
            max_bytes=max(MIN_BYTES, BYTES_FACTOR * len(answers)),
            max_lines=rows + 1 + EXTRA_LINES,
            max_line_bytes=max(MIN_LINE_BYTES, LINE_FACTOR * max(map(len, lines), default=0)),
            max_columns=2 * len(header) + 8,
            answer_rows=rows,
        )

    def check(self, data: bytes, name: str = "submission.csv") -> None:
        """Raise :class:`SubmissionRejected` unless ``data`` fits; never parses more than one line."""
        if len(data) > self.max_bytes:
            raise SubmissionRejected(
                f"submission too large: {name} has {len(data):,} bytes, at most {self.max_bytes:,} for this task"
            )
        newlines = data.count(b"\n")
        if newlines > self.max_lines:
            raise SubmissionRejected(
                f"submission too large: {name} has {newlines:,} lines, the task has {self.answer_rows:,} test rows"
            )
        longest = max(map(len, data.split(b"\n")), default=0)
        if longest > self.max_line_bytes:
            raise SubmissionRejected(
                f"submission too large: {name} has a line of {longest:,} bytes, at most {self.max_line_bytes:,}"
            )
        first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
        try:
            columns = len(next(csv.reader([first]), []))
        except csv.Error:
            columns = first.count(",") + 1
        if columns > self.max_columns:
            raise SubmissionRejected(
                f"submission too large: {name} has {columns:,} columns in its header, at most {self.max_columns:,}"
            )


def read_submission(path: Path, budget: SubmissionBudget) -> bytes:
    """The submission's bytes, read safely and within ``budget``; raises :class:`SubmissionRejected`."""
    name = Path(path).name
    try:
        data = read_regular_file(path, budget.max_bytes)
    except TooLarge as exc:
        raise SubmissionRejected(f"submission too large: {name} {exc} for this task") from None
    except UnsafeEntry as exc:
        raise SubmissionRejected(f"malformed submission: {name} {exc}") from None
    except OSError as exc:
        raise SubmissionRejected(f"malformed submission: {name} cannot be read ({exc.strerror})") from None
    if data is None:
        raise SubmissionRejected(f"no submission: the program did not write {name}")
    budget.check(data, name)
    return data


def grade_submission(submission: Path | bytes, answers: Path, spec: GraderSpec) -> Grade:
    """Grade ``submission`` (a file, read within the budget, or its bytes) against ``answers``.

    Both are CSV with ``spec.id_column`` and ``spec.target_column``.
    """
    answer_bytes = Path(answers).read_bytes()  # a missing answers file is the task's bug: let it raise
    budget = SubmissionBudget.for_answers(answer_bytes)
    try:
        if isinstance(submission, bytes):
            budget.check(submission)
            data = submission
        else:
            data = read_submission(Path(submission), budget)
    except SubmissionRejected as exc:
        return Grade(False, None, str(exc))
    return grade_csv(data, read_answers(answer_bytes), spec)


def read_answers(answers: bytes) -> Any:
    """The answers as a DataFrame (a broken answers file is the task's bug: it raises)."""
    import pandas as pd

    return pd.read_csv(io.BytesIO(answers))


def grade_csv(data: bytes, truth: Any, spec: GraderSpec) -> Grade:
    """Grade a submission's bytes (already within the budget) against the answers' DataFrame."""
    import pandas as pd

    idc, tc = spec.id_column, spec.target_column
    try:
        sub = pd.read_csv(io.BytesIO(data))
    except Exception as exc:
        return Grade(
            False,
            None,
            f"malformed submission: cannot read it as CSV ({type(exc).__name__}: {str(exc)[:120]})",
        )
    missing = [c for c in (idc, tc) if c not in sub.columns]
    if missing:
        return Grade(
            False, None, f"malformed submission: missing column(s) {', '.join(missing)}; expected {idc},{tc}"
        )
    if len(sub) != len(truth):
        return Grade(
            False, None, f"malformed submission: {len(sub)} rows, expected {len(truth)} (one per test id)"
        )
    if sub[idc].duplicated().any():
        return Grade(False, None, "malformed submission: duplicated ids")
    sub = sub.set_index(idc)
    truth = truth.set_index(idc)
    if set(sub.index) != set(truth.index):
        return Grade(False, None, "malformed submission: its ids are not the test ids")
    pred = sub.loc[truth.index, tc]
    if pred.isna().any():
        return Grade(False, None, f"malformed submission: {int(pred.isna().sum())} missing prediction(s)")
    y_true = truth[tc].to_numpy()
    if spec.metric in ("accuracy", "f1_macro"):
        y_pred = pred.astype(str).to_numpy()
        y_true = truth[tc].astype(str).to_numpy()
        # 3 and 3.0 are the same class; inf or 1e300 are no class at all
        if np.issubdtype(truth[tc].dtype, np.integer):
            numeric = pd.to_numeric(pred, errors="coerce").to_numpy(dtype=float)
            integral = np.isfinite(numeric) & (np.abs(numeric) < 2**53) & (numeric == np.round(numeric))
            as_int = np.where(integral, numeric, 0).astype(np.int64).astype(str)
            y_pred = np.where(integral, as_int, y_pred)
    else:
        numeric = pd.to_numeric(pred, errors="coerce")
        if numeric.isna().any() or not np.isfinite(numeric.to_numpy(dtype=float)).all():
            return Grade(False, None, "malformed submission: predictions must be finite numbers")
        y_pred = numeric.to_numpy(dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 is a finite prediction with an infinite error
        score = compute_metric(spec.metric, y_true, y_pred)
    return Grade(True, score, f"{spec.metric} = {score:.4f}")


def normalized_score(spec: GraderSpec, score: float, baseline: float) -> float:
    """The grader's score on a [0, 1] scale, higher better, for the reward and ``info['progress']``.

    Maximised metrics are bounded by 1 and used as they are (clipped at 0); minimised ones are the
    fraction of the constant baseline's error removed, ``1 - score / baseline``, clipped to [0, 1].
    """
    if spec.direction == "maximize":
        return float(min(1.0, max(0.0, score)))
    if baseline <= 0:
        return 1.0 if score <= 0 else 0.0
    return float(min(1.0, max(0.0, 1.0 - score / baseline)))


def as_dict(grade: Grade) -> dict[str, Any]:
    return asdict(grade)
