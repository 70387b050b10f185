"""A vLLM worker extension that loads a learner's published weights: vLLM's documented RL hook.

vLLM lets an RL framework add methods to its GPU workers without subclassing them: the engine is
built with ``worker_extension_cls="agentrl.policies.vllm_worker.WeightSyncExtension"`` (``vllm.LLM``
keyword, or ``vllm serve --worker-extension-cls ...``), and the extension's methods are called on
every worker with ``collective_rpc``:

* in process: ``llm.collective_rpc("agentrl_load_weights", kwargs={"path": ..., "version": ...})``;
* in a server (``VLLM_SERVER_DEV_MODE=1 vllm serve ...``): ``POST /collective_rpc`` with
  ``{"method": "agentrl_load_weights", "kwargs": {"path": "...", "version": "N"}}``. vLLM passes only
  strings through that route, which is why the method takes the version as text too.

The weights travel as a path to a version directory on a filesystem the workers can read
(:mod:`agentrl.policies.published`: full weights in ``model.safetensors``): every worker reads the
file and hands the tensors to its model's own ``load_weights``, which maps checkpoint names onto
vLLM's fused and tensor-parallel-sharded parameters (the same call vLLM uses when it loads a
checkpoint). LoRA adapters do not come this way: vLLM loads an adapter directory itself
(``LoRARequest`` / ``POST /v1/load_lora_adapter``).

After a load the caller must reset the prefix cache (``llm.reset_prefix_cache()`` / ``POST
/reset_prefix_cache``): its KV blocks were computed with the old weights.

This module imports nothing from vLLM or torch at import time: vLLM imports it inside its workers.
"""

from __future__ import annotations

from typing import Any

LOAD_METHOD = "agentrl_load_weights"  # the collective_rpc method name (the agentrl serve route accepts the same)


def load_full_weights(model: Any, path: str, version: str | int | None = None) -> dict[str, Any]:
    """Read full weights from version directory ``path`` and give them to ``model.load_weights``.

    ``model`` is a vLLM model (``load_weights(weights: Iterable[tuple[str, Tensor]])``). Returns
    ``{"version", "tensors", "bytes"}``: the answer each worker sends back through ``collective_rpc``.
    An adapter directory is refused: adapters are loaded by vLLM's LoRA manager.
    """
    from agentrl.policies.base import PolicyError
    from agentrl.policies.published import is_adapter_dir, read_version

    if is_adapter_dir(path):
        raise PolicyError(f"{path} holds LoRA adapters: load them with a LoRARequest (/v1/load_lora_adapter), "
                          "not as full weights")  # fmt: skip
    published = read_version(path, None if version is None else int(version))
    model.load_weights(weights=list(published.tensors.items()))
    size = sum(t.numel() * t.element_size() for t in published.tensors.values())
    return {"version": published.version, "tensors": len(published.tensors), "bytes": int(size)}


class WeightSyncExtension:
    """Mixed into vLLM's GPU worker by ``worker_extension_cls``: ``self.model_runner.model`` is the worker's model."""

    def agentrl_load_weights(self, path: str, version: str | int | None = None) -> dict[str, Any]:
        """Load the full weights published in ``path`` (see :func:`load_full_weights`)."""
        return load_full_weights(self.model_runner.model, path, version)  # type: ignore[attr-defined]
