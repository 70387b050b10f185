"""Environments as a service: ``agentrl env-serve ID`` and the :class:`RemoteEnv` client.

A trainer in another process or on another machine (TRL, verl-agent, rLLM, verifiers, or agentrl's own
collector) plays agentrl's environments and their fixed task panels over HTTP. The service sits beside
the registry: it serves one registered id; environments know nothing of it.

Protocol: OpenEnv's environment API (meta-pytorch/OpenEnv, the one TRL integrates), with sessions
addressed over HTTP. We follow OpenEnv's shapes: ``GET /health``, ``GET /metadata``, ``GET /schema``;
reset takes ``{"seed", "episode_id"}`` (plus our ``"task"`` option); step takes ``{"action": {...}}``
(an agentrl action is ``{"text": "..."}``); both answer ``{"observation": {...}, "reward", "done"}``
(our observation is ``{"text", "info"}``, and we add Gymnasium's ``terminated``/``truncated``, which
``done`` alone cannot tell apart). Where OpenEnv does not fit we depart, and why:

* OpenEnv's HTTP ``/reset`` and ``/step`` are stateless (a fresh env per request); its stateful
  sessions live only on a WebSocket (``/ws``). A multi-turn text env is stateful by nature (a game
  process, a JVM), and the clients we serve (a thread per env in a collector, a trainer's tool call)
  want plain request/response with HTTP status codes, so sessions are HTTP resources:
  ``POST /sessions`` -> ``{"session_id"}``, ``POST /sessions/{id}/reset``, ``POST /sessions/{id}/step``,
  ``GET /sessions/{id}/state`` (OpenEnv's State: ``episode_id``, ``step_count``),
  ``GET /sessions/{id}/expert_action``, ``DELETE /sessions/{id}``; OpenEnv's limits
  (``max_concurrent_envs``, ``session_timeout``) are kept as ``max_sessions`` and ``idle_timeout_s``.
* OpenEnv's own stateful path is served as well: ``/ws`` speaks its WebSocket session protocol
  (``reset``/``step``/``state``/``close`` messages, OpenEnv's error codes), so an OpenEnv client
  (``GenericEnvClient(base_url=URL)``; checked by hand with openenv-core 0.3.0) plays agentrl envs;
  a step's action is ``{"text": ...}``.
* Task panels are agentrl's: ``GET /tasks?split=valid`` -> ``{"split", "task_ids"}``.
* verifiers' environment servers (ZMQ + msgpack) serve whole rollouts: the env server calls the model
  itself. That inverts who drives the episode and cannot back a step-level Gymnasium API, so it was
  not followed.

Errors are ``{"error": {"message", "code"}}`` with 4xx statuses (see :mod:`agentrl.envserver.app`).
Sessions are isolated (one env instance each), bounded (``max_sessions``, 429 ``capacity_reached``
beyond it; request bodies over ``max_body_bytes`` are 413) and timed out (idle sessions are closed,
later calls get 404 ``session_expired``). Servers bind 127.0.0.1 by default; there is no
authentication, so expose one beyond loopback only on a network you trust.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EnvServer", "RemoteEnv", "RemoteEnvError"]


def __getattr__(name: str) -> Any:
    if name == "EnvServer":
        from agentrl.envserver.app import EnvServer

        return EnvServer
    if name in ("RemoteEnv", "RemoteEnvError"):
        from agentrl.envserver import client

        return getattr(client, name)
    raise AttributeError(name)
