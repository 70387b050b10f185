"""The environment service: one registered env id served over HTTP with isolated, bounded, timed-out sessions.

See :mod:`agentrl.envserver` for the protocol. Each session owns one env instance (made with the
server's ``env_kwargs`` plus the session's ``split``/``max_turns``; no other constructor argument can
come from a client, so a client cannot point an env at a path on the server). Calls on one session are
serialised by its lock; different sessions run in parallel on the server's thread pool. A reaper
thread closes sessions idle for longer than ``idle_timeout_s``; ``max_sessions`` bounds how many
exist; request bodies over ``max_body_bytes`` are refused before they are read whole.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import agentrl
from agentrl.core import EpisodeOver


class ServiceError(Exception):
    """An error answered as ``{"error": {"message", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "code": self.code}}


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str | None = Field(None, max_length=64)
    max_turns: int | None = Field(None, ge=1, le=10_000)


class ResetRequest(BaseModel):
    """OpenEnv's ResetRequest (``seed``, ``episode_id``) plus the agentrl reset option ``task``."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    episode_id: str | None = Field(None, max_length=255)
    task: str | None = Field(None, max_length=1024)


class TextAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


class StepRequest(BaseModel):
    """OpenEnv's StepRequest: ``{"action": {...}}``; an agentrl action is ``{"text": "..."}``."""

    model_config = ConfigDict(extra="forbid")

    action: TextAction


@dataclass
class Session:
    id: str
    env: Any
    created: float
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    episode_id: str | None = None
    steps: int = 0
    done: bool = True


class EnvService:
    """Sessions of ``env_id`` (made with ``env_kwargs``); the FastAPI app is :func:`build_app`."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        *,
        max_sessions: int = 64,
        idle_timeout_s: float = 600.0,
        max_body_bytes: int = 1 << 20,
    ):
        self.entry = agentrl.registry.resolve(env_id)
        self.env_kwargs = dict(env_kwargs or {})
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.max_body_bytes = max_body_bytes
        self._sessions: dict[str, Session] = {}
        self._pending = 0  # sessions being created (their env is being built)
        self._expired: collections.deque[str] = collections.deque(maxlen=4096)
        self._lock = threading.Lock()
        self._catalogue_lock = threading.Lock()
        self._catalogue: Any = None  # one env instance that answers task_ids()
        self._panels: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_forever, name="agentrl-env-reaper", daemon=True)
        self._reaper.start()
        # Build one env now: a missing engine or a bad -e argument fails at start, not on the first client.
        self.catalogue()

    # -- sessions --------------------------------------------------------------------------------

    def create(self, request: SessionRequest) -> Session:
        with self._lock:
            if len(self._sessions) + self._pending >= self.max_sessions:
                raise ServiceError(429, f"this server holds its maximum of {self.max_sessions} sessions; "
                                   "close one (DELETE /sessions/ID) or wait for idle ones to expire",
                                   "capacity_reached", {"Retry-After": "1"})  # fmt: skip
            self._pending += 1
        try:
            kwargs = dict(self.env_kwargs)
            if request.split is not None:
                if request.split not in self.splits():
                    raise ServiceError(400, f"unknown split {request.split!r}; choose one of {', '.join(self.splits())}", "invalid_split")
                kwargs["split"] = request.split
            if request.max_turns is not None:
                kwargs["max_turns"] = request.max_turns
            env = agentrl.make(self.entry.id, **kwargs)
        finally:
            with self._lock:
                self._pending -= 1
        now = time.monotonic()
        session = Session(uuid.uuid4().hex, env, now, now)
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                if session_id in self._expired:
                    raise ServiceError(404, f"session {session_id} expired after {self.idle_timeout_s:g} s idle", "session_expired")
                raise ServiceError(404, f"unknown session {session_id[:64]!r}", "unknown_session")
            session.last_used = time.monotonic()
            return session

    def close(self, session_id: str, *, expired: bool = False) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is not None and expired:
                self._expired.append(session_id)
        if session is None:
            raise ServiceError(404, f"unknown session {session_id[:64]!r}", "unknown_session")
        with session.lock:  # never close an env under a running step
            session.env.close()

    def close_all(self) -> None:
        self._stop.set()
        for session_id in list(self._sessions):
            try:
                self.close(session_id)
            except ServiceError:
                pass
        if self._catalogue is not None:
            self._catalogue.close()

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def _reap_forever(self) -> None:
        period = max(0.05, min(5.0, self.idle_timeout_s / 4))
        while not self._stop.wait(period):
            self.reap()

    def reap(self) -> list[str]:
        """Close sessions idle for longer than ``idle_timeout_s`` (a session busy in a call is not idle)."""
        now = time.monotonic()
        with self._lock:
            idle = [s.id for s in self._sessions.values() if now - s.last_used > self.idle_timeout_s and not s.lock.locked()]
        for session_id in idle:
            try:
                self.close(session_id, expired=True)
            except ServiceError:
                pass
        return idle

    # -- env calls ---------------------------------------------------------------------------------

    def reset(self, session: Session, request: ResetRequest) -> dict[str, Any]:
        options = {"task": request.task} if request.task is not None else None
        with session.lock:
            try:
                obs, info = session.env.reset(seed=request.seed, options=options)
            except ValueError as exc:  # the env's own message names the valid choices
                raise ServiceError(400, str(exc), "invalid_task") from None
            session.episode_id, session.steps, session.done = request.episode_id or uuid.uuid4().hex, 0, False
            session.last_used = time.monotonic()
        return {"observation": {"text": obs, "info": _jsonable(info)}, "reward": None, "done": False,
                "terminated": False, "truncated": False}  # fmt: skip

    def step(self, session: Session, request: StepRequest) -> dict[str, Any]:
        with session.lock:
            try:
                obs, reward, terminated, truncated, info = session.env.step(request.action.text)
            except EpisodeOver as exc:
                raise ServiceError(409, str(exc), "episode_over") from None
            session.steps += 1
            session.done = bool(terminated or truncated)
            session.last_used = time.monotonic()
        return {"observation": {"text": obs, "info": _jsonable(info)}, "reward": float(reward), "done": session.done,
                "terminated": bool(terminated), "truncated": bool(truncated)}  # fmt: skip

    def state(self, session: Session) -> dict[str, Any]:
        return {"episode_id": session.episode_id, "step_count": session.steps, "task_id": session.env.task_id,
                "done": session.done, "split": session.env.split, "max_turns": session.env.max_turns}  # fmt: skip

    def expert_action(self, session: Session) -> dict[str, Any]:
        with session.lock:
            return {"action": session.env.expert_action()}

    # -- panels and description ------------------------------------------------------------------

    def catalogue(self) -> Any:
        with self._catalogue_lock:
            if self._catalogue is None:
                self._catalogue = agentrl.make(self.entry.id, **self.env_kwargs)
            return self._catalogue

    def splits(self) -> tuple[str, ...]:
        return tuple(self.catalogue().splits)

    def task_ids(self, split: str | None) -> list[str]:
        env = self.catalogue()
        split = split or env.split
        if split not in env.splits:
            raise ServiceError(400, f"unknown split {split!r}; choose one of {', '.join(env.splits)}", "invalid_split")
        with self._catalogue_lock:
            if split not in self._panels:
                self._panels[split] = list(env.task_ids(split))
        return self._panels[split]

    def metadata(self) -> dict[str, Any]:
        env = self.catalogue()
        return {
            "name": self.entry.id, "env_id": self.entry.id, "description": self.entry.description,
            "version": agentrl.__version__, "protocol": "agentrl-env/1 (OpenEnv reset/step shapes, HTTP sessions)",
            "splits": list(env.splits), "default_split": env.split, "max_turns": env.max_turns,
            "limits": {"max_sessions": self.max_sessions, "idle_timeout_s": self.idle_timeout_s,
                       "max_body_bytes": self.max_body_bytes},
            "active_sessions": self.active_sessions,
        }  # fmt: skip


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    from agentrl.trajectory import jsonable

    return jsonable(info)
