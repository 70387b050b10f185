"""``agentrl env-serve ID``: serve a registered environment over HTTP (see :mod:`agentrl.envserver`)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentrl.cli.common import UserError, console, parse_kv


def env_serve(
    env: Annotated[str, typer.Argument(help="Environment id or alias, e.g. textworld or agentrl/ALFWorld-v0.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default; the service has no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8001,
    env_arg: Annotated[
        list[str] | None,
        typer.Option("--env-arg", "-e", help="Constructor argument key=value for every session (repeatable)."),
    ] = None,
    max_sessions: Annotated[int, typer.Option(help="Most sessions (env instances) at once; more get HTTP 429.")] = 64,
    idle_timeout: Annotated[float, typer.Option(help="Seconds a session may stay idle before it is closed.")] = 600.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (an action) accepted; larger get HTTP 413.")] = 1 << 20,
) -> None:
    """Serve ENV over HTTP: sessions with reset/step/close and the task panels (OpenEnv-shaped; clients:
    agentrl.make(URL), gymnasium.make("agentrl/Remote-v0", url=URL))."""
    import agentrl

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("agentrl env-serve needs FastAPI and uvicorn", hint="pip install 'agentrl[serve]'") from None
    from agentrl.envserver.app import EnvServer

    try:
        server = EnvServer(env, parse_kv(env_arg), host=host, port=port, max_sessions=max_sessions,
                           idle_timeout_s=idle_timeout, max_body_bytes=max_body_bytes)  # fmt: skip
    except TypeError as exc:
        raise UserError(f"{env}: {exc}", hint="check the -e/--env-arg names with `agentrl envs info`") from None
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc}") from None
    entry = agentrl.registry.resolve(env)
    console.print(f"serving {entry.id} at {server.url} (Ctrl-C to stop)", highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
