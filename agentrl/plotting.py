"""Learning curves from a run's ``metrics.jsonl`` (one JSON object per training step)."""

from __future__ import annotations

import json
from pathlib import Path

from agentrl.errors import AgentrlError


class PlotError(AgentrlError, ValueError):
    """The run has no readable metrics file, or not the metrics asked for."""

#: Panels drawn by default, each the first of its candidate metric names found in the run.
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "success rate": ("eval/success_rate", "success_rate", "rollout/success_rate"),
    "return": ("rollout/mean_return", "mean_return", "return"),
    "entropy": ("entropy", "batch_entropy", "entropy_mean"),
    "loss": ("loss", "policy_loss", "pg_loss"),
}


def read_metrics(path: str | Path) -> list[dict]:
    """Records of ``metrics.jsonl`` (``path`` may be the file or the run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"no metrics file at {path}", hint="give the run directory (it holds metrics.jsonl) or the file")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise PlotError(f"{path}:{line_no} is not valid JSON") from None
    return records


def plot_run(run: str | Path, output: str | Path | None = None, metrics: list[str] | None = None) -> Path:
    """Draw one panel per metric against ``step`` and save a PNG; returns its path.

    ``metrics`` names the keys to draw; by default the panels of :data:`DEFAULT_PANELS` that the
    run logged. Several runs of the same recipe can be compared by calling this per run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    keys = {k for r in records for k in r}
    if metrics:
        missing = [m for m in metrics if m not in keys]
        if missing:
            raise PlotError(f"metric(s) {', '.join(missing)} not in the run; it has: {', '.join(sorted(keys))}")
        panels = {m: m for m in metrics}
    else:
        panels = {title: next(n for n in names if n in keys) for title, names in DEFAULT_PANELS.items()
                  if any(n in keys for n in names)}
    if not panels:
        raise PlotError(f"nothing to plot: the run logged only {', '.join(sorted(keys)) or 'nothing'}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, key) in zip(axes[0], panels.items(), strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None)
        ax.set_title(f"{title} ({key})" if title != key else key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    fig.suptitle(run_dir.name, fontsize=10)
    fig.tight_layout()
    output = Path(output) if output else run_dir / "curves.png"
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
