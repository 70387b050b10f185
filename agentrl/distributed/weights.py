"""Versioned policy weights in a run directory: the learner publishes, rollout workers pick up.

Layout (one directory per version, safetensors inside, so any process reads them without agentrl)::

    <dir>/LATEST                           the newest version number, as text
    <dir>/v<N>/model.safetensors           full weights (a ``state_dict``), or
    <dir>/v<N>/adapter_model.safetensors   LoRA adapters in PEFT's saved format, with
    <dir>/v<N>/adapter_config.json         (``PeftModel.from_pretrained(base, "<dir>/v<N>")`` and vLLM's
                                           ``LoRARequest`` load the directory as it is)

Publishing is atomic: a version is written to a hidden temporary directory, its files flushed to
disk, and the directory renamed to ``v<N>``; only then does ``LATEST`` (also written and renamed)
point at it. A reader never sees a half-written version and a crash mid-publish leaves the previous
one in force (its leftovers are removed at the next publish).

Pruning keeps the newest ``keep`` versions and never removes one a reader is loading. A reader holds
a shared ``flock`` on the version's directory while it reads (:func:`load_latest`); the publisher
removes an old version only under an exclusive, non-blocking lock on it, and skips it (until the next
publish) when a reader holds it. It renames the directory away before deleting it, so a reader that
opened the directory and then waited on the lock sees it is gone and reads ``LATEST`` again.
``flock`` works between processes on one machine; on NFS, Linux maps it to POSIX byte-range locks. A
filesystem without working locks still gets atomic publishes, and a reader that loses a race against
pruning gets ``FileNotFoundError`` and re-reads ``LATEST``.

Several machines need ``<dir>`` on a shared filesystem (or one store and a shared run directory);
one machine needs nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The format of one version directory (and how rollout engines read it) lives with the policies.
from agentrl.policies.published import ADAPTER_CONFIG, ADAPTER_FILE, FULL_FILE, PublishedWeights, read_version
from agentrl.policies.published import TIED_METADATA as _TIED

__all__ = ["ADAPTER_CONFIG", "ADAPTER_FILE", "FULL_FILE", "LATEST", "PublishedWeights", "WeightPublisher",
           "hold_latest", "latest_version", "load_latest", "publish_weights"]  # fmt: skip

LATEST = "LATEST"
_TMP_PREFIX = ".tmp-v"
_TRASH_PREFIX = ".pruned-v"


class WeightPublisher:
    """The learner's side: publish version ``v`` atomically and prune all but the newest ``keep``.

    ``keep`` >= 1. The actor-learner keeps ``max_staleness + 1`` versions: the behaviour policy of
    every episode the learner may still train on stays on disk (to re-score or audit a batch). Safety
    against a concurrent reader does not depend on ``keep``: see the module docstring.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def publish(self, state_dict: dict[str, Any], version: int) -> Path:
        """Publish full weights (``state_dict``, tensors copied to the CPU) as ``version``; returns its directory.

        Tensors that share storage (tied embeddings) are written once; the file's metadata records
        the alias and :func:`load_latest` restores it, so ``load_state_dict(strict=True)`` accepts it.
        """
        from safetensors.torch import save_file

        tensors, tied = _dedupe_shared(state_dict)
        metadata = {"format": "pt", "agentrl_version": str(int(version))}
        if tied:
            metadata[_TIED] = json.dumps(tied, sort_keys=True)
        return self._write(version, lambda tmp: save_file(tensors, str(tmp / FULL_FILE), metadata=metadata))

    def publish_adapter(self, tensors: dict[str, Any], adapter_config: dict[str, Any], version: int) -> Path:
        """Publish LoRA adapters in PEFT's format (``adapter_model.safetensors`` + ``adapter_config.json``)."""
        from safetensors.torch import save_file

        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

        def write(tmp: Path) -> None:
            save_file(cpu, str(tmp / ADAPTER_FILE), metadata={"format": "pt", "agentrl_version": str(int(version))})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

        return self._write(version, write)

    def versions(self) -> list[int]:
        """Versions present on disk, oldest first."""
        return sorted(int(p.name[1:]) for p in self.directory.glob("v*") if p.name[1:].isdigit() and p.is_dir())

    def _write(self, version: int, write_files) -> Path:
        version = int(version)
        self._remove_leftovers()
        tmp = self.directory / f"{_TMP_PREFIX}{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_files(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        target = self.directory / f"v{version}"
        if target.exists():  # re-publishing a version (a resumed run): take the old one away under its lock
            self._remove(target, wait=True)
        os.rename(tmp, target)
        _write_atomic(self.directory / LATEST, f"{version}\n")
        _fsync(self.directory)
        for old in self.versions()[: -self.keep]:
            self._remove(self.directory / f"v{old}", wait=False)
        return target

    def _remove(self, path: Path, *, wait: bool) -> bool:
        """Delete a version directory under an exclusive lock; ``False`` when a reader holds it and ``wait`` is off."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False  # a reader is loading it: removed at a later publish
            trash = self.directory / f"{_TRASH_PREFIX}{path.name[1:]}-{os.getpid()}-{id(path)}"
            os.rename(path, trash)  # gone for readers at once; they re-read LATEST
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def _remove_leftovers(self) -> None:
        """Temporary and half-deleted directories a killed publisher left behind (never read by anyone)."""
        for path in self.directory.iterdir():
            if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)


def latest_version(directory: str | os.PathLike[str]) -> int | None:
    """The newest published version, or ``None`` before the first publish."""
    try:
        text = (Path(directory) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def load_latest(directory: str | os.PathLike[str], newer_than: int | None = None) -> PublishedWeights | None:
    """The newest version, read into memory, if it is newer than ``newer_than``; else ``None``.

    Holds a shared lock on the version's directory while reading, so the publisher cannot prune it
    mid-read; a version pruned before the lock was taken is noticed and ``LATEST`` read again.
    """
    for _ in range(10):
        try:
            with hold_latest(directory, newer_than) as held:
                return None if held is None else _read_version(held[1], held[0])
        except FileNotFoundError:
            continue  # pruned under us on a filesystem without working locks: read LATEST again
        except OSError as exc:
            if exc.errno != errno.ESTALE:  # NFS: the directory went away under us
                raise
    raise RuntimeError(f"could not read the latest weights in {directory}: versions kept disappearing while reading")


@contextlib.contextmanager
def hold_latest(directory: str | os.PathLike[str], newer_than: int | None = None) -> Iterator[tuple[int, Path] | None]:
    """``(version, directory of it)`` of the newest version newer than ``newer_than`` (else ``None``), kept on disk
    while the ``with`` block runs.

    The shared lock :func:`load_latest` takes while reading is held for the whole block, so a reader
    that is not this process (a vLLM engine or an ``agentrl serve`` told to load the path) can read the
    directory before the publisher may prune it.
    """
    directory = Path(directory)
    for _ in range(10):
        version = latest_version(directory)
        if version is None or (newer_than is not None and version <= newer_than):
            yield None
            return
        path = directory / f"v{version}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while the publisher is deleting this very version
            if not _same_file(fd, path):
                continue  # pruned (or replaced) between our open and our lock
            yield version, path
            return
        finally:
            os.close(fd)
    raise RuntimeError(f"could not read the latest weights in {directory}: versions kept disappearing while reading")


def publish_weights(publisher: WeightPublisher, learner: Any) -> Path:
    """Publish ``learner``'s current policy as version ``learner.step``; returns the version's directory.

    What a learner must offer (the contract the drivers rely on): ``step``, and either
    ``lora_adapter()`` returning ``(tensors, adapter_config)`` when it trains LoRA adapters (only
    they are published: a few MB instead of the whole model, and vLLM loads them as they are), or
    ``full_state_dict()`` (an FSDP learner: the unsharded weights, gathered on rank 0), or ``model``
    (whose ``state_dict()`` is published).
    """
    adapter = learner.lora_adapter() if hasattr(learner, "lora_adapter") else None
    if adapter is not None:
        tensors, config = adapter
        return publisher.publish_adapter(tensors, config, learner.step)
    full = getattr(learner, "full_state_dict", None)
    return publisher.publish(full() if full is not None else learner.model.state_dict(), learner.step)


def _read_version(path: Path, version: int) -> PublishedWeights:
    return read_version(path, version)


def _dedupe_shared(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """CPU copies of the tensors with storage-sharing duplicates dropped, and ``{dropped: kept}``.

    Sharing is detected on the tensors as given (before any copy to the CPU breaks it): same
    storage, offset, shape and strides means the same tensor (tied input and output embeddings).
    """
    kept: dict[tuple, str] = {}
    tensors: dict[str, Any] = {}
    tied: dict[str, str] = {}
    for key, value in state_dict.items():
        value = value.detach()
        ident = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 value.stride(), value.dtype)  # fmt: skip
        if value.numel() and ident in kept:
            tied[key] = kept[ident]
            continue
        kept[ident] = key
        tensors[key] = value.to("cpu").contiguous()
    return tensors, tied


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
