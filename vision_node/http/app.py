"""The HTTP face of the node: routes, limits, health, readiness and metrics (Starlette).

The node's state and lifespan live in ``service.Node``; this module turns requests into its
calls and its errors into JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import numpy as np
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..capabilities.base import Encoded
from ..config import Config
from ..contract import COMBINE, common_bounds, names_capabilities
from ..errors import InputError, NodeError, NotReady, PayloadTooLarge, RequestTimeout, incident
from ..media import codecs
from ..runtime.base import Backend
from ..runtime.tensorrt import GpuRuntime
from ..serving import engines
from ..serving.node import Node, backend_memory
from ..serving.session import CapabilitySession, Outcome
from . import openapi
from . import page as ui
from . import streams as stream_api
from .auth import check_token

log = logging.getLogger("vision_node")

# Content-Type parameters that are not options.
_IGNORED_PARAMS = {"charset"}


# ---------------------------------------------------------------------------------------- routes


def _request_options(request: Request, ct_params: dict[str, str]) -> dict[str, str]:
    """Options from the path (``/infer/{capability}/{output}``), Content-Type parameters and the query.

    Through a Livepeer orchestrator only the path, the body and the Content-Type arrive; the query
    is for direct callers. A name given twice must agree.
    """
    given: dict[str, str] = {}
    sources = [
        ("path", {"output": request.path_params["output"]} if "output" in request.path_params else {}),
        ("Content-Type", {k: v for k, v in ct_params.items() if k not in _IGNORED_PARAMS}),
        ("query", dict(request.query_params)),
    ]
    repeated = {k for k, _ in request.query_params.multi_items()}
    if len(repeated) != len(request.query_params.multi_items()):
        raise InputError("an option is repeated in the query")
    for where, options in sources:
        for name, value in options.items():
            if name in given and given[name] != value:
                raise InputError(
                    f"option {name} given twice with different values ({given[name]!r}, {value!r} in {where})"
                )
            given[name] = value
    return given


async def _read_body(request: Request, limit: int) -> bytearray:
    """The body, refused with 413 as soon as it passes ``limit`` (by Content-Length or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is above the limit of {limit}")
    # Grown as the bytes arrive, never allocated from the declared length: a client that declares the limit
    # and sends nothing must not make the node hold the limit (bytearray(n) writes all n bytes).
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"body passed the limit of {limit} bytes")
    except ClientDisconnect:  # gone, or closed by the receive deadline (http/server.py): nobody reads it
        raise RequestTimeout("the body did not arrive") from None
    return body


# go-livepeer's live-runner proxy adds this (and a session token, never read nor logged here): one id per
# persistent session, or per request for single-shot runners. Per-stream state keys on it.
LIVEPEER_SESSION_ID = "livepeer-session-id"


async def infer(request: Request) -> Response:
    """One frame through one capability (``/infer/depth``) or several at once (``/infer/depth+pose``).

    A combination decodes the frame once, runs each capability on its own worker (at the same time on ONNX
    Runtime; TensorRT's engines share one stream and scratch, one after the other) and
    answers ``multipart/mixed``: one part per capability, each with its Content-Type and X-Metadata.
    It is admitted whole or refused whole (503), and a part that fails fails the request.
    """
    arrived = time.perf_counter()
    node: Node = request.state.node
    if node.config.token:
        check_token(request, node.config.token)
    livepeer_session = request.headers.get(LIVEPEER_SESSION_ID)
    deadline = time.monotonic() + node.config.request_timeout_s
    names, sessions = _sessions_named(request, node)
    media_type, ct_params = codecs.parse_content_type(request.headers.get("content-type"))
    codecs.check_media_type(media_type)
    given = _request_options(request, ct_params)
    width, height = given.pop("width", None), given.pop("height", None)
    options = _options_per_capability(sessions, given)
    started_read = time.perf_counter()
    body = await _read_body(request, node.config.max_body_bytes)

    started_decode = time.perf_counter()
    frame = await _decode(body, media_type, width, height, sessions)
    decoded = time.perf_counter()
    for session in sessions:  # all or none: no await between these checks and the submissions
        session.check_room()
    jobs = [session.submit(frame, options[session.name], deadline) for session in sessions]
    results = await _each([s.result(job) for s, job in zip(sessions, jobs)])
    parts = await _each([
        _part(session, outcome, options[session.name], frame, arrived, node.config.png_compression,
              started_decode - started_read, decoded - started_decode)
        for session, outcome in zip(sessions, results)
    ])
    # The metrics are taken once the answer is on its way: off the request's latency.
    observed = BackgroundTask(_observe, node, [(s.name, timings) for s, (_, _, timings) in zip(sessions, parts)],
                              livepeer_session is not None)
    if len(parts) == 1:
        encoded, meta, _ = parts[0]
        if livepeer_session:
            meta["livepeer_session"] = livepeer_session
        headers = {"X-Metadata": json.dumps(meta)}
        return Response(encoded.body, media_type=encoded.media_type, headers=headers, background=observed)
    summary = {
        "capabilities": names,
        "frame": [int(frame.shape[0]), int(frame.shape[1])],
        "timings_ms": {"read": round((started_decode - started_read) * 1000, 3),
                       "decode": round((decoded - started_decode) * 1000, 3),
                       "total": round((time.perf_counter() - arrived) * 1000, 3)},
        **({"livepeer_session": livepeer_session} if livepeer_session else {}),
    }
    answer, media_type = codecs.multipart([(name, encoded, meta) for name, (encoded, meta, _) in zip(names, parts)])
    return Response(answer, media_type=media_type, headers={"X-Metadata": json.dumps(summary)}, background=observed)


async def _observe(node: Node, timings: list[tuple[str, dict]], live_runner: bool) -> None:
    for name, stages in timings:
        node.metrics.observe(name, stages)
        if live_runner:
            node.metrics.live_runner_frames.labels(name).inc()


def _sessions_named(request: Request, node: Node) -> tuple[list[str], list[CapabilitySession]]:
    """The capabilities the path names (``depth+pose``: several) and their sessions; 4xx for a bad name."""
    names = request.path_params["capability"].split(COMBINE)
    if len(set(names)) != len(names):
        raise InputError(f"{request.path_params['capability']}: a capability is named twice")
    sessions = [node.session(name) for name in names]
    if len(names) > 1 and "output" in request.path_params:
        raise InputError(f"a combination takes each capability's output as an option, e.g. {names[0]}.output=raw")
    return names, sessions


async def _decode(body: bytearray, media_type: str, width: str | None, height: str | None,
                  sessions: list[CapabilitySession]) -> np.ndarray | codecs.JpegFrame:
    """The frame, decoded off the event loop where that is work (JPEG, PNG), within every session's bounds.

    --gpu-decode: one capability's JPEG is checked from its header here and decoded on the GPU by its worker.
    """
    on_gpu = media_type == "image/jpeg" and len(sessions) == 1 and sessions[0].decodes_jpeg
    args = (body, media_type, width, height, common_bounds([s.served.bounds for s in sessions]), on_gpu)
    if media_type == codecs.RAW or on_gpu:  # a view of the body, or a header: no work to move off the loop
        return codecs.decode(*args)
    return await run_in_threadpool(codecs.decode, *args)


async def _each(awaitables: list) -> list:
    """Their results, awaited together; the first failure (in the order named) is raised once all are done.
    One is awaited directly: the single-capability path makes no tasks."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
    return results


def _options_per_capability(sessions: list[CapabilitySession], given: dict[str, str]) -> dict[str, dict]:
    """Each capability's parsed options. In a combination every option names its capability (``depth.range``)."""
    if len(sessions) == 1:
        return {sessions[0].name: sessions[0].capability.parse_options(given)}
    per: dict[str, dict[str, str]] = {s.name: {} for s in sessions}
    for key, value in given.items():
        name, dot, option = key.partition(".")
        if not dot or name not in per:
            raise InputError(
                f"option {key!r}: in a combination each option names its capability, e.g. {sessions[0].name}."
                f"{option or key} (this request combines {', '.join(per)})"
            )
        per[name][option] = value
    parsed = {}
    for session in sessions:
        try:
            parsed[session.name] = session.capability.parse_options(per[session.name])
        except InputError as err:
            raise InputError(f"{session.name}: {err.detail}") from None
    return parsed


async def _part(session: CapabilitySession, outcome: Outcome, options: dict, frame: np.ndarray | codecs.JpegFrame,
                arrived: float, png_level: int, read_s: float, decode_s: float) -> tuple[Encoded, dict, dict]:
    """(encoded, X-Metadata, timings) of one capability's result."""
    started = time.perf_counter()
    encode_args = (outcome.rendered, options, png_level)
    if options["output"] == "raw":  # no work to move off the loop: the bytes are the rendered array
        encoded = session.capability.encode(*encode_args)
    else:
        encoded = await run_in_threadpool(session.capability.encode, *encode_args)
    done = time.perf_counter()
    timings = {
        "read": read_s,
        "decode": decode_s,
        "queue": outcome.queue_s,
        "infer": outcome.infer_s,
        "render": outcome.render_s,
        "encode": done - started,
        "total": done - arrived,
    }
    frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
    meta = {
        **session.graph_meta(outcome.graph, *frame_hw),
        "batch": outcome.batch,
        "frame": list(frame_hw),
        "output": options["output"],
        **outcome.rendered.meta,
        **encoded.meta,
        "timings_ms": {stage: round(seconds * 1000, 3) for stage, seconds in timings.items()},
    }
    return encoded, meta, timings


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
    return _error_response(NotReady(detail))


async def capabilities(request: Request) -> Response:
    node: Node = request.state.node
    config = node.config
    served = {}
    for name, session in node.sessions.items():
        cap = session.capability
        backends = list(session.backends.values())
        served[name] = {
            **engines.describe(session.served),
            "warm": session.warm,
            "backend": {
                "name": backends[0].name if backends else config.backend,
                "device": backends[0].device if backends else None,
                "precision": backends[0].precision if backends else None,
                "memory_bytes": backend_memory(session),
            },
            "route": f"/infer/{name}",
            "outputs": list(cap.outputs),
            "options": {k: v for k, v in cap.defaults.items()},
            "stream": {
                "url": f"/live/{name}",  # go-livepeer appends /stream/start, /stream/params, /stream/stop
                "capacity": node.streams.capacity,
                "active": node.streams.active(name),
                "outputs": list(cap.stream_outputs),
            },
        }
    return JSONResponse(
        {
            "node": {
                "version": __version__,
                "status": node.status,
                "backend": config.backend,
                "shared_scratch_bytes": node.shared_scratch_bytes,
                "token_required": bool(config.token),  # /infer needs Authorization: Bearer <token>
            },
            "limits": {
                "max_body_bytes": config.max_body_bytes,
                "queue_size": config.queue_size,
                "request_timeout_s": config.request_timeout_s,
                "inputs": list(codecs.ACCEPTED),
            },
            "capabilities": served,
        }
    )


async def openapi_document(request: Request) -> Response:
    node: Node = request.state.node
    if node.openapi is None:  # the sessions are known from start-up on; the document never changes after
        node.openapi = openapi.document(node)
    return JSONResponse(node.openapi)


async def metrics(request: Request) -> Response:
    return Response(request.state.node.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ---------------------------------------------------------------------------------------- errors


def _error_response(err: NodeError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status, headers=err.headers)


# Starlette types every handler as taking an Exception: each narrows to the class it is registered for.


async def _node_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, NodeError)
    if err.status >= 500 and err.status not in (503, 504):
        log.error("%s %s: %s", request.method, request.url.path, err.detail)
    return _error_response(err)


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse({"error": code, "detail": err.detail}, status_code=err.status_code, headers=err.headers)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    case = incident()
    log.error("%s %s: unexpected error (incident %s)", request.method, request.url.path, case, exc_info=err)
    detail = f"an unexpected error (incident {case}: the node's log has its details)"
    return JSONResponse({"error": "internal_error", "detail": detail}, status_code=500)


class _CountResponses:
    """ASGI middleware: count responses by route and status (route labels are bounded: no raw paths)."""

    KNOWN = ("/health", "/ready", "/capabilities", "/metrics", "/openapi.json", "/", "/docs")

    def __init__(self, app, node: Node):
        self.app, self.node = app, node

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("/infer/"):
            name = path.split("/")[2]
            # bounded: capabilities and their orders
            route = f"/infer/{name}" if names_capabilities(name) else "/infer/other"
        else:
            route = path if path in self.KNOWN else "other"

        status = None

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                return await send(message)
            try:
                await send(message)
            finally:  # counted once the answer is sent (or could not be): off its latency
                if status is not None and not message.get("more_body", False):
                    self.node.metrics.responses.labels(route, str(status)).inc()
                    status = None

        await self.app(scope, receive, counting_send)


def create_app(
    config: Config,
    open_backend: Callable[[engines.ServedCapability], Callable[[engines.Graph], Backend]] | None = None,
    served: dict[str, engines.ServedCapability] | None = None,
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
            *stream_api.routes(),
            *ui.routes(),
        ],
        lifespan=node.lifespan,
        exception_handlers={NodeError: _node_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.router.redirect_slashes = False  # only the documented paths answer: /health/ is 404, not a redirect
    app.state.node = node
    app.add_middleware(_CountResponses, node=node)
    return app
