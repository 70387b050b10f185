"""A policy behind any OpenAI-compatible HTTP endpoint (vLLM, SGLang, ``agentrl serve``, hosted APIs).

Two modes:

* ``"completions"`` (token-exact): prompts go out as token ids to ``/completions`` with
  ``logprobs`` and vLLM's ``return_tokens_as_token_ids``; sampled ids are read from the choice's
  ``token_ids`` (vLLM ``return_token_ids``, ``agentrl serve``) or from ``"token_id:N"`` logprob tokens.
  A server that returns neither gives text-only completions (``token_ids=None``): fine for
  evaluation, never trained on.
* ``"chat"`` (text): the agent's messages go to ``/chat/completions``; completions are text only
  unless the server adds ``token_ids``. Used when there is no local tokenizer (hosted models).

Failures: connection errors, timeouts, 429 and 5xx are retried with exponential backoff
(``backoff * 2**attempt`` seconds, ``max_retries`` times), then raise one :class:`PolicyError` that
names the URL and the cause; 401/403 raise at once with a hint about the API key.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from agentrl.policies.base import Capabilities, Completion, PolicyError, SamplingParams


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
        token_id_extensions: bool = True,
        name: str | None = None,
    ):
        if mode not in ("completions", "chat"):
            raise ValueError(f"unknown mode {mode!r}; choose completions or chat")
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.mode = mode
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.token_id_extensions = token_id_extensions
        self.version = 0
        self.model = model or self._first_model()
        self.name = name or f"{self.base_url}#{self.model}"
        self.capabilities = Capabilities(token_ids=mode == "completions", chat_input=mode == "chat")
        self.max_context: int | None = None  # the server says when a prompt does not fit

    # -- the Policy interface -------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per token-id prompt (one batched ``/completions`` request)."""
        if not prompts:
            return []
        body = self._sampling_body(sampling)
        body["prompt"] = [list(map(int, p)) for p in prompts]
        body["logprobs"] = 1
        if self.token_id_extensions:
            body["return_tokens_as_token_ids"] = True
            body["return_token_ids"] = True
        reply = self._post("/completions", body)
        choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise PolicyError(f"{self.base_url}: asked for {len(prompts)} completions, got {len(choices)}")
        return [self._completion(choice, choice.get("text")) for choice in choices]

    def generate_messages(self, conversations: list[list[dict[str, str]]], sampling: SamplingParams) -> list[Completion]:
        """One chat completion per conversation (chat mode; one request each)."""
        out = []
        for messages in conversations:
            body = self._sampling_body(sampling)
            body["messages"] = messages
            body["logprobs"] = True
            reply = self._post("/chat/completions", body)
            choice = (reply.get("choices") or [None])[0]
            if choice is None:
                raise PolicyError(f"{self.base_url}: the chat reply has no choices")
            out.append(self._completion(choice, (choice.get("message") or {}).get("content") or ""))
        return out

    # -- helpers ----------------------------------------------------------------------------------

    def _sampling_body(self, sampling: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = int(sampling.seed)
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

    def _first_model(self) -> str:
        reply = self._request("GET", "/models", None)
        data = reply.get("data") or []
        if not data:
            raise PolicyError(f"{self.base_url}/models lists no model; pass the model name")
        return str(data[0]["id"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = self.base_url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code in (401, 403):
                    raise PolicyError(
                        f"{url}: authentication failed (HTTP {exc.code}: {message}); "
                        "check --api-key or OPENAI_API_KEY"
                    ) from None
                if exc.code == 429 or exc.code >= 500:
                    last = f"HTTP {exc.code}: {message}"
                    continue
                raise PolicyError(f"{url}: HTTP {exc.code}: {message}") from None
            except TimeoutError:
                last = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, TimeoutError):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"cannot connect ({reason})"
            except (ConnectionError, json.JSONDecodeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise PolicyError(f"{url}: {last} (gave up after {self.max_retries + 1} attempts)")


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read() or b"{}")
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error or payload or exc.reason)
    except Exception:
        return str(exc.reason)
