"""``agentrl/MLE-v0``: write a program that trains a model and writes a submission.

Each action is a complete Python program in a fenced code block. The env instruments it with
progress prints (:mod:`.instrument`), runs it in a sandbox (:mod:`agentrl.sandboxes`) with the
task's public data read-only at ``/data``, a writable ``/workspace`` as working directory and a
time budget, grades ``/workspace/submission.csv`` against the hidden answers on the host, and
answers with the run's outcome, the milestones reached, the score and the tail of the output.
An episode is several attempts (``max_turns``); each can improve the previous one, whose files stay
in the workspace.

Reward of one attempt (arXiv 2509.01684, partial credit)::

    reward = normalized score (valid submission only) + 0.1 x milestones reached + failure_penalty (failed run only)

where a run *fails* when the program does not parse or compile (``run_reason="syntax_error"``),
exits non-zero (``"finished"`` with a non-zero ``exit_code``), times out (``"timeout"``), runs out
of memory (``"out_of_memory"``), floods its output (``"output_limit"``), goes over the workspace's
disk quota (``"disk_limit"``, from sandboxes that have one) or the sandbox cannot run or load it
(``"error"``; only a sandbox that cannot start at all ends the episode). ``info`` carries
``execution_seconds`` (the duration-aware update needs it), ``milestones``, ``raw_metric``,
``normalized_score``, ``reward_breakdown`` and ``run_reason``. ``progress`` is the normalized score
over the task's win threshold (clipped to 1); ``won`` when it reaches the threshold, which ends the
episode unless ``stop_on_win=False``.

The program is hostile. A milestone counts only when the statement the instrumenter added actually
ran: it reports through a per-run HMAC key the program cannot read, and the milestone is taken from
the call site on the stack, not from anything printed (:mod:`.milestones` has the scheme and why it
holds). The host never follows a link or opens a FIFO, directory or device the previous program
left under the env's file names (:mod:`.workspace`), and grades only submissions within a budget
derived from the hidden answers (:mod:`.grader`). ``step`` does not raise on anything a program or
a reply can do (``tests/test_fuzz_mle.py``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from types import CodeType
from typing import Any, ClassVar

from agentrl.core import PromptSpec, TextEnv
from agentrl.environments.mle.grader import normalized_score
from agentrl.environments.mle.instrument import (
    MILESTONES,
    Instrumented,
    Instrumenter,
    extract_code,
    instrument,
    new_token,
)
from agentrl.environments.mle.milestones import (
    RUN_FILE,
    compile_program,
    loader_command,
    loader_failure,
    milestones_seen,
    new_key,
    payload,
    strip_markers,
)
from agentrl.environments.mle.tasks import (
    BUILTIN,
    DATA_DIR,
    PANELS,
    SUBMISSION,
    Task,
    builtin_task,
    list_mlebench,
    load_mlebench,
)
from agentrl.environments.mle.workspace import remove_entry, remove_tree, write_new_file

#: Reward per milestone printed by the run (the paper's +0.1).
MILESTONE_REWARD = 0.1
#: Longest program accepted, in characters.
MAX_PROGRAM_CHARS = 100_000
#: Characters of output shown back to the agent (the tail).
OUTPUT_TAIL_CHARS = 2_000

FORMAT_HELP = (
    "Reply with one complete Python program in a fenced block:\n```python\n# your program\n```\n"
    f"It runs with the working directory /workspace; the data is in {DATA_DIR} (read-only). "
    f"Write your predictions to /workspace/{SUBMISSION}."
)


class MLEEnv(TextEnv):
    """ML-engineering tasks graded on hidden answers, with partial credit from progress prints."""

    splits: ClassVar[tuple[str, ...]] = ("train", "valid", "test", "mlebench")
    prompt: ClassVar[PromptSpec] = PromptSpec(
        "You are a machine-learning engineer solving a task in a sandbox.", list_admissible=False
    )

    def __init__(
        self,
        *,
        split: str | None = None,
        max_turns: int = 4,
        time_budget_s: float = 300.0,
        memory_mb: int = 2048,
        cpus: float = 1.0,
        disk_mb: int = 512,
        failure_penalty: float = -10.0,
        sandbox: str = "auto",
        docker_url: str | None = None,
        instrumenter: Instrumenter | None = None,
        mlebench_dir: str | None = None,
        stop_on_win: bool = True,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, max_turns=max_turns, render_mode=render_mode)
        if time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {time_budget_s}")
        self.time_budget_s = float(time_budget_s)
        self.memory_mb = int(memory_mb)
        self.cpus = float(cpus)
        self.disk_mb = int(disk_mb)
        self.failure_penalty = float(failure_penalty)
        self.sandbox_backend = sandbox
        self.docker_url = docker_url
        self.instrumenter = instrumenter
        self.mlebench_dir = mlebench_dir
        self.stop_on_win = stop_on_win
        self._sandbox: Any = None
        self._sandbox_data: Path | None = None
        self._workspace: Path | None = None
        self._task: Task | None = None
        self._baseline: float | None = None
        self._best: float | None = None
        self._attempts = 0

    # -- panels and tasks --------------------------------------------------------------------------

    def task_ids(self, split: str | None = None) -> list[str]:
        split = split or self.split
        if split == "mlebench":
            return [f"mlebench/{c}" for c in list_mlebench(self.mlebench_dir)] if self.mlebench_dir else []
        if split not in PANELS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(self.splits)}")
        return list(PANELS[split])

    def _load_task(self, task_id: str) -> Task:
        if task_id.startswith("mlebench/"):
            if not self.mlebench_dir:
                raise ValueError(
                    f"task {task_id!r} needs mlebench_dir= (a directory of prepared competitions)"
                )
            return load_mlebench(self.mlebench_dir, task_id.split("/", 1)[1])
        if task_id not in BUILTIN:
            raise ValueError(
                f"unknown MLE task {task_id!r}; built-in tasks: {', '.join(BUILTIN)} (or mlebench/<competition>)"
            )
        return builtin_task(task_id)

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        task = self._load_task(task_id)
        self._drop_workspace()
        self._task = task
        self._baseline = task.baseline_score()
        self._best = None
        self._attempts = 0
        self._workspace = Path(tempfile.mkdtemp(prefix="agentrl-mle-"))
        files = sorted(p.name for p in task.public_dir.iterdir())
        obs = (
            f"{task.description.strip()}\n\n"
            f"Files in {DATA_DIR}: {', '.join(files)}\n"
            f"Each attempt runs with a time budget of {self.time_budget_s:g} s and {self.memory_mb} MB of memory, "
            f"without network access. You have {self.max_turns} attempt(s); each can improve the previous one.\n\n"
            f"{FORMAT_HELP}"
        )
        info = self._info(progress=0.0, won=False)
        title = task.description.strip().splitlines()[0].lstrip("# ").strip()
        what = (
            f"train a model on {DATA_DIR}/train.csv and write predictions for {DATA_DIR}/test.csv"
            if (task.public_dir / "train.csv").exists()
            else "solve the task of the description and write the predictions"
        )
        info["instruction"] = (
            f"{title}: {what} to /workspace/{SUBMISSION} (scored by {task.grader.metric}, {task.grader.direction}d)"
        )
        info["metric"] = task.grader.metric
        info["baseline_metric"] = self._baseline
        return obs, info

    # -- one attempt -------------------------------------------------------------------------------

    def _step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        assert self._task is not None and self._workspace is not None
        self._attempts += 1
        header = f"Attempt {self.turn} of {self.max_turns}: "
        if not isinstance(action, str) or len(action) > MAX_PROGRAM_CHARS * 2:
            return self._invalid(
                header + f"the reply is too long (over {MAX_PROGRAM_CHARS} characters of code)."
            )
        code = extract_code(action)
        if code is None or not code.strip():
            return self._invalid(header + "no program found.\n" + FORMAT_HELP)
        if len(code) > MAX_PROGRAM_CHARS:
            return self._invalid(header + f"the program is longer than {MAX_PROGRAM_CHARS} characters.")
        token = new_token()
        try:
            instrumented = instrument(code, token, self.instrumenter)
            program = compile_program(instrumented.tree, token)
        except (SyntaxError, ValueError) as exc:  # ValueError: null bytes, unencodable characters
            where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
            message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            obs = header + f"the program does not parse: {message}{where}. Nothing was run."
            return self._failed(obs, reason="syntax_error", invalid=True)
        except (RecursionError, MemoryError):
            obs = header + "the program is nested too deeply to compile. Nothing was run."
            return self._failed(obs, reason="syntax_error", invalid=True)
        return self._run(code, instrumented, program, header)

    def _prepare_workspace(self, code: str, program: CodeType, key: bytes) -> None:
        """Write the agent's program and the run's payload as new regular files (see :mod:`.workspace`)."""
        ws = self._workspace
        assert ws is not None
        mode = os.lstat(ws).st_mode  # the program may have made its workspace read-only for itself
        os.chmod(ws, stat.S_IMODE(mode) | stat.S_IRWXU)
        remove_entry(ws, SUBMISSION)
        write_new_file(ws, "solution.py", code.encode("utf-8", "replace"))  # for the next attempt to read
        write_new_file(ws, RUN_FILE, payload(key, program))

    def _run(self, code: str, instrumented: Instrumented, program: CodeType, header: str):
        from agentrl.sandboxes import Limits, Reason, SandboxUnavailable

        task, ws = self._task, self._workspace
        assert task is not None and ws is not None
        key = new_key()
        limits = Limits(
            timeout_s=self.time_budget_s,
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            pids=256,
            disk_mb=self.disk_mb,
        )
        try:
            self._prepare_workspace(code, program, key)
        except OSError as exc:
            return self._failed(header + f"the workspace could not be prepared: {exc}", reason="error")
        try:
            sandbox = self._get_sandbox(task, limits)
            result = sandbox.run(loader_command(), workspace=ws, limits=limits)
        except (SandboxUnavailable, OSError) as exc:
            return self._failed(header + f"the sandbox could not run the program: {exc}", reason="error")
        except Exception as exc:  # a sandbox bug fails this episode, never the run (DESIGN: Sandboxes)
            message = f"{type(exc).__name__}: {str(exc)[:200]}"
            return self._failed(header + f"the sandbox could not run the program: {message}", reason="error")
        finally:
            try:
                remove_entry(ws, RUN_FILE)
            except OSError:
                pass
        reason = str(result.reason)
        load_error = loader_failure(result.exit_code, result.stderr) if reason == Reason.FINISHED else None
        if load_error is not None:
            reason = Reason.ERROR
        milestones = milestones_seen(result.stdout, key) if load_error is None else []
        shown = strip_markers(result.stdout)
        ran_ok = reason == Reason.FINISHED and result.exit_code == 0
        grade = task.grade(ws / SUBMISSION)
        score_term = 0.0
        normalized = None
        if grade.valid and grade.score is not None:
            assert self._baseline is not None
            normalized = normalized_score(task.grader, grade.score, self._baseline)
            score_term = normalized
            self._best = normalized if self._best is None else max(self._best, normalized)
        penalty = 0.0 if ran_ok else self.failure_penalty
        milestone_term = round(MILESTONE_REWARD * len(milestones), 10)
        reward = score_term + milestone_term + penalty
        threshold = task.win_threshold or 1.0
        won = normalized is not None and normalized >= threshold
        progress = 1.0 if won else min(1.0, (self._best or 0.0) / threshold)

        outcome = self._outcome(reason, result.exit_code, limits, load_error)
        lines = [header + f"{outcome} after {result.duration_s:.1f} s."]
        lines.append(
            f"Milestones reached ({len(milestones)}/{len(MILESTONES)}): {', '.join(milestones) if milestones else 'none'}."
        )
        if grade.valid:
            best = f"; best so far {self._best:.4f}" if self._best is not None else ""
            lines.append(f"Submission: valid, {grade.message} (normalized score {normalized:.4f}{best}).")
        else:
            lines.append(f"Submission: {grade.message}.")
        if won:
            lines.append("This reaches the task's target score.")
        lines.append(
            "Your program is kept as /workspace/solution.py, with any files it wrote, for the next attempt."
        )
        tail_out = shown[-OUTPUT_TAIL_CHARS:].rstrip()
        tail_err = result.stderr[-OUTPUT_TAIL_CHARS:].rstrip()
        lines.append(f"stdout (last {OUTPUT_TAIL_CHARS} chars):\n{tail_out or '(empty)'}")
        if tail_err:
            lines.append(f"stderr (last {OUTPUT_TAIL_CHARS} chars):\n{tail_err}")
        info = self._info(progress=progress, won=won)
        info.update(
            execution_seconds=float(result.duration_s),
            milestones=milestones,
            raw_metric=grade.score,
            normalized_score=normalized,
            submission_valid=grade.valid,
            submission_message=grade.message,
            run_reason=reason,
            exit_code=result.exit_code,
            instrumentation=instrumented.method,
            instrumentation_note=instrumented.note,
            reward_breakdown={"score": score_term, "milestones": milestone_term, "penalty": penalty},
        )
        terminated = bool(won and self.stop_on_win)
        return "\n".join(lines), reward, terminated, info

    def _outcome(self, reason: str, exit_code: int | None, limits: Any, load_error: str | None) -> str:
        """How the run ended, in words; reasons a newer sandbox adds are named as they are."""
        if load_error is not None:
            return f"the sandbox could not load the program ({load_error})"
        inodes = getattr(limits, "inodes", None)
        quota = f"{limits.disk_mb} MB" + (f" or {inodes:,} files" if inodes else "")
        outcomes = {
            "finished": f"the program finished with exit code {exit_code}",
            "timeout": f"the program was stopped at the time budget ({self.time_budget_s:g} s)",
            "out_of_memory": f"the program was killed at the memory limit ({self.memory_mb} MB)",
            "output_limit": "the program was stopped: it printed more than the output limit",
            "disk_limit": f"the program was stopped: it wrote more than the workspace's disk quota ({quota})",
            "error": "the sandbox failed to run the program",
        }
        return outcomes.get(reason, f"the sandbox stopped the program (reason: {reason})")

    def _get_sandbox(self, task: Task, limits: Any) -> Any:
        from agentrl.sandboxes import get_sandbox

        if self._sandbox is None or self._sandbox_data != task.public_dir:
            if self._sandbox is not None:
                self._sandbox.close()
                self._sandbox = None
            self._sandbox = get_sandbox(
                self.sandbox_backend,
                limits,
                ro_binds={str(task.public_dir): DATA_DIR},
                docker_url=self.docker_url,
            )
            self._sandbox_data = task.public_dir
        return self._sandbox

    # -- helpers ----------------------------------------------------------------------------------

    def _info(self, *, progress: float, won: bool) -> dict[str, Any]:
        return {"won": won, "progress": 1.0 if won else float(progress), "admissible_actions": None}

    def _not_run(self, reason: str, *, invalid: bool, penalty: float) -> dict[str, Any]:
        """The info of an attempt whose program never ran (same keys as a run's)."""
        info = self._info(progress=self._progress(), won=False)
        info.update(
            invalid_action=invalid,
            execution_seconds=0.0,
            milestones=[],
            raw_metric=None,
            normalized_score=None,
            submission_valid=False,
            submission_message="nothing was run",
            run_reason=reason,
            exit_code=None,
            instrumentation=None,
            instrumentation_note="",
            reward_breakdown={"score": 0.0, "milestones": 0.0, "penalty": penalty},
        )
        return info

    def _invalid(self, obs: str) -> tuple[str, float, bool, dict[str, Any]]:
        """No program in the reply: flagged as invalid, no reward either way."""
        return obs, 0.0, False, self._not_run("no_program", invalid=True, penalty=0.0)

    def _failed(
        self, obs: str, *, reason: str, invalid: bool = False
    ) -> tuple[str, float, bool, dict[str, Any]]:
        """A program that could not run at all: the failure penalty, no milestones.

        Without a working sandbox (``reason="error"``) the episode cannot go on: it terminates.
        """
        info = self._not_run(reason, invalid=invalid, penalty=self.failure_penalty)
        return obs, self.failure_penalty, reason == "error", info

    def _progress(self) -> float:
        threshold = (self._task.win_threshold if self._task else None) or 1.0
        return min(1.0, (self._best or 0.0) / threshold)

    def expert_action(self) -> str | None:
        """A reasonable scikit-learn solution for the built-in tasks (None for MLE-bench ones)."""
        if self._task is None or self.episode_over or not self._task.expert:
            return None
        return f"```python\n{self._task.expert}```"

    def _drop_workspace(self) -> None:
        if self._workspace is not None:
            remove_tree(self._workspace)
            self._workspace = None

    def _close(self) -> None:
        self._drop_workspace()
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
