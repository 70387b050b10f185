"""Training metrics: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when a run lists them.

A recipe's ``logger`` list picks the sinks: ``jsonl`` (the run's own record, always written: resume,
``agentrl plot`` and ``agentrl view`` read it), ``tensorboard`` (event files under
``<run_dir>/tensorboard``) and ``wandb`` (a W&B run that gets the recipe's full resolved config;
``WANDB_MODE=offline`` keeps it on disk under ``<run_dir>/wandb``).

Resuming: :class:`MetricsLogger` is given where the run's last checkpoint left off. ``metrics.jsonl``
is cut back to the size it had then (lines written after the checkpoint are dropped, so no step is
written twice), TensorBoard purges the events after that step, and W&B continues the same run id.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SINKS = ("jsonl", "tensorboard", "wandb")


class MetricsLogger:
    """Writes one JSON object per logged step to ``<run_dir>/metrics.jsonl`` (and to the other sinks).

    ``sinks``: any of :data:`SINKS` (``jsonl`` is written whether listed or not). ``config`` is what
    W&B records as the run's config. ``wandb_id`` names the W&B run (a resumed run passes the same
    id). ``resume_bytes``/``resume_step``: where a resumed run's last checkpoint left ``metrics.jsonl``
    and the step counter; ``None`` starts a fresh file. Non-finite numbers are written as ``null`` so
    the file stays valid JSON.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        sinks: Sequence[str] = ("jsonl", "tensorboard"),
        *,
        config: dict[str, Any] | None = None,
        wandb_project: str = "agentrl",
        wandb_name: str | None = None,
        wandb_id: str | None = None,
        resume_bytes: int | None = None,
        resume_step: int | None = None,
    ):
        unknown = [s for s in sinks if s not in SINKS]
        if unknown:
            raise ValueError(f"unknown logger {unknown[0]!r}; choose from {', '.join(SINKS)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_bytes is None:
            self.path.write_bytes(b"")
        else:
            with self.path.open("ab") as f:
                f.truncate(resume_bytes)
        self._tb = None
        if "tensorboard" in sinks:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step)
        self._wandb = None
        if "wandb" in sinks:
            import wandb

            self._wandb = wandb.init(
                project=wandb_project, name=wandb_name, id=wandb_id, resume="allow" if wandb_id else None,
                dir=str(self.run_dir), config=config or {}, reinit="finish_previous",
            )  # fmt: skip

    def bytes_written(self) -> int:
        """The size of ``metrics.jsonl`` now: what a checkpoint records to resume from."""
        return self.path.stat().st_size

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            record[key] = value
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in numeric.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of ``<run_dir>/metrics.jsonl`` in order."""
    path = Path(run_dir) / "metrics.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
