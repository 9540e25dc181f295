"""The operator's page at ``/`` and the API document rendered at ``/docs``: static files, no build step.

The page (``vision_node/http/static``) reads ``/health``, ``/ready``, ``/capabilities`` and ``/metrics`` and sends
frames to ``/infer`` like any client. ``/docs`` is Swagger UI from the swagger-ui-bundle package,
served by the node itself (works offline). Every file is a named route: nothing else is served.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC = Path(__file__).parent / "static"
# The page's own scripts and styles only; images it makes are blob: URLs; Swagger UI sets inline styles.
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
MEDIA = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@cache
def _swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def _file(path_of: Callable[[], Path]):
    async def serve(request: Request) -> Response:
        path = path_of()
        return Response(_read(path), media_type=MEDIA[path.suffix] + "; charset=utf-8", headers=SECURITY)

    return serve


# (route, where the file is): the page, its script and style, and the API document.
FILES = {
    "/": lambda: STATIC / "index.html",
    "/ui/app.js": lambda: STATIC / "app.js",
    "/ui/style.css": lambda: STATIC / "style.css",
    "/ui/docs.js": lambda: STATIC / "docs.js",
    "/docs": lambda: STATIC / "docs.html",
    "/docs/swagger-ui.css": lambda: _swagger_dir() / "swagger-ui.css",
    "/docs/swagger-ui-bundle.js": lambda: _swagger_dir() / "swagger-ui-bundle.js",
}


def routes() -> list[Route]:
    return [Route(path, _file(where), methods=["GET"]) for path, where in FILES.items()]
