"""A small OpenAI-compatible HTTP server for a local policy (``agentrl serve MODEL``).

Why our own: evaluation against served models and the OpenAI client are tested end to end against a
real HTTP server on 127.0.0.1 with a tiny local model, with no vLLM or GPU needed. It speaks the
parts of the OpenAI API that agents use, plus the vLLM extensions for exact tokens:

* ``GET /v1/models``;
* ``POST /v1/completions``: ``prompt`` as text, a list of token ids, or a list of either (batched
  into one ``generate``); ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
  ``logprobs``; ``return_tokens_as_token_ids`` (logprob tokens as ``"token_id:N"``) and every choice
  carries ``token_ids`` and ``prompt_token_ids``;
* ``POST /v1/chat/completions``: ``messages`` rendered with the tokenizer's chat template;
  ``logprobs: true`` returns per-token logprobs; choices carry ``token_ids`` as well.

Errors are OpenAI-shaped JSON (``{"error": {"message", "type", "code"}}``): 401 for a wrong API key,
400 for a bad request, 404 for an unknown model or path. Requests are served one generate at a time
(a lock); a request with many prompts is one batched generate. It binds 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentrl.policies.base import Completion, SamplingParams


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


class PolicyServer:
    """Serve ``policy`` (an :class:`~agentrl.policies.hf.HFPolicy` or any policy with a ``tokenizer``).

    ``port=0`` picks a free port; ``url`` is the base URL (``http://127.0.0.1:PORT/v1``).
    Use ``start()``/``stop()`` (background thread) or ``serve_forever()``.
    """

    def __init__(
        self,
        policy: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model_name: str | None = None,
        max_tokens_limit: int = 4096,
    ):
        self.policy = policy
        self.tokenizer = policy.tokenizer
        self.api_key = api_key
        self.model_name = model_name or getattr(policy, "name", "model")
        self.max_tokens_limit = max_tokens_limit
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet by default
                return

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                try:
                    body = self._read_body() if method == "POST" else {}
                    server._authorize(self.headers.get("Authorization"))
                    status, payload = server.handle(method, self.path.split("?")[0], body)
                except BadRequest as exc:
                    status = exc.status
                    payload = {"error": {"message": str(exc), "type": exc.kind, "code": status}}
                except Exception as exc:  # a server bug is a 500 with its message, never a dropped socket
                    status = 500
                    payload = {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    raise BadRequest(f"request body is not JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise BadRequest("request body must be a JSON object")
                return body

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> PolicyServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="agentrl-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling -------------------------------------------------------------------------

    def _authorize(self, header: str | None) -> None:
        if self.api_key is None:
            return
        if header != f"Bearer {self.api_key}":
            raise BadRequest("invalid API key", status=401, kind="authentication_error")

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/v1/models":
            max_len = getattr(self.policy, "max_context", None)
            return 200, {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "agentrl", "max_model_len": max_len}]}
        if method == "POST" and path == "/v1/completions":
            return 200, self._completions(body)
        if method == "POST" and path == "/v1/chat/completions":
            return 200, self._chat(body)
        raise BadRequest(f"no route {method} {path}", status=404, kind="not_found_error")

    def _sampling(self, body: dict[str, Any]) -> SamplingParams:
        self._check_model(body)
        if int(body.get("n", 1)) != 1:
            raise BadRequest("only n=1 is supported")
        stop = body.get("stop") or ()
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        try:
            max_tokens = int(max_tokens)
            if max_tokens > self.max_tokens_limit:
                raise BadRequest(f"max_tokens {max_tokens} exceeds this server's limit {self.max_tokens_limit}")
            return SamplingParams(
                max_new_tokens=max_tokens,
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                top_k=int(body.get("top_k", 0) or 0),
                stop=(stop,) if isinstance(stop, str) else tuple(stop),
                seed=body.get("seed"),
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(str(exc)) from None

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model not in (None, "", self.model_name):
            raise BadRequest(f"model {model!r} is not served here (serving {self.model_name!r})", status=404, kind="not_found_error")

    def _encode_prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise BadRequest(f"prompt token ids must be in [0, {vocab})")
            return list(prompt)
        raise BadRequest("prompt must be a non-empty string or a list of token ids")

    def _generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        with self._lock:
            return self.policy.generate(prompts, sampling)

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        sampling = self._sampling(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            prompts = [self._encode_prompt(p) for p in prompt]
        else:
            prompts = [self._encode_prompt(prompt)]
        completions = self._generate(prompts, sampling)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        want_logprobs = body.get("logprobs") is not None
        choices = []
        for index, (ids, completion) in enumerate(zip(prompts, completions, strict=True)):
            tokens = completion.token_ids or []
            choice: dict[str, Any] = {
                "index": index,
                "text": self.tokenizer.decode(tokens),
                "finish_reason": completion.finish_reason,
                "token_ids": tokens,
                "prompt_token_ids": ids,
                "logprobs": None,
            }
            if want_logprobs:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{t}" if as_ids else self.tokenizer.decode([t]) for t in tokens],
                    "token_logprobs": completion.logprobs,
                    "top_logprobs": None,
                    "text_offset": None,
                }
            choices.append(choice)
        return self._envelope("text_completion", choices, prompts, completions)

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        sampling = self._sampling(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = self._encode_prompt(text)
        completion = self._generate([prompt], sampling)[0]
        tokens = completion.token_ids or []
        eos = self.tokenizer.eos_token_id
        content_ids = tokens[:-1] if tokens and tokens[-1] == eos else tokens
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": self.tokenizer.decode(content_ids)},
            "finish_reason": completion.finish_reason,
            "token_ids": tokens,
            "prompt_token_ids": prompt,
            "logprobs": None,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": f"token_id:{t}", "logprob": lp, "top_logprobs": []}
                    for t, lp in zip(tokens, completion.logprobs or [], strict=False)
                ]
            }
        return self._envelope("chat.completion", [choice], [prompt], [completion])

    def _envelope(self, kind: str, choices: list[dict], prompts: list[list[int]], completions: list[Completion]) -> dict[str, Any]:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(c.num_tokens for c in completions)
        return {
            "id": f"agentrl-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }
