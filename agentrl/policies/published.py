"""The on-disk format of one published policy version, and how a rollout engine reads it.

A learner publishes each new policy version as a directory (:mod:`agentrl.distributed.weights`
writes them atomically and prunes old ones); every rollout backend loads that directory as it is:
``HFPolicy`` and ``agentrl serve`` read it here, vLLM's worker extension
(:mod:`agentrl.policies.vllm_worker`) reads it in the engine's workers, and vLLM's own LoRA loader
reads an adapter directory. One of:

* ``model.safetensors``: full weights, a ``state_dict`` under transformers' checkpoint names. Tensors
  that shared storage (tied embeddings) are stored once; the file's metadata ``agentrl_tied`` maps each
  dropped key to the key that holds the tensor, and :func:`read_version` puts it back;
* ``adapter_model.safetensors`` + ``adapter_config.json``: LoRA adapters in PEFT's saved format
  (``PeftModel.from_pretrained(base, dir)`` and vLLM's ``LoRARequest`` load the directory as it is).

Both files carry ``agentrl_version`` in their safetensors metadata. The format lives in the data
plane (here) so that policies can read it without importing the learner's side.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.policies.base import PolicyError

FULL_FILE = "model.safetensors"  # the name transformers gives a single-file checkpoint
ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's names
ADAPTER_CONFIG = "adapter_config.json"
TIED_METADATA = "agentrl_tied"  # safetensors metadata: {dropped key: key holding the same tensor}
VERSION_METADATA = "agentrl_version"


@dataclass(frozen=True)
class PublishedWeights:
    """One published version, read into memory: full weights, or LoRA adapters with their config."""

    version: int
    path: Path  # the version's directory (may be pruned once loaded; the tensors are in memory)
    tensors: dict[str, Any]  # state_dict (full) or PEFT-keyed adapter tensors, on the CPU
    adapter_config: dict[str, Any] | None = None  # adapter_config.json; None for full weights

    @property
    def is_adapter(self) -> bool:
        return self.adapter_config is not None


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """Whether the version directory ``path`` holds LoRA adapters (else full weights); an error if neither."""
    path = Path(path)
    if (path / ADAPTER_FILE).is_file():
        return True
    if (path / FULL_FILE).is_file():
        return False
    raise PolicyError(f"{path} is not a published weights version (neither {FULL_FILE} nor {ADAPTER_FILE} in it)")


def read_version(path: str | os.PathLike[str], version: int | None = None) -> PublishedWeights:
    """Read the version directory ``path`` into CPU memory (``version``: default from the file's metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    adapter = is_adapter_dir(path)
    file = path / (ADAPTER_FILE if adapter else FULL_FILE)
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if version is None:
        version = int(metadata.get(VERSION_METADATA, "-1"))
    tensors = load_file(str(file))
    if adapter:
        return PublishedWeights(version, path, tensors, json.loads((path / ADAPTER_CONFIG).read_text()))
    for alias, source in json.loads(metadata.get(TIED_METADATA, "{}")).items():
        tensors[alias] = tensors[source]
    return PublishedWeights(version, path, tensors)
