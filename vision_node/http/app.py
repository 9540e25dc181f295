"""The node's HTTP face (Starlette): its routes, error handlers and middleware.

The node's state and lifespan live in ``serving.node.Node``; ``/infer`` in ``http.infer``; streams in
``http.streams``; the operator page in ``http.page``. The rest are the node's status routes, here.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Config
from ..errors import NotReady
from ..serving.backends import GpuRuntime, Opener
from ..serving.engines import ServedCapability
from ..serving.node import Node
from . import openapi, page, streams
from .errors import HANDLERS, error_response
from .infer import infer
from .middleware import CountResponses


async def health(request: Request) -> Response:
    return JSONResponse({"status": request.state.node.status})


async def ready(request: Request) -> Response:
    node: Node = request.state.node
    if node.ready:
        return JSONResponse({"ready": True, "capabilities": list(node.sessions)})
    detail = node.error or (
        "shutting down"
        if node.draining
        else "loading: " + ", ".join(name for name, s in node.sessions.items() if not s.warm)
    )
    return error_response(NotReady(detail))


async def capabilities(request: Request) -> Response:
    return JSONResponse(request.state.node.describe())


async def openapi_document(request: Request) -> Response:
    node: Node = request.state.node
    if node.openapi is None:  # the sessions are known from start-up on; the document never changes after
        node.openapi = openapi.document(node)
    return JSONResponse(node.openapi)


async def metrics(request: Request) -> Response:
    return Response(request.state.node.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(
    config: Config,
    open_backend: Opener | None = None,
    served: dict[str, ServedCapability] | None = None,
    gpu: GpuRuntime | None = None,
) -> Starlette:
    """The node as an ASGI app. ``open_backend(served) -> (graph -> backend)`` replaces ONNX Runtime in tests;
    ``served`` and ``gpu``: what ``preflight`` already checked and opened (else the lifespan does it)."""
    node = Node(config, open_backend, served, gpu)
    app = Starlette(
        routes=[
            Route("/infer/{capability}", infer, methods=["POST"]),
            Route("/infer/{capability}/{output}", infer, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/capabilities", capabilities, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_document, methods=["GET"]),
            *streams.routes(),
            *page.routes(),
        ],
        lifespan=node.lifespan,
        exception_handlers=HANDLERS,
    )
    app.router.redirect_slashes = False  # only the documented paths answer: /health/ is 404, not a redirect
    app.state.node = node
    app.add_middleware(CountResponses, node=node)
    return app
