"""An OpenAI-compatible HTTP server for a local policy (``agentrl serve MODEL``), on FastAPI + uvicorn.

Why our own: evaluation against served models, the token-exact :class:`~agentrl.policies.openai.OpenAIPolicy`
and the official ``openai`` client are tested end to end against a real server on 127.0.0.1 with a
tiny local model, with no vLLM or GPU. It behaves as OpenAI and vLLM do where agents can tell:

* ``GET /v1/models`` and ``GET /v1/models/{id}`` (with ``created`` and vLLM's ``max_model_len``);
* ``POST /v1/completions``: ``prompt`` as text, token ids, or a list of either; ``POST /v1/chat/completions``:
  messages rendered with the tokenizer's chat template. Both take ``n``, ``max_tokens``
  (``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` (excluded from
  the text, ``finish_reason "stop"``), ``logprobs`` / ``top_logprobs`` with token strings, and
  ``stream`` (server-sent events; the deltas add up to the text of the same request unstreamed);
* exact tokens, as vLLM's ``return_token_ids``: every choice carries ``token_ids`` (the sampled ids
  verbatim, including a stop string's tokens and the end-of-turn token) and ``prompt_token_ids``, and
  ``return_tokens_as_token_ids`` writes logprob tokens as ``"token_id:N"``; ``stop_reason`` says which
  stop string (or end-of-sequence id) ended a choice;
* errors shaped as OpenAI's, ``{"error": {"message", "type", "param", "code"}}`` with a string code:
  400 for bad parameters or JSON and for a prompt that does not fit the context (prompt alone, or
  prompt + ``max_tokens``: ``code "context_length_exceeded"``, as OpenAI and vLLM), 401 for a wrong
  key, 404 for an unknown model or path.

Seeds: choice ``j`` of a request (prompt-major, ``j = prompt_index * n + k``) is sampled from its own
generator seeded with ``seed + j``, so a seeded request gives the same tokens alone or batched with
others, and ``n`` choices differ. Log-probs are those of the temperature-scaled distribution the
token was drawn from (see :mod:`agentrl.policies.base`).

Concurrency: requests go through a :class:`~agentrl.policies.batching.GenerateBatcher`, which merges
the requests that arrive together into one ``generate`` call. Streaming sends each token's text as
it is sampled, holding back text that may be the start of a stop string. It binds 127.0.0.1 by
default.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agentrl.policies.base import Completion, SamplingParams
from agentrl.policies.batching import GenerateBatcher, GenerateJob
from agentrl.policies.openai_schema import APIError, ChatCompletionRequest, CompletionRequest, _Sampling
from agentrl.policies.weight_routes import WeightUpdates, add_weight_routes

MAX_SEED = 2**63 - 1


class PolicyServer:
    """Serve ``policy`` (an :class:`~agentrl.policies.hf.HFPolicy`, or any policy with a ``tokenizer`` whose
    ``generate`` takes ``seeds=`` and ``on_token=``).

    ``port=0`` picks a free port; ``url`` is the base URL (``http://127.0.0.1:PORT/v1``). Use
    ``start()``/``stop()`` (a background thread; also a context manager) or ``serve_forever()``.
    ``max_tokens_limit`` caps the default ``max_tokens`` of a chat request that gives none.
    ``weights_dir`` turns on the weight-update routes (:mod:`agentrl.policies.weight_routes`): a learner
    can then make the server run the versions it publishes under that directory.
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
        max_batch_rows: int = 64,
        max_wait_s: float = 0.002,
        weights_dir: str | os.PathLike[str] | None = None,
    ):
        from agentrl.serving import BackgroundServer

        self.policy = policy
        self.tokenizer = policy.tokenizer
        self.api_key = api_key
        self.model_name = model_name or getattr(policy, "name", "model")
        self.max_tokens_limit = max_tokens_limit
        self.max_context = int(getattr(policy, "max_context", 1 << 30))
        self.created = int(time.time())
        self.eos_ids = set(getattr(policy, "eos_ids", ()) or ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []))
        self.vocab_size = len(self.tokenizer)
        self.batcher = GenerateBatcher(policy, max_batch_rows=max_batch_rows, max_wait_s=max_wait_s)
        self.weights = WeightUpdates(self, weights_dir) if weights_dir is not None else None
        self.app = build_app(self)
        self._server = BackgroundServer(self.app, host=host, port=port)

    @property
    def url(self) -> str:
        return self._server.base_url + "/v1"

    def start(self) -> PolicyServer:
        self._server.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self.batcher.close()

    def stop(self) -> None:
        self._server.stop()
        self.batcher.close()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- building blocks --------------------------------------------------------------------------

    def authorize(self, header: str | None) -> None:
        if self.api_key is not None and header != f"Bearer {self.api_key}":
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    @property
    def served_name(self) -> str:
        """The model name requests must use: the base model's, or the LoRA adapter's while one is loaded."""
        adapter = self.weights.adapter if self.weights is not None else None
        return adapter or self.model_name

    def model_card(self) -> dict[str, Any]:
        parent = self.model_name if self.served_name != self.model_name else None
        return {"id": self.served_name, "object": "model", "created": self.created, "owned_by": "agentrl",
                "root": self.model_name, "parent": parent, "max_model_len": self.max_context}  # fmt: skip

    def check_model(self, model: str | None) -> None:
        if model not in (None, "", self.served_name):
            raise APIError(404, f"The model `{model}` does not exist (this server serves `{self.served_name}`).",
                           code="model_not_found", param="model")  # fmt: skip

    def encode(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        else:
            ids = list(prompt)
            if any(t < 0 or t >= self.vocab_size for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {self.vocab_size})", code="invalid_value", param="prompt")
        if not ids:
            raise APIError(400, "the prompt is empty", code="invalid_value", param="prompt")
        return ids

    def check_context(self, prompt_len: int, max_tokens: int, param: str) -> None:
        """400 ``context_length_exceeded`` when the prompt, or prompt + ``max_tokens``, does not fit (as vLLM)."""
        if prompt_len >= self.max_context or prompt_len + max_tokens > self.max_context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {param} or completion.",
                code="context_length_exceeded", param=param,
            )  # fmt: skip

    def sampling(self, req: _Sampling, max_tokens: int, top_logprobs: int) -> SamplingParams:
        req.unsupported()
        if req.seed is not None and not 0 <= req.seed <= MAX_SEED - 1024:
            raise APIError(400, f"seed must be in [0, {MAX_SEED - 1024}]", code="invalid_value", param="seed")
        top_k = req.top_k if req.top_k and req.top_k > 0 else 0
        return SamplingParams(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=top_k,
                              stop=req.stop_strings(), top_logprobs=top_logprobs)  # fmt: skip

    def seeds(self, seed: int | None, rows: int) -> list[int | None]:
        return [None if seed is None else seed + j for j in range(rows)]

    def render(self, ids: list[int], stops: tuple[str, ...], *, final: bool) -> tuple[str, str | None]:
        """Text of sampled ``ids`` as OpenAI shows it: no end-of-turn token, cut before the first stop string.

        Returns ``(text, stop string hit or None)``. While streaming (``final=False``) it also holds
        back a tail that may become a stop string and an incomplete UTF-8 character.
        """
        content = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        text = self.tokenizer.decode(content, skip_special_tokens=True)
        hit, cut = None, len(text)
        for stop in stops:
            at = text.find(stop)
            if at != -1 and at < cut:
                hit, cut = stop, at
        text = text[:cut]
        if not final and hit is None:
            hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - hold].rstrip("\ufffd")
        return text, hit

    def token_text(self, token: int, as_ids: bool) -> str:
        return f"token_id:{token}" if as_ids else self.tokenizer.decode([token])

    def finish(self, completion: Completion, hit: str | None) -> tuple[str, Any]:
        """``(finish_reason, stop_reason)``: a stop string, an end-of-sequence id, or ``None`` at the length limit."""
        ids = completion.token_ids or []
        if hit is not None:
            return "stop", hit
        if completion.finish_reason == "stop":
            return "stop", ids[-1] if ids else None
        return "length", None

    async def generate(self, prompts: list[list[int]], seeds: list[int | None], sampling: SamplingParams) -> list[Completion]:
        return await asyncio.wrap_future(self.batcher.submit(GenerateJob(prompts, seeds, sampling)))

    def envelope(self, kind: str, choices: list[dict], prompts: list[list[int]], completions: list[Completion]) -> dict[str, Any]:
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(c.num_tokens for c in completions)
        return {
            "id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": kind,
            "created": int(time.time()),
            "model": self.served_name,
            "system_fingerprint": None,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }  # fmt: skip

    # -- the two generation routes ----------------------------------------------------------------

    def completion_rows(self, req: CompletionRequest) -> tuple[list[list[int]], SamplingParams]:
        self.check_model(req.model)
        if req.echo:
            raise APIError(400, "echo is not supported by this server", code="unsupported_parameter", param="echo")
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", code="unsupported_parameter", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", code="unsupported_parameter", param="best_of")
        if req.stream and req.logprobs is not None:
            raise APIError(400, "logprobs with stream=true is not supported by this server", code="unsupported_parameter", param="logprobs")
        raw = req.prompt
        many = isinstance(raw, list) and bool(raw) and isinstance(raw[0], str | list)
        prompts = [self.encode(p) for p in raw] if many else [self.encode(raw)]
        max_tokens = req.max_tokens or 16
        for ids in prompts:
            self.check_context(len(ids), max_tokens, "prompt")
        return prompts, self.sampling(req, max_tokens, req.logprobs or 0)

    async def completions(self, req: CompletionRequest) -> Any:
        prompts, sampling = self.completion_rows(req)
        rows = [p for p in prompts for _ in range(req.n)]
        seeds = self.seeds(req.seed, len(rows))
        if req.stream:
            return self.stream("text_completion", req, rows, seeds, sampling)
        completions = await self.generate(rows, seeds, sampling)
        choices = []
        for index, (ids, completion) in enumerate(zip(rows, completions, strict=True)):
            tokens = completion.token_ids or []
            text, hit = self.render(tokens, sampling.stop, final=True)
            reason, stop_reason = self.finish(completion, hit)
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": reason,
                                      "stop_reason": stop_reason, "token_ids": tokens, "prompt_token_ids": ids}  # fmt: skip
            if req.logprobs is not None:
                as_ids = req.return_tokens_as_token_ids
                strings = [self.token_text(t, as_ids) for t in tokens]
                offsets, at = [], 0
                for piece in strings:
                    offsets.append(at)
                    at += len(piece)
                choice["logprobs"] = {
                    "tokens": strings,
                    "token_logprobs": completion.logprobs,
                    "top_logprobs": [
                        {self.token_text(t, as_ids): lp for t, lp in step} for step in (completion.top_logprobs or [[] for _ in tokens])
                    ],
                    "text_offset": offsets,
                }
            choices.append(choice)
        return self.envelope("text_completion", choices, prompts, completions)

    def chat_rows(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingParams]:
        self.check_model(req.model)
        if req.tools:
            raise APIError(400, "tools are not supported by this server", code="unsupported_parameter", param="tools")
        if req.response_format and req.response_format.get("type") not in (None, "text"):
            raise APIError(400, "response_format other than text is not supported", code="unsupported_parameter", param="response_format")
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", code="invalid_value", param="top_logprobs")
        if req.stream and req.logprobs:
            raise APIError(400, "logprobs with stream=true is not supported by this server", code="unsupported_parameter", param="logprobs")
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template that cannot render these messages is the request's problem
            raise APIError(400, f"the chat template cannot render these messages: {exc}", code="invalid_value", param="messages") from None
        prompt = self.encode(text)
        requested = req.max_completion_tokens or req.max_tokens
        max_tokens = requested or max(1, min(self.max_tokens_limit, self.max_context - len(prompt)))
        self.check_context(len(prompt), max_tokens, "messages")
        return prompt, self.sampling(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else 0)

    async def chat(self, req: ChatCompletionRequest) -> Any:
        prompt, sampling = self.chat_rows(req)
        rows = [prompt] * req.n
        seeds = self.seeds(req.seed, len(rows))
        if req.stream:
            return self.stream("chat.completion", req, rows, seeds, sampling)
        completions = await self.generate(rows, seeds, sampling)
        choices = []
        for index, completion in enumerate(completions):
            tokens = completion.token_ids or []
            text, hit = self.render(tokens, sampling.stop, final=True)
            reason, stop_reason = self.finish(completion, hit)
            choice: dict[str, Any] = {"index": index, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": reason, "stop_reason": stop_reason,
                                      "token_ids": tokens}  # fmt: skip
            if req.logprobs:
                as_ids = req.return_tokens_as_token_ids
                tops = completion.top_logprobs or [[] for _ in tokens]
                choice["logprobs"] = {"content": [
                    {"token": self.token_text(t, as_ids), "logprob": lp, "bytes": list(self.token_text(t, as_ids).encode()),
                     "top_logprobs": [{"token": self.token_text(a, as_ids), "logprob": b,
                                       "bytes": list(self.token_text(a, as_ids).encode())} for a, b in top]}
                    for t, lp, top in zip(tokens, completion.logprobs or [], tops, strict=True)
                ], "refusal": None}  # fmt: skip
            choices.append(choice)
        body = self.envelope("chat.completion", choices, [prompt], completions)
        body["prompt_token_ids"] = prompt
        return body

    # -- streaming ----------------------------------------------------------------------------------

    def stream(self, kind: str, req: _Sampling, rows: list[list[int]], seeds: list[int | None], sampling: SamplingParams):
        from fastapi.responses import StreamingResponse

        return StreamingResponse(self._events(kind, req, rows, seeds, sampling), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def _events(self, kind: str, req: _Sampling, rows: list[list[int]], seeds: list[int | None],
                      sampling: SamplingParams) -> AsyncIterator[str]:  # fmt: skip
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        chat = kind.startswith("chat")
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(index: int, text: str | None, reason: str | None = None, extra: dict | None = None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
            choice.update(extra or {})
            body = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created, "model": self.served_name,
                    "system_fingerprint": None, "choices": [choice]}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        def on_token(row: int, token: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (row, token))

        future = self.batcher.submit(GenerateJob(rows, seeds, sampling, on_token=on_token))
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
        if chat:
            for index in range(len(rows)):
                yield chunk(index, None, extra={"delta": {"role": "assistant", "content": ""}})
        tokens: list[list[int]] = [[] for _ in rows]
        sent = [""] * len(rows)
        stopped = [False] * len(rows)
        while (event := await events.get()) is not None:
            row, token = event
            tokens[row].append(token)
            if stopped[row]:
                continue
            text, hit = self.render(tokens[row], sampling.stop, final=False)
            stopped[row] = hit is not None
            if text.startswith(sent[row]) and len(text) > len(sent[row]):
                delta, sent[row] = text[len(sent[row]) :], text
                yield chunk(row, delta)
        try:
            completions = future.result()
        except Exception as exc:  # headers are gone: the error travels as an event, as OpenAI's streams do
            yield f"data: {json.dumps(APIError(500, f'{type(exc).__name__}: {exc}', code='internal_error', kind='server_error').body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        for row, completion in enumerate(completions):
            text, hit = self.render(completion.token_ids or [], sampling.stop, final=True)
            reason, stop_reason = self.finish(completion, hit)
            rest = text[len(sent[row]) :] if text.startswith(sent[row]) else ""
            extra = {"stop_reason": stop_reason, "token_ids": completion.token_ids or []}
            yield chunk(row, rest, reason, extra)
        if req.stream_options is not None and req.stream_options.include_usage:
            usage = self.envelope(kind, [], list({tuple(r): r for r in rows}.values()), completions)["usage"]
            body = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": created, "model": self.served_name,
                    "choices": [], "usage": usage}  # fmt: skip
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"


def build_app(server: PolicyServer):
    """The FastAPI app of ``server`` (routes, validation and OpenAI-shaped errors)."""
    from fastapi import Depends, FastAPI, Header, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="agentrl OpenAI-compatible server", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            error = APIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
        else:
            where = ".".join(loc) or "body"
            error = APIError(400, f"Invalid value for '{where}': {first.get('msg', 'invalid')}", code="invalid_value",
                             param=loc[0] if loc else None)  # fmt: skip
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:  # a server bug is a 500 with its message
        error = APIError(500, f"{type(exc).__name__}: {exc}", code="internal_error", kind="server_error")
        return JSONResponse(error.body(), status_code=500)

    def auth(authorization: str | None = Header(default=None)) -> None:
        server.authorize(authorization)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)])
    async def model(model_id: str) -> dict[str, Any]:
        server.check_model(model_id or None)
        return server.model_card()

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest) -> Any:
        return await server.completions(req)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatCompletionRequest) -> Any:
        return await server.chat(req)

    if server.weights is not None:
        add_weight_routes(app, server.weights, auth)

    return app
