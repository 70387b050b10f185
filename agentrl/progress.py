"""What a person watching a long command sees: Rich progress bars with an ETA, and no third-party noise.

:func:`progress_bar` is the one bar style every long phase uses (rollouts, the supervised warm-up,
evaluations, ``agentrl envs check``): what is running, a bar, done/total, elapsed time and the time
left. It is transient, so a log file keeps only the lines a command prints on purpose (one per
training iteration), not bar redraws. :func:`third_party_output` silences the progress bars and info
logs of transformers and huggingface_hub (their weight-loading bars would interleave with ours)
unless a run asks to be verbose.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console | None = None, *, transient: bool = True) -> Progress:
    """A Rich ``Progress``: description, bar, ``done/total``, elapsed and remaining time (ETA)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=transient,
    )  # fmt: skip


def third_party_output(verbose: bool) -> None:
    """Show (``verbose``) or hide the progress bars and info logs of transformers and huggingface_hub.

    Hidden, they still report errors (log level ERROR). Only libraries already importable are touched;
    nothing is imported that is not installed.
    """
    level = logging.INFO if verbose else logging.ERROR
    try:
        import transformers.utils.logging as hf_logging
    except ImportError:
        hf_logging = None  # type: ignore[assignment]
    if hf_logging is not None:
        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    try:
        from huggingface_hub import utils as hub_utils
    except ImportError:
        hub_utils = None  # type: ignore[assignment]
    if hub_utils is not None:
        (hub_utils.enable_progress_bars if verbose else hub_utils.disable_progress_bars)()
    for name in ("datasets", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def tick(progress: Progress | None, task: Any, advance: float = 1) -> None:
    """Advance ``task`` of ``progress`` (no-op without a bar): what ``on_episode`` callbacks call."""
    if progress is not None and task is not None:
        progress.advance(task, advance)
