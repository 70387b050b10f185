"""HTTP routes of the environment service (FastAPI) and :class:`EnvServer`, which runs them with uvicorn.

Every error is ``{"error": {"message", "code"}}``: 400 for a body that is not JSON or a bad split or
task, 404 for an unknown or expired session or path, 409 for a step on a finished episode, 413 for a
body over the size limit, 422 for a body of the wrong shape, 429 when all session slots are taken.
An env that raises where the contract says it must not is a 500 for that call; the server lives on.
"""

from __future__ import annotations

from typing import Any

from fastapi import WebSocket  # resolved at runtime: FastAPI reads the /ws handler's annotation

from agentrl.envserver.server import EnvService, ResetRequest, ServiceError, SessionRequest, StepRequest


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, reading at most ``limit`` + one chunk.

    The body is gathered here (it is small by construction) and handed on whole, so a chunked upload
    without ``Content-Length`` is bounded as well as a declared one.
    """

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._refuse(send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps(ServiceError(413, f"request body over {self.limit} bytes", "body_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def build_app(service: EnvService) -> Any:
    """The FastAPI app of ``service``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title=f"agentrl env service: {service.entry.id}", docs_url=None, redoc_url=None)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(ServiceError(400, "the request body is not valid JSON", "invalid_json").body(), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        error = ServiceError(422, f"invalid request: {where}: {first.get('msg', 'invalid')}", "invalid_request")
        return JSONResponse(error.body(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(ServiceError(exc.status_code, message, code).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        error = ServiceError(500, f"the environment raised {type(exc).__name__}: {exc}", "env_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get("/schema")
    def schema() -> dict[str, Any]:
        observation = {"type": "object", "properties": {"text": {"type": "string"}, "info": {"type": "object"}}}
        state = {"type": "object", "properties": {"episode_id": {"type": ["string", "null"]}, "step_count": {"type": "integer"}}}
        return {"action": StepRequest.model_json_schema()["$defs"]["TextAction"], "observation": observation, "state": state}

    @app.get("/tasks")
    def tasks(split: str | None = None) -> dict[str, Any]:
        return {"split": split or service.catalogue().split, "task_ids": service.task_ids(split)}

    @app.post("/sessions", status_code=201)
    def create(request: SessionRequest | None = None) -> dict[str, Any]:
        session = service.create(request or SessionRequest())
        return {"session_id": session.id, "split": session.env.split, "max_turns": session.env.max_turns,
                "idle_timeout_s": service.idle_timeout_s}  # fmt: skip

    @app.post("/sessions/{session_id}/reset")
    def reset(session_id: str, request: ResetRequest | None = None) -> dict[str, Any]:
        return service.reset(service.get(session_id), request or ResetRequest())

    @app.post("/sessions/{session_id}/step")
    def step(session_id: str, request: StepRequest) -> dict[str, Any]:
        return service.step(service.get(session_id), request)

    @app.get("/sessions/{session_id}/state")
    def state(session_id: str) -> dict[str, Any]:
        return service.state(service.get(session_id))

    @app.get("/sessions/{session_id}/expert_action")
    def expert_action(session_id: str) -> dict[str, Any]:
        return service.expert_action(service.get(session_id))

    @app.delete("/sessions/{session_id}")
    def close(session_id: str) -> dict[str, Any]:
        service.close(session_id)
        return {"session_id": session_id, "closed": True}

    add_openenv_websocket(app, service)
    return BodyLimit(app, service.max_body_bytes)


#: OpenEnv's WebSocket error codes (``WSErrorCode``) for ours.
_WS_CODES = {"capacity_reached": "CAPACITY_REACHED", "session_expired": "SESSION_ERROR", "unknown_session": "SESSION_ERROR"}


def add_openenv_websocket(app: Any, service: EnvService) -> None:
    """``/ws``: OpenEnv's session protocol, so OpenEnv clients (``GenericEnvClient``) can play our envs.

    One connection is one session (counted in ``max_sessions``, reaped when idle). Messages are
    OpenEnv's: ``{"type": "reset", "data": {"seed", "episode_id", "task"}}``, ``{"type": "step", "data":
    {"text": ...}}``, ``{"type": "state"}``, ``{"type": "close"}``; answers ``{"type": "observation",
    "data": {"observation", "reward", "done", ...}}``, ``{"type": "state", "data": ...}`` or ``{"type":
    "error", "data": {"message", "code"}}`` with OpenEnv's codes. A bad message is answered with an
    error and the session goes on.
    """
    import json

    from fastapi import WebSocketDisconnect
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    from agentrl.envserver.server import TextAction

    async def send_error(websocket: WebSocket, message: str, code: str) -> None:
        await websocket.send_json({"type": "error", "data": {"message": message, "code": code}})

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            session = await run_in_threadpool(service.create, SessionRequest())
        except ServiceError as exc:
            await send_error(websocket, exc.message, _WS_CODES.get(exc.code, "FACTORY_ERROR"))
            await websocket.close()
            return
        try:
            while True:
                raw = await websocket.receive_text()
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError as exc:
                    await send_error(websocket, f"Invalid JSON: {exc}", "INVALID_JSON")
                    continue
                kind = message.get("type") if isinstance(message, dict) else None
                data = message.get("data") if isinstance(message, dict) else None
                try:
                    if kind == "reset":
                        fields = {k: v for k, v in (data or {}).items() if k in ResetRequest.model_fields}
                        request = ResetRequest.model_validate(fields)
                        reply = await run_in_threadpool(service.reset, service.get(session.id), request)
                        await websocket.send_json({"type": "observation", "data": reply})
                    elif kind == "step":
                        request = StepRequest(action=TextAction.model_validate(data))
                        reply = await run_in_threadpool(service.step, service.get(session.id), request)
                        await websocket.send_json({"type": "observation", "data": reply})
                    elif kind == "state":
                        await websocket.send_json({"type": "state", "data": service.state(service.get(session.id))})
                    elif kind == "close":
                        break
                    else:
                        await send_error(websocket, f"unknown message type {str(kind)[:64]!r}", "UNKNOWN_TYPE")
                except ValidationError as exc:
                    await send_error(websocket, f"invalid message: {exc.errors()[0].get('msg')}", "VALIDATION_ERROR")
                except ServiceError as exc:
                    await send_error(websocket, exc.message, _WS_CODES.get(exc.code, "EXECUTION_ERROR"))
        except WebSocketDisconnect:
            pass
        finally:
            try:
                service.close(session.id)
            except ServiceError:
                pass
        try:
            await websocket.close()
        except RuntimeError:
            pass


class EnvServer:
    """Serve ``env_id`` on ``host:port`` (``port=0``: any free port); ``url`` is the base URL.

    ``start()``/``stop()`` run it on a background thread (also a context manager);
    ``serve_forever()`` in the calling thread. Keyword arguments go to :class:`EnvService`.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, **limits: Any):  # fmt: skip
        from agentrl.serving import BackgroundServer

        self.service = EnvService(env_id, env_kwargs, **limits)
        self._server = BackgroundServer(build_app(self.service), host=host, port=port, ws_max_size=self.service.max_body_bytes)

    @property
    def url(self) -> str:
        return self._server.base_url

    def start(self) -> EnvServer:
        self._server.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self.service.close_all()

    def stop(self) -> None:
        self._server.stop()
        self.service.close_all()

    def __enter__(self) -> EnvServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
