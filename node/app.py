"""The HTTP face of the node: routes, limits, health, readiness and metrics (Starlette).

The lifespan checks the manifest and every artefact's hash before the socket accepts
anything; the backends then load and warm up in the background while ``/health`` says
LOADING, and only then does ``/ready`` answer 200.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__, codecs, engines
from .capabilities import CAPABILITY_CLASSES
from .config import Config
from .errors import InputError, NodeError, NotFound, NotReady, PayloadTooLarge, StartupError
from .metrics import Metrics
from .runtime.cuda import SharedScratch, gpu_identity, load_pycuda
from .runtime.onnxruntime import OnnxRuntimeBackend
from .runtime.tensorrt import TensorRTBackend, load_tensorrt
from .session import CapabilitySession

log = logging.getLogger("node")

# Content-Type parameters that are not options.
_IGNORED_PARAMS = {"charset"}


class Node:
    """The node's state at run time: served capabilities, their sessions, health."""

    def __init__(self, config: Config, open_backend: Callable | None = None):
        self.config = config
        self.metrics = Metrics()
        self.open_backend = open_backend or (self._tensorrt if config.backend == "tensorrt" else self._onnxruntime)
        self._gpu = None  # TensorRT: (trt, cuda, identity, shared scratch), made once on first use
        self._gpu_lock = threading.Lock()
        self.sessions: dict[str, CapabilitySession] = {}
        self.error: str | None = None
        self.warm = False  # set once, after every session and the codecs are warm
        self.draining = False
        self.on_fatal: Callable[[], None] = lambda: None  # the CLI makes this stop the server

    def _onnxruntime(self, served: engines.ServedCapability) -> Callable:
        def open_graph(graph: engines.Graph):
            return OnnxRuntimeBackend(
                graph.path,
                graph.outputs,
                served.bounds,
                max_batch=1,
                device=self.config.device,
                threads=self.config.threads,
            )

        return open_graph

    def _tensorrt(self, served: engines.ServedCapability) -> Callable:
        def open_graph(graph: engines.Graph):
            trt, cuda, gpu, scratch = self._gpu_runtime()
            return TensorRTBackend.for_graph(graph, served.bounds, trt, cuda, gpu, scratch)

        return open_graph

    def _gpu_runtime(self):
        with self._gpu_lock:
            if self._gpu is None:
                trt = load_tensorrt()
                cuda, cuda_context = load_pycuda()
                cuda_context.push()
                try:
                    gpu = gpu_identity(cuda)
                finally:
                    cuda.Context.pop()
                self._gpu = (trt, cuda, gpu, SharedScratch(cuda, cuda_context))
            return self._gpu

    @property
    def ready(self) -> bool:
        return self.warm and not self.error and not self.draining

    @property
    def status(self) -> str:
        """The ai-runner health vocabulary: LOADING until warm, then IDLE or OK (busy); ERROR after a fatal fault.

        Draining keeps IDLE/OK (the process still finishes its work); ``/ready`` is what turns 503.
        """
        if self.error:
            return "ERROR"
        if not self.warm:
            return "LOADING"
        return "OK" if any(s.pending for s in self.sessions.values()) else "IDLE"

    def session(self, name: str) -> CapabilitySession:
        session = self.sessions.get(name)
        if session is None:
            raise NotFound(f"no capability {name!r}; this node serves: {', '.join(self.sessions) or 'nothing yet'}")
        if not self.ready:
            raise NotReady(f"{name}: the node is {self.status.lower()}" if not self.draining else "shutting down")
        return session

    @asynccontextmanager
    async def lifespan(self, app):
        try:
            served = await asyncio.to_thread(engines.load, self.config.engines, self.config.capabilities)
        except StartupError as err:
            log.error("start-up failed: %s", err)
            raise
        for name, entry in served.items():
            capability = CAPABILITY_CLASSES[name](entry.options)
            session = CapabilitySession(entry, capability, self.open_backend(entry), self.config.queue_size)
            self.sessions[name] = session
            self.metrics.track(session)
            if entry.demo:
                log.warning("%s: DEMO weights (seeded random, not a trained model): its maps mean nothing", name)
        warm_up = asyncio.create_task(self._warm_up())
        try:
            yield {"node": self}
        finally:
            self.draining = True
            self.metrics.ready.set(0)
            await warm_up
            await asyncio.to_thread(self._close)

    async def _warm_up(self) -> None:
        try:
            seconds = await asyncio.gather(*(asyncio.to_thread(s.open) for s in self.sessions.values()))
            await asyncio.to_thread(codecs.warm_up)
        except Exception as err:  # StartupError names the file; anything else also gets its traceback
            self.error = str(err) if isinstance(err, StartupError) else f"{type(err).__name__}: {err}"
            log.error("start-up failed: %s", self.error, exc_info=not isinstance(err, StartupError))
            self.on_fatal()
            return
        for session, took in zip(self.sessions.values(), seconds):
            for graph, backend in session.backends.items():
                log.info(
                    "%s: %s ready on %s (%s, %s weights) in %.2f s",
                    session.name,
                    graph.path.name,
                    backend.device,
                    backend.name,
                    session.served.weights,
                    took,
                )
        for session in self.sessions.values():
            for kind, size in _memory(session).items():
                self.metrics.memory.labels(session.name, kind).set(size)
        age = process_age()
        log.info("ready: %s%s", ", ".join(self.sessions), f" ({age:.2f} s after process start)" if age else "")
        self.warm = True
        self.metrics.ready.set(1)

    def _close(self) -> None:
        for session in self.sessions.values():
            session.close()


def _memory(session: CapabilitySession) -> dict[str, int]:
    total: dict[str, int] = {}
    for backend in session.backends.values():
        for kind, size in backend.memory().items():
            total[kind] = total.get(kind, 0) + size
    return total


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the start-up log line."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body passed the limit of {limit} bytes")
    return body


async def infer(request: Request) -> Response:
    arrived = time.perf_counter()
    node: Node = request.state.node
    deadline = time.monotonic() + node.config.request_timeout_s
    session = node.session(request.path_params["capability"])
    capability = session.capability
    media_type, ct_params = codecs.parse_content_type(request.headers.get("content-type"))
    codecs.check_media_type(media_type)
    given = _request_options(request, ct_params)
    width, height = given.pop("width", None), given.pop("height", None)
    options = capability.parse_options(given)
    body = await _read_body(request, node.config.max_body_bytes)

    started_decode = time.perf_counter()
    args = (body, media_type, width, height, session.served.bounds)
    frame = codecs.decode(*args) if media_type == codecs.RAW else await run_in_threadpool(codecs.decode, *args)
    decoded = time.perf_counter()
    outcome = await session.run(frame, options, deadline)
    inferred = time.perf_counter()
    encode_args = (outcome.rendered, options, node.config.png_compression)
    if options["output"] == "raw":  # no work to move off the loop: the bytes are the rendered array
        encoded = capability.encode(*encode_args)
    else:
        encoded = await run_in_threadpool(capability.encode, *encode_args)
    done = time.perf_counter()

    timings = {
        "decode": decoded - started_decode,
        "queue": outcome.queue_s,
        "infer": outcome.infer_s,
        "encode": outcome.render_s + (done - inferred),
        "total": done - arrived,
    }
    node.metrics.observe(session.name, timings)
    backend = session.backends[outcome.graph]
    meta = {
        "capability": session.name,
        "model": "+".join(m["name"] for m in session.served.models),
        "weights": session.served.weights,
        "demo": session.served.demo,
        "backend": backend.name,
        "device": backend.device,
        "graph_resolution": list(outcome.graph.resolution),
        "frame": [int(frame.shape[0]), int(frame.shape[1])],
        "output": options["output"],
        **outcome.rendered.meta,
        **encoded.meta,
        "timings_ms": {stage: round(seconds * 1000, 3) for stage, seconds in timings.items()},
    }
    return Response(encoded.body, media_type=encoded.media_type, headers={"X-Metadata": json.dumps(meta)})


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
                "memory_bytes": _memory(session),
            },
            "route": f"/infer/{name}",
            "outputs": list(cap.outputs),
            "options": {k: v for k, v in cap.defaults.items()},
        }
    return JSONResponse(
        {
            "node": {"version": __version__, "status": node.status},
            "limits": {
                "max_body_bytes": config.max_body_bytes,
                "queue_size": config.queue_size,
                "request_timeout_s": config.request_timeout_s,
                "inputs": list(codecs.ACCEPTED),
            },
            "capabilities": served,
        }
    )


async def metrics(request: Request) -> Response:
    return Response(request.state.node.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# ---------------------------------------------------------------------------------------- errors


def _error_response(err: NodeError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status, headers=err.headers)


async def _node_error(request: Request, err: NodeError) -> JSONResponse:
    if err.status >= 500 and err.status not in (503, 504):
        log.error("%s %s: %s", request.method, request.url.path, err.detail)
    return _error_response(err)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse({"error": code, "detail": err.detail}, status_code=err.status_code, headers=err.headers)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("%s %s: unexpected error", request.method, request.url.path)
    return JSONResponse({"error": "internal_error", "detail": f"{type(err).__name__}: {err}"}, status_code=500)


class _CountResponses:
    """ASGI middleware: count responses by route and status (route labels are bounded: no raw paths)."""

    KNOWN = ("/health", "/ready", "/capabilities", "/metrics")

    def __init__(self, app, node: Node):
        self.app, self.node = app, node

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("/infer/"):
            name = path.split("/")[2]
            route = f"/infer/{name}" if name in CAPABILITY_CLASSES else "/infer/other"
        else:
            route = path if path in self.KNOWN else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.node.metrics.responses.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(config: Config, open_backend: Callable | None = None) -> Starlette:
    """The node as an ASGI app. ``open_backend(served) -> (graph -> backend)`` replaces ONNX Runtime in tests."""
    node = Node(config, open_backend)
    app = Starlette(
        routes=[
            Route("/infer/{capability}", infer, methods=["POST"]),
            Route("/infer/{capability}/{output}", infer, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/capabilities", capabilities, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=node.lifespan,
        exception_handlers={NodeError: _node_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.node = node
    app.add_middleware(_CountResponses, node=node)
    return app
