"""A recipe run on disk: never silently overwritten, checkpointed, resumable, and watchable.

Every recipe run lives in ``output_dir/run_name``::

    run.json        status (running, finished, interrupted, failed), the resolved config, git SHA,
                    the store's run ids, the W&B id, and the pid/host while it runs
    checkpoint/     the last resumable state: one ``learner.pt`` per learner (Learner.save_checkpoint)
                    and ``state.json`` (the loop's position, store and metrics watermarks)
    metrics.jsonl   one line per optimizer step and per evaluation (plus tensorboard/, wandb/)
    evals/          one evaluation report (JSON, with observations) per evaluation
    model/          the final weights; summary.json; store.db (the default store)

Rules (:meth:`Run.open`): a new ``run_name`` starts fresh; an existing run directory is an error
unless ``resume=true`` (continue from its last checkpoint) or ``overwrite=true`` (delete it, and its
runs in a shared store, and start over). A finished run cannot be resumed; a run whose process is
still alive cannot be touched.

Consistency: the recipe changes its learners, the store and the metrics only inside
:meth:`Run.critical` blocks (SIGINT/SIGTERM are deferred to the end of a block), and each block ends
by *committing*: the loop state, the store's newest episode id per run and the size of
``metrics.jsonl`` are noted. A checkpoint saves the last commit with the learners, which cannot have
changed since. Resuming truncates the store (episodes written after the commit) and the metrics file
back to that commit, so a run killed anywhere, even by SIGKILL, continues without duplicated steps;
with per-phase seeds (:func:`phase_seed`) it continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agentrl.config import ConfigError, build_config, config_dict, setting
from agentrl.interrupts import SIGTERM_TOO, InterruptGuard
from agentrl.progress import progress_bar, third_party_output
from agentrl.provenance import git_sha

log = logging.getLogger("agentrl.training")

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
#: Config keys a resumed run may change: how it is kept and watched, not what it computes.
RUN_CONTROL_KEYS = ("resume", "overwrite", "checkpoint_every", "logger", "wandb_project", "verbose")
#: Files whose presence makes a directory a run directory (older agentrl wrote no run.json).
_RUN_MARKERS = (RUN_FILE, "metrics.jsonl", "summary.json", CHECKPOINT_DIR)


@dataclasses.dataclass
class RunOptions:
    """How a recipe run is kept and watched; every recipe config has these fields."""

    resume: bool = setting(
        False, "continue the run in output_dir/run_name from its last checkpoint (after Ctrl-C, SIGTERM, "
        "a crash or a kill); its saved config is used"
    )  # fmt: skip
    overwrite: bool = setting(
        False, "start over where a run of this name exists: delete its directory (and its runs in a shared store)"
    )
    checkpoint_every: int = setting(
        5, "save a resumable checkpoint every N iterations (0 = never on a schedule); Ctrl-C and SIGTERM always save one"
    )
    logger: list[str] = setting(
        factory=lambda: ["jsonl", "tensorboard"],
        doc="where metrics go: jsonl (metrics.jsonl, always written), tensorboard, wandb (gets the full config; "
        "WANDB_MODE=offline keeps it on disk)",
    )
    wandb_project: str = setting("agentrl", "W&B project, when logger lists wandb")
    verbose: bool = setting(False, "show third-party progress bars and info logs (transformers, huggingface_hub)")


def phase_seed(seed: int, iteration: int, phase: str) -> int:
    """A 63-bit seed for one phase of one iteration (``rollout``, ``eval``, ``warmup``), from the run's seed.

    Seeding every phase afresh makes what it samples a function of (seed, iteration, phase, weights)
    alone: a resumed run samples exactly what the uninterrupted run did.
    """
    import numpy as np

    code = int.from_bytes(phase.encode()[:8].ljust(8, b"\0"), "little")
    return int(np.random.SeedSequence([seed, iteration, code]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def iteration_line(name: str, iteration: int, total: int, rollout: dict[str, Any], updates: list[dict[str, Any]],
                   seconds: float) -> str:
    """The one console line per iteration: rollout success and return, loss, learning rate, tokens/s, seconds.

    ``rollout`` has ``success_rate``, ``mean_return`` and, when the driver generates, ``tokens_per_s``;
    ``updates`` are the learner's metrics of the iteration's optimizer steps (loss averaged, the last
    learning rate, training tokens/s over all of them; none: no update this iteration).
    """
    done = [u for u in updates if not u.get("skipped")]
    loss = f"{sum(u['loss'] for u in done) / len(done):.4f}" if done else ("skipped" if updates else "-")
    lr = f"{updates[-1]['lr']:.2e}" if updates else "-"
    train_seconds = sum(u.get("seconds", 0.0) for u in updates)
    train_rate = sum(u.get("total_tokens", 0) for u in updates) / train_seconds if train_seconds > 0 else 0.0
    generated = f"{rollout['tokens_per_s']:.0f} generated, " if rollout.get("tokens_per_s") is not None else ""
    return (f"[{name}] iteration {iteration}/{total}: rollout success {rollout['success_rate']:.3f} "
            f"return {rollout['mean_return']:.3f} | loss {loss} lr {lr} | tokens/s {generated}{train_rate:.0f} trained "
            f"| {seconds:.1f} s")  # fmt: skip


class Run:
    """One run directory and its lifecycle; make it with :meth:`open` and use it as a context manager.

    Inside ``with run:`` SIGINT and SIGTERM raise ``KeyboardInterrupt`` (outside :meth:`critical`
    blocks); leaving the block records the status (``finished``, ``interrupted`` and, after an
    interrupt, a checkpoint of the last commit; ``failed`` on any other exception).
    """

    def __init__(self, directory: Path, config: Any, record: dict[str, Any], checkpoint: dict[str, Any] | None):
        self.directory = directory
        self.config = config
        self.options: RunOptions = config
        self.record = record  # run.json
        self.resumed = checkpoint is not None or bool(record.get("resumes"))
        self._checkpoint = checkpoint  # state.json of the checkpoint resumed from, if any
        self.state: dict[str, Any] = copy.deepcopy(checkpoint["state"]) if checkpoint else {}
        self.learners: dict[str, Any] = {}
        self.store: Any = None
        self.store_runs: dict[str, int] = {}
        self.logger: Any = None
        self.guard = InterruptGuard(SIGTERM_TOO)
        self.progress = progress_bar()
        self._commit: dict[str, Any] | None = checkpoint
        self._checkpointed = checkpoint is not None
        self._delete_first = False
        self.no_checkpoints: str | None = None  # set to the reason when this run cannot checkpoint its learners
        self._resources: list[Any] = []  # closed when the run ends (:meth:`closes`)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, config: Any, *, recipe: str | None = None) -> Run:
        """Check the run directory against ``resume``/``overwrite`` (see the module docstring); changes nothing yet.

        On resume, the run's saved config is used (:attr:`config`): a key given now that differs from
        both the saved value and the recipe's default (so it was set on purpose) is an error naming
        it, except the keys of :data:`RUN_CONTROL_KEYS`. The directory is created (or deleted, with
        ``overwrite``) when the run is entered (``with run:``), so a recipe can still refuse its config
        in between without leaving anything behind.
        """
        options: RunOptions = config
        recipe = recipe or type(config).__module__.rpartition(".")[2]  # the recipe module that defines the config
        if options.resume and options.overwrite:
            raise ConfigError("resume=true and overwrite=true contradict each other", hint="give one of them")
        bad = [s for s in options.logger if s not in ("jsonl", "tensorboard", "wandb")]
        if bad:
            raise ConfigError(f"unknown logger {bad[0]!r}", hint="logger takes a list of jsonl, tensorboard, wandb")
        name = str(config.run_name)
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ConfigError(f"run_name {name!r} must be a plain directory name", hint="e.g. run_name=textworld_grpo_lr3e-4")
        directory = Path(config.output_dir) / name
        existing = directory.is_dir() and any((directory / marker).exists() for marker in _RUN_MARKERS)
        record = _read_record(directory) if existing else None
        checkpoint = None
        if options.resume:
            if record is None:
                raise ConfigError(f"nothing to resume: {directory} holds no run", hint="leave resume out to start it")
            _check_resumable(directory, record)
            config = _resumed_config(config, record["config"])
            checkpoint = _read_checkpoint(directory)
            record.update(status="running", pid=os.getpid(), host=socket.gethostname(), resumes=record.get("resumes", 0) + 1,
                          resumed_at=time.time(), git_sha=git_sha())  # fmt: skip
        else:
            if existing and not options.overwrite:
                status = record.get("status", "finished") if record else "finished"
                raise ConfigError(
                    f"run {name!r} already exists in {config.output_dir} ({status}); it is not overwritten",
                    hint="choose a new run_name, resume=true to continue it, or overwrite=true to start it over",
                )
            record = {"recipe": recipe, "run_name": name, "status": "running", "config": config_dict(config),
                      "git_sha": git_sha(), "started_at": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                      "wandb_id": f"{name}-{uuid.uuid4().hex[:8]}", "store_runs": {},
                      "overwrote": bool(options.overwrite)}  # fmt: skip
        from agentrl import __version__

        record["agentrl_version"] = __version__
        run = cls(directory, config, record, checkpoint)
        run._delete_first = bool(options.overwrite and existing)
        return run

    # ------------------------------------------------------------------ the pieces a recipe uses

    def open_store(self, names: Mapping[str, str], *, env_id: str, kind: str = "train") -> tuple[Any, dict[str, int]]:
        """The run's trajectory store and one store run per entry of ``names`` (``{key: run name}``).

        Fresh: new store runs (status running, the resolved config, git SHA); a run of the same name
        already in a shared store is an error (or deleted, when this run was started with
        ``overwrite=true``). Resumed: the same store runs, cut back to the last commit.
        """
        from agentrl.store import open_store

        url = self.config.store or f"sqlite:///{(self.directory / 'store.db').resolve()}"
        store = open_store(url)
        self.store = store
        saved = dict(self.record.get("store_runs") or {})
        if self.resumed and set(saved) == set(names):
            watermarks = (self._commit or {}).get("watermarks", {})
            for key, run_id in saved.items():
                store.delete_episodes_after(run_id, int(watermarks.get(key, 0)))
                store.set_run_status(run_id, "running")
            self.store_runs = {key: int(run_id) for key, run_id in saved.items()}
        else:
            taken = [info for info in store.runs() if info.name in set(names.values())]
            if taken and (self.record.get("overwrote") or self.resumed):  # a resumed run that never recorded its ids
                for info in taken:
                    store.delete_run(info.id)
            elif taken:
                raise ConfigError(
                    f"the store {url} already has a run named {taken[0].name!r}; it is not overwritten",
                    hint="choose a new run_name, or overwrite=true to delete the old run",
                )
            config = config_dict(self.config)
            self.store_runs = {key: store.start_run(name, env_id=env_id, config=config, kind=kind) for key, name in names.items()}
        self.record["store"] = url
        self.record["store_runs"] = self.store_runs
        self._write_record()
        return store, dict(self.store_runs)

    def metrics_logger(self) -> Any:
        """The run's :class:`~agentrl.training.metrics.MetricsLogger`, cut back to the last commit on resume."""
        from agentrl.training.metrics import MetricsLogger

        commit = self._commit if self.resumed else None
        self.logger = MetricsLogger(
            self.directory, self.options.logger, config=config_dict(self.config), wandb_project=self.options.wandb_project,
            wandb_name=str(self.config.run_name), wandb_id=self.record.get("wandb_id"),
            resume_bytes=(commit or {}).get("metrics_bytes", 0) if self.resumed else None,
            resume_step=(commit or {}).get("step", 0) + 1 if self.resumed else None,
        )  # fmt: skip
        return self.logger

    def closes(self, resource: Any) -> Any:
        """Close ``resource`` (its ``close()``, last registered first) when the run ends, however it ends; returns it."""
        self._resources.append(resource)
        return resource

    def restore(self, learners: Mapping[str, Any]) -> bool:
        """Register the run's learners (``{key: Learner}``) and load the checkpoint into them; True if one was loaded."""
        self.learners = dict(learners)
        if self._checkpoint is None:
            return False
        source = self._checkpoint_dir()
        for key, learner in self.learners.items():
            learner.load_checkpoint(source / key)
        return True

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A block that changes learners, store or metrics: SIGINT/SIGTERM wait for its end, which commits."""
        with self.guard.shielded():
            yield
            commit = {
                "state": copy.deepcopy(self.state),
                "watermarks": {key: self.store.last_episode_id(run_id) for key, run_id in self.store_runs.items()}
                if self.store is not None else {},
                "metrics_bytes": self.logger.bytes_written() if self.logger is not None else 0,
                "step": max((learner.step for learner in self.learners.values()), default=0),
            }  # fmt: skip
            if commit != self._commit:  # a block that changed nothing needs no new checkpoint
                self._commit, self._checkpointed = commit, False

    def checkpoint(self) -> Path | None:
        """Save the last commit and the learners (atomically: a crash mid-save keeps the previous one)."""
        if self._commit is None or self._checkpointed or self.no_checkpoints:
            return None
        with self.guard.shielded():
            target = self.directory / CHECKPOINT_DIR
            tmp, old = target.with_name(CHECKPOINT_DIR + ".tmp"), target.with_name(CHECKPOINT_DIR + ".old")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for key, learner in self.learners.items():
                learner.save_checkpoint(tmp / key)
            (tmp / STATE_FILE).write_text(json.dumps({**self._commit, "saved_at": time.time()}, indent=1) + "\n")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            self._checkpointed = True
        return target

    def maybe_checkpoint(self, iteration: int) -> None:
        """Checkpoint when ``iteration`` is a multiple of ``checkpoint_every``."""
        every = self.options.checkpoint_every
        if every > 0 and iteration % every == 0:
            self.checkpoint()

    def say(self, line: str) -> None:
        """Print one line for the person watching (above the progress bars)."""
        self.progress.console.print(line, highlight=False, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def track(self, description: str, total: int | None = None) -> Iterator[Tracker]:
        """A progress bar (with ETA) for one phase, removed when the phase ends."""
        task = self.progress.add_task(description, total=total)
        try:
            yield Tracker(self.progress, task)
        finally:
            self.progress.remove_task(task)

    def write_json(self, relative: str, data: Any) -> Path:
        """Write ``data`` under the run directory (atomically); returns the path."""
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Run:
        third_party_output(self.options.verbose)
        if self._delete_first:
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_record()
        self.guard.__enter__()
        self.progress.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        from agentrl.store.runs import status_after

        status = status_after(exc)
        if status != "finished" and self._commit is None and not self.resumed:
            self._discard(status)  # stopped before anything was committed: nothing to keep or resume
            return
        try:
            if status == "interrupted":
                self.guard.requested = False  # handled here: the checkpoint below must not raise it again
                saved = self.checkpoint() or _checkpoint_dir(self.directory)
                where = f"checkpoint in {saved}" if saved.exists() else "no checkpoint yet (resume starts it over)"
                if self.no_checkpoints:
                    where = f"no checkpoint ({self.no_checkpoints})"
                self.say(f"[{self.config.run_name}] interrupted; {where}; continue with resume=true")
        finally:
            self._close(status)

    def _close_resources(self) -> None:
        """Close what :meth:`closes` registered; one that fails to close is logged, never blocks the rest."""
        while self._resources:
            resource = self._resources.pop()
            try:
                resource.close()
            except Exception as exc:  # the run's status must still be recorded
                log.warning("closing %s failed: %s", type(resource).__name__, exc)

    def _close(self, status: str) -> None:
        self.progress.stop()
        self._close_resources()
        self.guard.__exit__(None, None, None)
        self.record.update(status=status, ended_at=time.time(), pid=None)
        self._write_record()
        if self.store is not None:
            for run_id in self.store_runs.values():
                self.store.set_run_status(run_id, status)
            self.store.close()
        if self.logger is not None:
            self.logger.close()

    def _discard(self, status: str) -> None:
        """Remove a fresh run that stopped before its first commit (a model that would not load, Ctrl-C at once)."""
        self.progress.stop()
        self._close_resources()
        self.guard.__exit__(None, None, None)
        if self.logger is not None:
            self.logger.close()
        if self.store is not None:
            for run_id in self.store_runs.values():
                self.store.delete_run(run_id)
            self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        if status == "interrupted":
            self.say(f"[{self.config.run_name}] interrupted before anything was saved; nothing was kept")

    # ------------------------------------------------------------------ files

    def _checkpoint_dir(self) -> Path:
        return _checkpoint_dir(self.directory)

    def _write_record(self) -> None:
        self.record["updated_at"] = time.time()
        self.write_json(RUN_FILE, self.record)


@dataclasses.dataclass
class Tracker:
    """One phase's progress bar: ``advance`` fits ``on_episode`` callbacks, ``update`` fits ``on_step(done, total)``."""

    progress: Any
    task: Any

    def advance(self, *_: Any) -> None:
        self.progress.advance(self.task)

    def update(self, done: int, total: int | None = None) -> None:
        self.progress.update(self.task, completed=done, total=total)


def _read_record(directory: Path) -> dict[str, Any] | None:
    path = directory / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc})", hint="overwrite=true starts the run over") from None


def _checkpoint_dir(directory: Path) -> Path:
    """The checkpoint directory, or the previous one when a save was cut between its two renames."""
    target = directory / CHECKPOINT_DIR
    old = directory / (CHECKPOINT_DIR + ".old")
    return target if target.exists() or not old.exists() else old


def _read_checkpoint(directory: Path) -> dict[str, Any] | None:
    path = _checkpoint_dir(directory) / STATE_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    saved.pop("saved_at", None)
    return saved


def _check_resumable(directory: Path, record: dict[str, Any]) -> None:
    status = record.get("status")
    if status == "finished":
        raise ConfigError(f"run {directory.name!r} finished; there is nothing to resume",
                          hint="choose a new run_name, or overwrite=true to start it over")  # fmt: skip
    pid, host = record.get("pid"), record.get("host")
    if status == "running" and pid and host == socket.gethostname() and pid != os.getpid() and _alive(int(pid)):
        raise ConfigError(f"run {directory.name!r} is running (pid {pid})", hint="stop it first (Ctrl-C or kill PID)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flatten(value, f"{prefix}{key}.").items()} or {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def _resumed_config(given: Any, saved: dict[str, Any]) -> Any:
    """The saved config with this invocation's run-control keys; a deliberate change elsewhere is an error."""
    now, before, default = _flatten(config_dict(given)), _flatten(saved), _flatten(config_dict(type(given)()))
    changed = sorted(
        key for key, value in now.items()
        if key.split(".")[0] not in RUN_CONTROL_KEYS and value != before.get(key) and value != default.get(key)
    )  # fmt: skip
    if changed:
        shown = ", ".join(f"{k}={now[k]!r} (run: {before.get(k)!r})" for k in changed[:4])
        raise ConfigError(f"resume continues the run with its own config; this one differs: {shown}",
                          hint="leave those keys out, or start a new run_name")  # fmt: skip
    control = {key: getattr(given, key) for key in RUN_CONTROL_KEYS}
    return build_config(type(given), {**saved, **control})
