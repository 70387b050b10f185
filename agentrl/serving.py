"""Run an ASGI app (FastAPI) with uvicorn, in the foreground or on a background thread.

Both of agentrl's servers use it: ``agentrl serve`` (an OpenAI-compatible model server,
:mod:`agentrl.policies.server`) and ``agentrl env-serve`` (environments as a service,
:mod:`agentrl.envserver`). Tests and notebooks start them on a thread with ``port=0``: the socket is
bound here before uvicorn starts, so :attr:`BackgroundServer.url` is known at once and the port
cannot be taken by someone else between choosing and binding it. Loopback is the default address.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class BackgroundServer:
    """An ASGI ``app`` served by uvicorn on ``host:port`` (``port=0``: any free port).

    ``start()`` returns once the server accepts connections; ``stop()`` asks uvicorn to finish open
    requests and waits for it. ``serve_forever()`` runs in the calling thread (Ctrl-C stops it).
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 ws_max_size: int = 16 * 1024 * 1024):  # fmt: skip
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(2048)
        self._socket.set_inheritable(True)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                                ws_max_size=ws_max_size)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="agentrl-uvicorn", daemon=True)  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited before it started (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (uvicorn handles SIGINT/SIGTERM in the main thread)."""
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._socket.close()
