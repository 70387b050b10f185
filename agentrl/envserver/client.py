"""``RemoteEnv``: an environment served by ``agentrl env-serve``, behind the same TextEnv/Gymnasium API.

``agentrl.make("http://127.0.0.1:8001", split="valid", max_turns=20)`` or
``gymnasium.make("agentrl/Remote-v0", url="http://127.0.0.1:8001")`` returns one; the collector,
``agentrl.check_env`` and the scripted evaluators use it as they use a local env. One instance is one
server session (``close()`` ends it). Server answers map to the local contract: 409 ``episode_over``
raises :class:`agentrl.EpisodeOver`, 400 ``invalid_task`` raises ``ValueError`` (as a local env
does for an unknown task id), anything else that is not a reply raises :class:`RemoteEnvError` naming
the URL. ``info`` comes back as JSON (values that are not JSON types arrive as strings, exactly as
the trajectory store records them).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agentrl.core import EpisodeOver, TextEnv, TextSpace


class RemoteEnvError(RuntimeError):
    """The env server could not be reached or refused a call (the message names the URL and the reason)."""


class RemoteEnv(TextEnv):
    """A client session of an env service at ``url``; ``split``/``max_turns`` default to the server's."""

    def __init__(self, url: str, *, split: str | None = None, max_turns: int | None = None, timeout: float = 300.0,
                 render_mode: str | None = None):  # fmt: skip
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._closed = False
        self.session_id: str | None = None
        meta = self._call("GET", "/metadata")
        self.remote_id: str = meta["env_id"]
        self.splits = tuple(meta["splits"])  # instance attribute: the served env's splits
        self.max_body_bytes = int(meta["limits"]["max_body_bytes"])
        body: dict[str, Any] = {}
        if split is not None:
            body["split"] = split
        if max_turns is not None:
            body["max_turns"] = max_turns
        session = self._call("POST", "/sessions", body)
        self.session_id = session["session_id"]
        self.split, self.max_turns = session["split"], int(session["max_turns"])
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.task_id: str | None = None
        self.turn = 0
        self._done = True
        self._last_obs = ""
        self._panels: dict[str, list[str]] = {}

    # -- the TextEnv contract, answered by the server ------------------------------------------------

    def task_ids(self, split: str | None = None) -> list[str]:
        split = split or self.split
        if split not in self._panels:
            self._panels[split] = list(self._call("GET", "/tasks", params={"split": split})["task_ids"])
        return list(self._panels[split])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        gym.Env.reset(self, seed=seed)  # the local np_random too, as Gymnasium's checker expects
        options = dict(options or {})
        task = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset option(s): {', '.join(sorted(options))}; only 'task' is accepted")
        body: dict[str, Any] = {"seed": seed}
        if task is not None:
            body["task"] = str(task)
        reply = self._call("POST", f"/sessions/{self.session_id}/reset", body)
        obs, info = reply["observation"]["text"], reply["observation"]["info"]
        self.task_id, self.turn, self._done, self._last_obs = info["task_id"], 0, False, obs
        return obs, info

    def step(self, action: str):
        text = action if isinstance(action, str) else str(action)
        # The body limit bounds what a client may send; a local env reads at most 2 * MAX_ACTION_CHARS of an
        # action anyway, so cutting what the server would refuse changes no outcome of a built-in env.
        text = text[: max(1, self.max_body_bytes // 8)]
        reply = self._call("POST", f"/sessions/{self.session_id}/step", {"action": {"text": text}})
        obs, info = reply["observation"]["text"], reply["observation"]["info"]
        self.turn, self._done, self._last_obs = int(info["turn"]), bool(reply["done"]), obs
        return obs, float(reply["reward"]), bool(reply["terminated"]), bool(reply["truncated"]), info

    def expert_action(self) -> str | None:
        return self._call("GET", f"/sessions/{self.session_id}/expert_action")["action"]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._done = True
        try:
            if self.session_id is not None:
                self._http.delete(f"/sessions/{self.session_id}")
        except Exception:  # the server may be gone already; closing must still succeed
            pass
        self._http.close()

    def _reset_task(self, task_id: str):  # pragma: no cover - reset() talks to the server directly
        raise NotImplementedError

    def _step(self, action: str):  # pragma: no cover - step() talks to the server directly
        raise NotImplementedError

    # -- transport -----------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, params: dict | None = None) -> dict[str, Any]:
        import httpx

        if self._closed:
            raise RemoteEnvError(f"{self.url}: this RemoteEnv is closed")
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise RemoteEnvError(f"{self.url}{path}: cannot reach the env server ({type(exc).__name__}: {exc})") from None
        if response.status_code < 300:
            return response.json()
        try:
            error = response.json()["error"]
            message, code = str(error["message"]), str(error["code"])
        except Exception:
            message, code = response.text[:300], "http_error"
        if code == "episode_over":
            raise EpisodeOver(message)
        if code in ("invalid_task", "invalid_split"):
            raise ValueError(message)
        raise RemoteEnvError(f"{self.url}{path}: HTTP {response.status_code} {code}: {message}")
