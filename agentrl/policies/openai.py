"""A policy behind any OpenAI-compatible HTTP endpoint (vLLM, SGLang, ``agentrl serve``, hosted APIs).

Two modes:

* ``"completions"`` (token-exact): each prompt goes out as token ids to ``/completions`` with
  ``logprobs`` and vLLM's ``return_token_ids`` / ``return_tokens_as_token_ids``; sampled ids are read
  from the choice's ``token_ids`` (vLLM, ``agentrl serve``) or from ``"token_id:N"`` logprob tokens.
  A server that returns neither gives text-only completions (``token_ids=None``): fine for
  evaluation, never trained on.
* ``"chat"`` (text): the agent's messages go to ``/chat/completions``; completions are text only
  unless the server adds ``token_ids``. Used when there is no local tokenizer (hosted models). When
  the server says which stop string ended a choice (vLLM's and ``agentrl serve``'s ``stop_reason``),
  it is put back at the end of the text: the :class:`~agentrl.policies.base.SamplingParams` contract
  is that a completion ends with the stop string it hit, and OpenAI-shaped servers cut it off.

The requests of one ``generate`` call go out at once (one request per prompt or conversation, over an
``httpx.AsyncClient`` on a private event loop: pooled keep-alive connections, at most
``max_concurrency`` in flight). Prompt ``i`` of a call is sampled with seed ``sampling.seed + i``
(``agentrl serve`` gives each seeded request its own generator, so this equals
``HFPolicy.generate(prompts, sampling, seeds=[seed + i ...])``; the same seed for every prompt would
make a GRPO group's identical prompts identical samples).

Failures:

* connection errors, timeouts, 429 and 5xx are retried up to ``max_retries`` times. The wait is
  the server's ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms`` too) when it sends one,
  capped at ``max_retry_after`` seconds, else ``backoff * 2**attempt`` with jitter (a uniform draw in
  [50%, 100%] of it, so clients that failed together do not come back together); then one
  :class:`PolicyError` names the URL and the cause;
* any other 4xx is never retried: 401/403 raise at once with a hint about the API key, and a 400
  saying the prompt does not fit the model's context (``code "context_length_exceeded"``, or vLLM's
  "maximum context length" message) is no error at all: that prompt's completion comes back empty with
  ``finish_reason "length"`` and ``meta["context_overflow"] = True``, and the collector ends that
  episode as truncated (``truncated_reason "context_length"``), as with a local model. Other 4xx raise
  :class:`PolicyError` with the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from agentrl.policies.base import Capabilities, Completion, PolicyError, SamplingParams


class _HTTPFailure(Exception):
    """A response that is not 2xx (kept apart from transport errors)."""

    def __init__(self, status: int, message: str, code: str | None, retry_after: float | None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after


class OpenAIPolicy:
    """Client for an OpenAI-compatible server. ``base_url`` ends in ``/v1`` (added when missing)."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        mode: str = "completions",
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        max_concurrency: int = 64,
        token_id_extensions: bool = True,
        name: str | None = None,
        adapter_name: str = "agentrl-lora",
        update_timeout: float = 900.0,
    ):
        if mode not in ("completions", "chat"):
            raise ValueError(f"unknown mode {mode!r}; choose completions or chat")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.root_url = self.base_url.removesuffix("/v1")  # the server's own routes (weight updates) live here
        self.adapter_name = adapter_name
        self.update_timeout = update_timeout
        self._adapter_loaded = False
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.mode = mode
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.max_concurrency = max(1, int(max_concurrency))
        self.token_id_extensions = token_id_extensions
        self.version = 0
        self.stats = {"requests": 0, "retries": 0, "context_overflows": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        self.model = model or self._first_model()
        self.name = name or f"{self.base_url}#{self.model}"
        self.capabilities = Capabilities(token_ids=mode == "completions", chat_input=mode == "chat",
                                         weight_updates=mode == "completions")  # fmt: skip
        self.max_context: int | None = None  # the server says when a prompt does not fit

    # -- the Policy interface -------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per token-id prompt; the requests go out concurrently."""
        bodies = []
        for index, prompt in enumerate(prompts):
            body = self._sampling_body(sampling, index)
            body["prompt"] = [int(t) for t in prompt]
            body["logprobs"] = 1
            if self.token_id_extensions:
                body["return_tokens_as_token_ids"] = True
                body["return_token_ids"] = True
            bodies.append(body)
        replies = self._run_all("/completions", bodies)
        return [self._from_reply(reply, sampling, chat=False) for reply in replies]

    def generate_messages(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams) -> list[Completion]:
        """One chat completion per conversation (chat mode); the requests go out concurrently."""
        bodies = []
        for index, messages in enumerate(conversations):
            body = self._sampling_body(sampling, index)
            body["messages"] = messages
            body["logprobs"] = True
            bodies.append(body)
        replies = self._run_all("/chat/completions", bodies)
        return [self._from_reply(reply, sampling, chat=True) for reply in replies]

    def load_published(self, path: str | os.PathLike[str], version: int) -> None:
        """Make the server run the version a learner published in directory ``path`` (on a filesystem it can read).

        Full weights: ``POST /collective_rpc`` (method ``agentrl_load_weights``), then ``POST
        /reset_prefix_cache``; every worker must answer with ``version``. LoRA adapters: ``POST
        /v1/load_lora_adapter`` as ``<adapter_name>-v<version>``, later requests name that adapter, and the
        previous one is unloaded. See :mod:`agentrl.policies.weight_routes` for the protocol and the
        server flags it needs; a server without the routes is one :class:`PolicyError` saying which.
        """
        from agentrl.policies.published import is_adapter_dir
        from agentrl.policies.vllm_worker import LOAD_METHOD

        directory = str(Path(path).resolve())
        version = int(version)
        try:
            if is_adapter_dir(directory):
                name = f"{self.adapter_name}-v{version}"
                self._call_root("/v1/load_lora_adapter", {"lora_name": name, "lora_path": directory})
                previous = self.model if self._adapter_loaded else None
                self.model, self._adapter_loaded = name, True
                if previous is not None and previous != name:
                    self._call_root("/v1/unload_lora_adapter", {"lora_name": previous})
            else:
                body = {"method": LOAD_METHOD, "kwargs": {"path": directory, "version": str(version)}}
                reply = self._call_root("/collective_rpc", body)
                results = reply.get("results") if isinstance(reply, dict) else None
                if not results or any(not isinstance(r, dict) or r.get("version") != version for r in results):
                    raise PolicyError(f"{self.root_url}/collective_rpc: the workers did not all load version {version} "
                                      f"(answers: {str(results)[:300]})")  # fmt: skip
                self._call_root("/reset_prefix_cache", None)  # cached KV was computed with the old weights
        except PolicyError as exc:
            raise PolicyError(str(exc), hint=exc.hint or _WEIGHT_ROUTES_HINT) from None
        self.version = version

    def close(self) -> None:
        """Close the connection pool and its event loop (the policy can be used again afterwards)."""
        with self._lock:
            loop, client = self._loop, self._client
            self._loop = self._client = None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)

    # -- replies ----------------------------------------------------------------------------------

    def _from_reply(self, reply: dict[str, Any] | _HTTPFailure, sampling: SamplingParams, *, chat: bool) -> Completion:
        if isinstance(reply, _HTTPFailure):  # a context overflow: this prompt, and only it, did not fit
            return Completion(token_ids=None if chat else [], logprobs=None if chat else [], finish_reason="length",
                              text="", meta={"context_overflow": True, "error": reply.message})  # fmt: skip
        choice = (reply.get("choices") or [None])[0]
        if choice is None:
            raise PolicyError(f"{self.base_url}: the reply has no choices")
        text = ((choice.get("message") or {}).get("content") or "") if chat else choice.get("text")
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, str) and stop_reason in sampling.stop and text is not None:
            text += stop_reason
        return self._completion(choice, text)

    def _sampling_body(self, sampling: SamplingParams, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = int(sampling.seed) + index
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        return body

    def _completion(self, choice: dict[str, Any], text: str | None) -> Completion:
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        logprobs_block = choice.get("logprobs") or {}
        if "content" in logprobs_block:  # chat shape
            entries = logprobs_block.get("content") or []
            tokens = [e.get("token", "") for e in entries]
            logprobs = [float(e.get("logprob", 0.0)) for e in entries]
        else:  # completions shape
            tokens = list(logprobs_block.get("tokens") or [])
            logprobs = [float(x) if x is not None else 0.0 for x in logprobs_block.get("token_logprobs") or []]
        token_ids = choice.get("token_ids")
        if token_ids is None and tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            token_ids = [int(t.split(":", 1)[1]) for t in tokens]
        if token_ids is not None and len(logprobs) != len(token_ids):
            logprobs = None  # never pair ids with logprobs of other tokens
        return Completion(
            token_ids=[int(t) for t in token_ids] if token_ids is not None else None,
            logprobs=logprobs if logprobs else None,
            finish_reason=reason,  # type: ignore[arg-type]
            text=text,
        )

    def _call_root(self, path: str, body: dict[str, Any] | None) -> Any:
        """POST ``body`` to the server's own route ``path`` (outside ``/v1``); text replies come back as ``{"text": ...}``."""
        loop = self._ensure_loop()
        coroutine = self._request("POST", path, body, url=self.root_url + path, raw=True, timeout=self.update_timeout)
        reply = asyncio.run_coroutine_threadsafe(coroutine, loop).result()
        if isinstance(reply, _HTTPFailure):
            raise PolicyError(f"{self.root_url}{path}: HTTP {reply.status}: {reply.message}")
        return reply

    def _first_model(self) -> str:
        reply = self._run_all("/models", [None], method="GET")[0]
        data = reply.get("data") or [] if isinstance(reply, dict) else []
        if not data:
            raise PolicyError(f"{self.base_url}/models lists no model; pass the model name")
        return str(data[0]["id"])

    # -- transport: one event loop thread, one pooled AsyncClient ---------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import httpx

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="agentrl-openai-client", daemon=True).start()
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)

                async def make_client() -> Any:
                    return httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=headers)

                self._client = asyncio.run_coroutine_threadsafe(make_client(), loop).result()
                self._loop = loop
                weakref.finalize(self, loop.call_soon_threadsafe, loop.stop)  # a dropped policy leaves no thread
            return self._loop

    def _run_all(self, path: str, bodies: list[dict[str, Any] | None], method: str = "POST") -> list[Any]:
        """Send every body at once; the replies in order. Context overflows come back as :class:`_HTTPFailure`."""
        if not bodies:
            return []
        loop = self._ensure_loop()

        async def run() -> list[Any]:
            return await asyncio.gather(*(self._request(method, path, body) for body in bodies))

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None, *, url: str | None = None,
                       raw: bool = False, timeout: float | None = None) -> dict[str, Any] | _HTTPFailure:  # fmt: skip
        """One request with retries. ``raw``: a 2xx reply that is not JSON comes back as ``{"text": ...}``."""
        import httpx

        url = url or self.base_url + path
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            self.stats["requests"] += 1
            wait = None
            try:
                response = await self._client.request(method, url, json=body, timeout=timeout or self.timeout)
                if response.status_code < 300:
                    if raw and "json" not in response.headers.get("content-type", ""):
                        return {"text": response.text}
                    return response.json()
                failure = _failure(response)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"cannot connect ({type(exc).__name__}: {exc})"
            except json.JSONDecodeError as exc:
                last = f"the reply is not JSON ({exc})"
            else:
                if failure.status in (401, 403):
                    raise PolicyError(f"{url}: authentication failed (HTTP {failure.status}: {failure.message}); "
                                      "check --api-key or OPENAI_API_KEY")  # fmt: skip
                if failure.status == 400 and _is_context_overflow(failure):
                    self.stats["context_overflows"] += 1
                    return failure
                if failure.status != 429 and failure.status < 500:
                    raise PolicyError(f"{url}: HTTP {failure.status}: {failure.message}")
                last = f"HTTP {failure.status}: {failure.message}"
                wait = failure.retry_after
            if attempt == self.max_retries:
                break
            self.stats["retries"] += 1
            await asyncio.sleep(self._delay(attempt, wait))
        raise PolicyError(f"{url}: {last} (gave up after {self.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry ``attempt + 1``: the server's Retry-After, else jittered exponential backoff."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        base = self.backoff * 2**attempt
        return base * random.uniform(0.5, 1.0)


_WEIGHT_ROUTES_HINT = (
    "weight updates need the server's RL routes: vLLM started with VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls "
    "agentrl.policies.vllm_worker.WeightSyncExtension (LoRA: --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), "
    "or `agentrl serve --weights-dir DIR` with the published versions under DIR"
)


def _failure(response: Any) -> _HTTPFailure:
    message, code = response.reason_phrase or "error", None
    try:
        payload = response.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            message, code = str(error.get("message") or error), error.get("code")
        elif error or payload:
            message = str(error or payload.get("message") or payload)
    except Exception:
        if response.text:
            message = response.text[:500]
    return _HTTPFailure(response.status_code, message, str(code) if code is not None else None, _retry_after(response.headers))


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _is_context_overflow(failure: _HTTPFailure) -> bool:
    text = failure.message.lower()
    return failure.code == "context_length_exceeded" or "maximum context length" in text or "context length" in text
