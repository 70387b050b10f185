"""Versioned policy weights in a run directory: the learner publishes, rollout workers pick up.

Layout: ``<dir>/v<version>.pt`` (a ``state_dict`` saved with ``torch.save``) and ``<dir>/LATEST``
(the newest version number as text). Both are written to a temporary name and renamed, so a reader
never sees a half-written file and a crash mid-publish leaves the previous version in force. Old
versions are deleted once ``keep`` newer ones exist; a reader that loses the race re-reads LATEST.

Several machines need ``<dir>`` on a shared filesystem (or one store and a shared run directory);
one machine needs nothing else. The files are plain ``torch.save`` state dicts, so any process can
read them without agentrl.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LATEST = "LATEST"


class WeightPublisher:
    """The learner's side: :meth:`publish` writes version ``v`` atomically and prunes old ones."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def publish(self, state_dict: dict[str, Any], version: int) -> Path:
        """Write ``state_dict`` as ``version`` (tensors copied to CPU), then point LATEST at it."""
        import torch

        cpu_state = {k: v.detach().to("cpu") for k, v in state_dict.items()}
        target = self.directory / f"v{int(version)}.pt"
        tmp = target.with_suffix(".pt.tmp")
        torch.save(cpu_state, tmp)
        os.replace(tmp, target)
        _write_atomic(self.directory / LATEST, f"{int(version)}\n")
        for old in self.versions()[: -self.keep]:
            (self.directory / f"v{old}.pt").unlink(missing_ok=True)
        return target

    def versions(self) -> list[int]:
        """Versions present on disk, oldest first."""
        out = []
        for path in self.directory.glob("v*.pt"):
            stem = path.name[1:-3]
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)


def latest_version(directory: str | os.PathLike[str]) -> int | None:
    """The newest published version, or ``None`` before the first publish."""
    try:
        text = (Path(directory) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def load_latest(directory: str | os.PathLike[str], newer_than: int | None = None) -> tuple[int, dict[str, Any]] | None:
    """``(version, state_dict)`` of the newest version if it is newer than ``newer_than``, else ``None``."""
    import torch

    for _ in range(5):  # the file can be pruned between reading LATEST and opening it: read again
        version = latest_version(directory)
        if version is None or (newer_than is not None and version <= newer_than):
            return None
        try:
            state = torch.load(Path(directory) / f"v{version}.pt", map_location="cpu", weights_only=True)
        except FileNotFoundError:
            continue
        return version, state
    raise RuntimeError(f"could not read the latest weights in {directory}: versions were pruned while reading")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
