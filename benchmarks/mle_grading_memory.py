"""Host memory and time of grading MLE submissions: the largest one the budget allows, and attacks.

Run: ``python benchmarks/mle_grading_memory.py``. Each case is graded in a fresh Python process
(pandas imported first), whose peak resident set is reset just before grading (``/proc/self/
clear_refs``); the result is the peak over the resident set before grading (``VmHWM - VmRSS``)
and the grading's wall time. Cases:

* the largest submission the budget allows for iris (38 test rows) and for a 300,000-row task
  (4.3 MB of answers, so 34 MB of submission), each a valid submission that gets a score;
* the attacks of issue 16 against iris: 510 MB of ``1,1`` rows, one 510 MB field, and a 44 MB
  header of about 5 million columns (each written for real; they need ~1.1 GB of disk briefly).

The JSON result (with the git SHA) goes to ``benchmarks/results/mle_grading_memory.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from agentrl.environments.mle.grader import SubmissionBudget  # noqa: E402
from agentrl.environments.mle.tasks import builtin_task  # noqa: E402

PROBE = """
import json, re, sys, time
from pathlib import Path
import pandas  # imported before the baseline: the grader's own cost is what is measured
from agentrl.environments.mle.grader import GraderSpec, grade_submission

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

open("/proc/self/clear_refs", "w").write("5")  # this process's peak-RSS record (VmHWM) restarts here
base = status("VmRSS")
start = time.perf_counter()
grade = grade_submission(Path(sys.argv[1]), Path(sys.argv[2]), GraderSpec(sys.argv[3]))
seconds = time.perf_counter() - start
print(json.dumps({"valid": grade.valid, "message": grade.message,
                  "peak_over_baseline_mb": round((status("VmHWM") - base) / 1024, 1), "seconds": round(seconds, 3)}))
"""


def grade_in_fresh_process(submission: Path, answers: Path, metric: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(submission), str(answers), metric],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["submission_bytes"] = submission.stat().st_size
    return result


def largest_allowed(answers: bytes, rows: int, path: Path) -> None:
    """A valid submission of ``rows`` rows padded to the budget's byte limit (lines within their limit)."""
    budget = SubmissionBudget.for_answers(answers)
    width = min(budget.max_line_bytes, budget.max_bytes // budget.max_lines) - 1
    ids = [int(line.split(b",")[0]) for line in answers.splitlines()[1:]]
    with open(path, "wb") as f:
        f.write(b"id,target\n")
        for i in ids[:rows]:
            head = b"%d,0." % i
            f.write(head + b"1" * (width - len(head)) + b"\n")


def main() -> None:
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mle-grading-") as tmp:
        tmp = Path(tmp)
        iris = builtin_task("iris").answers
        sub = tmp / "iris-largest.csv"
        largest_allowed(iris.read_bytes(), 38, sub)
        cases["iris: largest allowed"] = grade_in_fresh_process(sub, iris, "rmse")
        answers = tmp / "answers.csv"
        answers.write_bytes(b"id,target\n" + b"".join(b"%d,0.123456\n" % i for i in range(300_000)))
        sub = tmp / "big-largest.csv"
        largest_allowed(answers.read_bytes(), 300_000, sub)
        cases["300k-row task: largest allowed"] = grade_in_fresh_process(sub, answers, "rmse")
        cases["300k-row task: largest allowed"]["answers_bytes"] = answers.stat().st_size
        sub.unlink()
        attack = tmp / "attack.csv"
        with open(attack, "wb") as f:
            f.write(b"id,target\n")
            for _ in range(510):
                f.write(b"1,1\n" * 250_000)
        cases["iris: 510 MB of 1,1 rows"] = grade_in_fresh_process(attack, iris, "accuracy")
        with open(attack, "wb") as f:
            f.write(b"id,target\n1,")
            for _ in range(510):
                f.write(b"9" * 1_000_000)
        cases["iris: one 510 MB field"] = grade_in_fresh_process(attack, iris, "accuracy")
        attack.write_bytes(b",".join(b"c%07d" % i for i in range(5_000_000))[:44_000_000])
        cases["iris: 44 MB header, ~4.9 million columns"] = grade_in_fresh_process(attack, iris, "accuracy")
    for name, result in cases.items():
        print(
            f"{name:45s} {result['submission_bytes']:>13,} B  peak +{result['peak_over_baseline_mb']:7.1f} MB"
            f"  {result['seconds']:7.3f} s  {result['message']}"
        )
    print(write_result("mle_grading_memory", {"cases": cases}))


if __name__ == "__main__":
    main()
