"""Training metrics to JSONL (always), TensorBoard (when installed) and Weights & Biases (opt-in)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per training step to ``<run_dir>/metrics.jsonl``.

    TensorBoard event files go to ``<run_dir>/tensorboard`` when ``tensorboard=True`` and the
    ``tensorboard`` package is installed; W&B is used only when ``wandb_project`` is given (and then
    must be installed). Non-finite numbers are written as ``null`` so the file stays valid JSON.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], tensorboard: bool = True, wandb_project: str | None = None
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._wandb = None
        if wandb_project is not None:
            import wandb

            self._wandb = wandb.init(project=wandb_project, dir=str(self.run_dir))

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
            self._wandb.log(numeric, step=step)

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
