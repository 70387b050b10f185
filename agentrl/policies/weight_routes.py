"""Weight updates over HTTP: ``agentrl serve`` offers the routes a vLLM server offers an RL trainer.

The protocol (one client, :meth:`agentrl.policies.openai.OpenAIPolicy.load_published`, speaks it to
both servers; the weights travel as a path to a version directory published by the learner,
:mod:`agentrl.policies.published`, on a filesystem the server can read):

* full weights: ``POST /collective_rpc`` ``{"method": "agentrl_load_weights", "kwargs": {"path": DIR,
  "version": "N"}}`` -> ``{"results": [{"version": N, "tensors": K, "bytes": B}, ...]}`` (one entry per
  worker), then ``POST /reset_prefix_cache``. vLLM has both routes with ``VLLM_SERVER_DEV_MODE=1`` and
  runs the method in every worker through ``--worker-extension-cls
  agentrl.policies.vllm_worker.WeightSyncExtension``;
* LoRA adapters: ``POST /v1/load_lora_adapter`` ``{"lora_name": NAME, "lora_path": DIR}``, then requests
  name ``NAME`` as their model, then ``POST /v1/unload_lora_adapter`` ``{"lora_name": OLD}`` for the
  adapter it replaces. vLLM has these with ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

``agentrl serve`` holds one set of weights: loading an adapter replaces the previous one, and while an
adapter is loaded only its name is served (``/v1/models`` lists it with the base model as ``parent``).

Safety: the routes exist only when the server was started with a weights directory (``agentrl serve
--weights-dir DIR``; else they answer 404, as vLLM's without dev mode), take the API key when one is
set, and load only version directories inside that directory (symbolic links resolved first, so a
link cannot lead out of it). A load runs on the thread that generates, between two batches
(:meth:`~agentrl.policies.batching.GenerateBatcher.call`), and full weights are checked against the
model (every name, every shape) before any is copied: a refused update leaves the old weights serving.
"""

# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations at run time, and
# ``Request`` is imported inside :func:`add_weight_routes` (FastAPI stays an optional dependency).
import asyncio
import os
from pathlib import Path
from typing import Any

from agentrl.policies.base import PolicyError
from agentrl.policies.openai_schema import APIError
from agentrl.policies.published import ADAPTER_CONFIG, ADAPTER_FILE, FULL_FILE, is_adapter_dir
from agentrl.policies.vllm_worker import LOAD_METHOD


class WeightUpdates:
    """The weight-update state of one server: where versions may come from, and which adapter is loaded."""

    def __init__(self, server: Any, weights_dir: str | os.PathLike[str]):
        self.server = server
        self.root = Path(weights_dir).resolve()
        self.adapter: str | None = None  # the LoRA adapter name being served, if any
        self.replaced: set[str] = set()  # adapter names loaded before (unloading them is a no-op)

    def version_dir(self, raw: Any, param: str) -> Path:
        """The checked directory ``raw`` names: inside :attr:`root` once links are resolved, with regular files."""
        if not isinstance(raw, str) or not raw:
            raise APIError(400, f"'{param}' must be a non-empty path string", code="invalid_value", param=param)
        try:
            path = Path(raw).resolve(strict=True)
        except (OSError, RuntimeError):
            raise APIError(404, f"no such weights directory: {raw}", code="not_found", param=param) from None
        if not path.is_relative_to(self.root):
            raise APIError(400, f"{raw} is outside the weights directory this server loads from ({self.root})",
                           code="invalid_value", param=param)  # fmt: skip
        if not path.is_dir():
            raise APIError(400, f"{raw} is not a directory", code="invalid_value", param=param)
        for name in (FULL_FILE, ADAPTER_FILE, ADAPTER_CONFIG):
            file = path / name
            if file.is_symlink() or (file.exists() and not file.is_file()):
                raise APIError(400, f"{file} is not a regular file", code="invalid_value", param=param)
        return path

    async def load(self, path: Path, version: int | None) -> None:
        """Run ``policy.load_published`` between two batches; a refused load is a 400 naming why."""
        from safetensors import SafetensorError

        policy = self.server.policy
        try:
            await asyncio.wrap_future(self.server.batcher.call(lambda: policy.load_published(path, version)))
        except (PolicyError, SafetensorError, RuntimeError, ValueError, KeyError, OSError) as exc:  # a file that does not fit
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise APIError(400, f"cannot load {path}: {first}", code="invalid_weights") from None

    async def collective_rpc(self, body: dict[str, Any]) -> dict[str, Any]:
        method = body.get("method")
        if method != LOAD_METHOD:
            raise APIError(400, f"method {method!r} is not supported by this server (supported: {LOAD_METHOD})",
                           code="invalid_value", param="method")  # fmt: skip
        kwargs = body.get("kwargs") or {}
        args = body.get("args") or []
        if not isinstance(kwargs, dict) or not isinstance(args, list):
            raise APIError(400, "'args' must be a list and 'kwargs' an object", code="invalid_value")
        raw_path = kwargs.get("path", args[0] if args else None)
        raw_version = kwargs.get("version", args[1] if len(args) > 1 else None)
        path = self.version_dir(raw_path, "path")
        if is_adapter_dir(path):
            raise APIError(400, f"{raw_path} holds LoRA adapters: load them with POST /v1/load_lora_adapter",
                           code="invalid_value", param="path")  # fmt: skip
        if self.adapter is not None:
            raise APIError(400, f"LoRA adapter {self.adapter!r} is loaded: this server takes adapters, not full weights",
                           code="invalid_value", param="path")  # fmt: skip
        try:
            version = None if raw_version is None else int(raw_version)
        except (TypeError, ValueError):
            raise APIError(400, f"'version' must be an integer, got {raw_version!r}", code="invalid_value", param="version") from None
        await self.load(path, version)
        return {"results": [{"version": self.server.policy.version}]}  # one worker: this process

    async def load_lora_adapter(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", code="invalid_value", param="lora_name")
        if name == self.server.model_name:
            raise APIError(400, f"the adapter name {name!r} is the base model's", code="invalid_value", param="lora_name")
        if name == self.adapter and not body.get("load_inplace"):
            raise APIError(400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                           "place, set 'load_inplace' to true.", code="invalid_value", param="lora_name")  # fmt: skip
        path = self.version_dir(body.get("lora_path"), "lora_path")
        if not is_adapter_dir(path):
            raise APIError(400, f"{path} holds full weights, not a LoRA adapter: load it with POST /collective_rpc",
                           code="invalid_value", param="lora_path")  # fmt: skip
        await self.load(path, None)
        if self.adapter is not None and self.adapter != name:
            self.replaced.add(self.adapter)
        self.adapter = name
        self.replaced.discard(name)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora_adapter(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if name == self.adapter:
            raise APIError(400, f"adapter {name!r} is the one this server runs; load another before unloading it",
                           code="invalid_value", param="lora_name")  # fmt: skip
        if name not in self.replaced:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", code="not_found", param="lora_name")
        self.replaced.discard(name)
        return f"Success: LoRA adapter '{name}' removed successfully."


def add_weight_routes(app: Any, updates: WeightUpdates, auth: Any) -> None:
    """Add the weight-update routes of the module docstring to ``app`` (``auth`` is the API-key dependency)."""
    from fastapi import Depends, Request
    from fastapi.responses import PlainTextResponse

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_value")
        return body

    @app.post("/collective_rpc", dependencies=[Depends(auth)])
    async def collective_rpc(request: Request) -> dict[str, Any]:
        return await updates.collective_rpc(await json_body(request))

    @app.post("/reset_prefix_cache", dependencies=[Depends(auth)])
    async def reset_prefix_cache() -> PlainTextResponse:
        return PlainTextResponse("")  # HFPolicy keeps no KV cache between requests

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(auth)])
    async def load_lora_adapter(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await updates.load_lora_adapter(await json_body(request)))

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(auth)])
    async def unload_lora_adapter(request: Request) -> PlainTextResponse:
        return PlainTextResponse(updates.unload_lora_adapter(await json_body(request)))
