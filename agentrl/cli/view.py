"""``agentrl view``: browse runs, episodes and evaluation reports in a local web page."""

from __future__ import annotations

from typing import Annotated

import typer

from agentrl.cli.common import UserError, console, printable


def view(
    paths: Annotated[list[str] | None, typer.Argument(help="Evaluation reports (agentrl eval --output) and run directories (output_dir/run_name).")] = None,
    store: Annotated[str | None, typer.Option("--store", "-s", envvar="AGENTRL_STORE", help="A trajectory store URL to browse (sqlite:///path.db or postgresql+psycopg://...).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default: the page shows everything in the store).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8765,
) -> None:  # fmt: skip
    """Browse runs, episodes and evaluation reports: transcripts, per-token log-probs and entropies, filters,
    two runs side by side, learning curves. A local web app (FastAPI); open the URL it prints."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("agentrl view needs FastAPI and uvicorn", hint="pip install 'agentrl[serve]'") from None
    from agentrl.cli.store import user_errors
    from agentrl.serving import BackgroundServer
    from agentrl.viewer.app import create_app
    from agentrl.viewer.data import Catalog

    if not store and not paths:
        raise UserError("nothing to view", hint="give --store URL, a run directory (runs/NAME) or a report (agentrl eval --output)")
    with user_errors(store):
        try:
            catalog = Catalog.open(store, paths)
        except ValueError as exc:
            raise UserError(str(exc), hint="give report files written by `agentrl eval --output` or run directories") from None
    try:
        server = BackgroundServer(create_app(catalog), host=host, port=port)
    except OSError as exc:
        catalog.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="choose another --port (0 = any free one)") from exc
    sources = len(catalog.sources())
    console.print(f"agentrl view: {sources} runs and reports at {server.base_url}/ (Ctrl-C to stop)", highlight=False, markup=False)
    if host not in ("127.0.0.1", "::1", "localhost"):
        console.print(printable(f"warning: listening on {host}: anyone who can reach it sees every episode"), highlight=False, markup=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        catalog.close()
