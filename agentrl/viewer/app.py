"""The ``agentrl view`` web app: a JSON API over a :class:`~agentrl.viewer.data.Catalog` and one static page.

Routes (all ``GET``): ``/`` the page; ``/static/*`` its script and style, shipped in the package (no
CDN: the page works offline); ``/api/sources``; ``/api/sources/{id}/episodes`` (query: ``won``,
``task``, ``task_type``, ``min_turns``, ``max_turns``, ``offset``, ``limit``);
``/api/sources/{id}/episodes/{episode}``; ``/api/sources/{id}/curves``; ``/api/compare?a=&b=``.

Everything shown came from an env or an agent, so the page inserts it as text (``textContent``),
never as HTML, and the responses forbid anything but the page's own scripts (Content-Security-Policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.viewer.data import Catalog, Filters

STATIC = Path(__file__).with_name("static")
#: Only the page's own files; no inline scripts, no other origin, no framing.
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def create_app(catalog: Catalog) -> Any:
    """The FastAPI app serving ``catalog`` (read-only)."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="agentrl view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def security_headers(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def found(call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0]) if exc.args else "not found") from None

    @app.get("/", include_in_schema=False)
    def index() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/sources")
    def sources() -> Any:
        return {"sources": catalog.sources()}

    @app.get("/api/sources/{source}/episodes")
    def episodes(
        source: str,
        won: bool | None = None,
        task: str | None = Query(None, max_length=500),
        task_type: str | None = Query(None, max_length=200),
        min_turns: int | None = Query(None, ge=0),
        max_turns: int | None = Query(None, ge=0),
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=1000),
    ) -> Any:
        filters = Filters(won=won, task=task, task_type=task_type, min_turns=min_turns, max_turns=max_turns)
        return found(catalog.episodes, source, filters, offset=offset, limit=limit)

    @app.get("/api/sources/{source}/episodes/{episode}")
    def episode(source: str, episode: str) -> Any:
        if not episode.isdigit():
            raise HTTPException(status_code=404, detail=f"no episode {episode!r}")
        return found(catalog.episode, source, episode)

    @app.get("/api/sources/{source}/curves")
    def curves(source: str) -> Any:
        return found(catalog.curves, source)

    @app.get("/api/compare")
    def compare(a: str, b: str) -> Any:
        return found(catalog.compare, a, b)

    return app
