"""The node's HTTP API as an OpenAPI 3.0 document (``GET /openapi.json``), built from what it serves.

Options come from each capability's parsers (each carries its JSON schema), so the document
cannot drift from what ``/infer`` accepts; schema-driven fuzzing (schemathesis) runs against it.
Everything not in this document answers 404 or 405.
"""

from __future__ import annotations

import itertools
from typing import Any

from .. import __version__
from ..capabilities.base import Capability
from ..contract import COMBINE
from ..errors import (
    BackendFailed,
    BackendOutOfMemory,
    Conflict,
    DeadlineExceeded,
    EngineError,
    Forbidden,
    FrameRejected,
    InputError,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..serving.node import Node

BINARY = {"type": "string", "format": "binary"}
ERROR = {"$ref": "#/components/schemas/Error"}
FRAME_MEDIA_TYPES = ("image/jpeg", "image/png", "application/octet-stream")


def _error(description: str, retry_after: bool = False) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return response


def _errors(*errors) -> dict:
    """One response per status; its description names each error code and what it means."""
    by_status: dict[str, list] = {}
    for err in errors:
        by_status.setdefault(str(err.status), []).append(err)
    return {
        status: _error(
            "; ".join(f"{e.code}: {' '.join((e.__doc__ or '').split())}".rstrip(": ") for e in group),
            retry_after=any(e.headers for e in group),
        )
        for status, group in by_status.items()
    }


def _infer(name: str, capability: Capability, token: bool, output_in: str) -> dict:
    """POST /infer/{name} (``output_in="query"``) or /infer/{name}/{output} (``"path"``)."""
    outputs = capability.outputs
    options = [
        {
            "name": option,
            "in": output_in if option == "output" else "query",
            "required": option == "output" and output_in == "path",
            "schema": parser.schema,
        }
        for option, parser in capability.parsers.items()
    ]
    size = {"type": "integer", "minimum": 1}
    raw_size = [
        {"name": dim, "in": "query", "required": False, "schema": size, "description": "raw frames only"}
        for dim in ("width", "height")
    ]
    media = {capability.media_types[o] for o in outputs}
    operation: dict[str, Any] = {
        "summary": f"{name}: conditioning map of one frame",
        "description": "The frame is the body: JPEG, PNG or raw RGB (application/octet-stream with width and "
        "height, as query or Content-Type parameters). Options may also be Content-Type parameters. "
        "X-Metadata (JSON) carries the model, backend, timings and per-frame facts.",
        "parameters": options + raw_size,
        "requestBody": {"required": True, "content": {m: {"schema": BINARY} for m in FRAME_MEDIA_TYPES}},
        "responses": {
            "200": {
                "description": f"the map ({', '.join(outputs)})",
                "headers": {"X-Metadata": {"schema": {"type": "string"}, "description": "JSON"}},
                "content": {m: {"schema": {"type": "object"} if m.endswith("json") else BINARY} for m in sorted(media)},
            },
            **_errors(
                InputError,
                RequestTimeout,
                PayloadTooLarge,
                UnsupportedMediaType,
                FrameRejected,
                EngineError,
                Overloaded,
                NotReady,
                BackendOutOfMemory,
                BackendFailed,
                DeadlineExceeded,
                *([Forbidden] if token else []),
            ),
        },
    }
    if token:
        operation["security"] = [{"bearer": []}]
    return {"post": operation}


def _infer_many(names: tuple[str, ...], capabilities: list[Capability], token: bool) -> dict:
    """POST /infer/a+b: the frame once, every capability's result as a part of multipart/mixed."""
    parts = [_infer(name, cap, token, output_in="query")["post"] for name, cap in zip(names, capabilities)]
    operation = {
        **parts[0],
        "summary": f"{' + '.join(names)}: the maps of one frame, one part each",
        "description": "The frame is decoded once and every capability runs on it (at the same time on ONNX "
        "Runtime; one after the other on TensorRT, whose engines share one stream and scratch). Each option "
        "names its capability (depth.output, pose.person_threshold ...). The answer is multipart/mixed: one part "
        "per capability, in the order named, each with its own Content-Type and X-Metadata.",
        "parameters": [
            {**p, "name": f"{name}.{p['name']}", "required": False}
            for name, part in zip(names, parts)
            for p in part["parameters"]
            if p["name"] not in ("width", "height")
        ]
        + [p for p in parts[0]["parameters"] if p["name"] in ("width", "height")],
    }
    operation["responses"] = {
        **parts[0]["responses"],
        "200": {
            "description": "one part per capability",
            "headers": {
                "X-Metadata": {"schema": {"type": "string"}, "description": "JSON: capabilities, frame, timings"}
            },
            "content": {"multipart/mixed": {"schema": BINARY}},
        },
    }
    return {"post": operation}


def combinations(names: list[str]) -> list[tuple[str, ...]]:
    """Every combination of two or more served capabilities, in the order they are served."""
    return [c for size in range(2, len(names) + 1) for c in itertools.combinations(names, size)]


def document(node: Node) -> dict:
    """The document for this node: its served capabilities and its limits."""
    token = bool(node.config.token)
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "vision node",
            "version": __version__,
            "description": "Depth, segmentation and pose conditioning maps per frame. Every error is JSON "
            '{"error": code, "detail": message}. A request whose line and headers pass '
            f"{node.config.max_header_bytes} bytes gets 431; one that does not arrive whole within "
            f"{node.config.receive_timeout_s:g} s gets 408.",
        },
        "paths": {
            **_infer_paths(node.capabilities, token),
            **_stream_paths(node.capabilities, token),
            **_other_paths(),
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                }
            }
        },
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _infer_paths(served: dict[str, Capability], token: bool) -> dict:
    """Each capability's two routes, then every combination's."""
    paths = {}
    for name, capability in served.items():
        paths[f"/infer/{name}"] = _infer(name, capability, token, output_in="query")
        paths[f"/infer/{name}/{{output}}"] = _infer(name, capability, token, output_in="path")
    for names in combinations(list(served)):
        paths[f"/infer/{COMBINE.join(names)}"] = _infer_many(names, [served[n] for n in names], token)
    return paths


_CHANNELS = ("subscribe_url", "publish_url", "control_url", "events_url", "data_url")
_STREAM_START = {
    "type": "object",
    "description": "go-livepeer's BYOC start (byoc/stream_orchestrator.go); a live-runner session names no channel "
    "(the node asks the session's Livepeer-Session-Control for them)",
    "properties": {
        **{key: {"type": "string", "format": "uri"} for key in _CHANNELS},
        "gateway_request_id": {"type": "string"},
        "params": {
            "type": "object",
            "nullable": True,
            "description": "the capability's options as over HTTP, and width, height, max_framerate",
        },
    },
}
_STREAM_ID = {
    "name": "X-Stream-Id",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the stream (go-livepeer sends it; a live-runner session's Livepeer-Session-Id works too)",
}


def _stream_paths(served: dict[str, Capability], token: bool) -> dict:
    """Each capability's stream URL (/live/{name}) and the calls go-livepeer makes under it; /streams."""
    json_object = {"application/json": {"schema": {"type": "object"}}}

    def call(summary: str, body: dict | None, *errors) -> dict:
        responses = {"200": {"description": "ok", "content": json_object}}
        responses.update(_errors(*errors, *([Forbidden] if token else [])))
        operation = {"summary": summary, "parameters": [_STREAM_ID], "responses": responses}
        if body is not None:
            operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
        if token:
            operation["security"] = [{"bearer": []}]
        return operation

    paths = {}
    for name in served:
        summary = f"{name}: start a live stream (trickle channels of H.264 in MPEG-TS)"
        start = call(summary, _STREAM_START, InputError, NotFound, Conflict, PayloadTooLarge, Overloaded, NotReady)
        paths[f"/live/{name}/stream/start"] = {"post": start}
        paths[f"/live/{name}/live-video-to-video"] = {"post": {**start, "summary": f"{name}: the same as stream/start"}}
        summary = f"{name}: new params for a running stream (a flat JSON object)"
        paths[f"/live/{name}/stream/params"] = {
            "post": call(summary, {"type": "object"}, InputError, NotFound, PayloadTooLarge)
        }
        stop = call(f"{name}: stop a stream (the body, if any, is plain text: why)", None, InputError, PayloadTooLarge)
        stop["requestBody"] = {"required": False, "content": {"text/plain": {"schema": {"type": "string"}}}}
        paths[f"/live/{name}/stream/stop"] = {"post": stop}
        summary = f"{name}: a stream's status (X-Stream-Id), or every stream of {name}"
        paths[f"/live/{name}/stream/status"] = {"get": call(summary, None, NotFound, NotReady)}
    paths["/streams"] = _get("every live stream: fps, latency, frames, params", json_object)
    return paths


def _get(summary: str, content: dict, **errors) -> dict:
    return {"get": {"summary": summary, "responses": {"200": {"description": "ok", "content": content}, **errors}}}


def _other_paths() -> dict:
    """Everything but /infer: health, readiness, facts, metrics, this document and the operator's page."""
    json_object = {"application/json": {"schema": {"type": "object"}}}
    paths = {}
    paths["/health"] = _get(
        "LOADING until warm, then IDLE or OK (busy); ERROR after a fatal fault (the process is exiting)",
        {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["LOADING", "IDLE", "OK", "ERROR"]}},
                }
            }
        },
    )
    paths["/ready"] = _get(
        "200 once every capability is warm; 503 while loading, draining (SIGTERM) or failed",
        json_object,
        **{"503": _error("not_ready: loading, shutting down or failed", retry_after=True)},
    )
    paths["/capabilities"] = _get("models, licences, graphs, backend, bounds, options and limits", json_object)
    paths["/metrics"] = _get("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}})
    paths["/openapi.json"] = _get("this document", json_object)
    html = {"text/html": {"schema": {"type": "string"}}}
    paths["/"] = _get("the operator's page: what is served, readiness, live latency, a frame to try", html)
    paths["/docs"] = _get("this document, rendered (Swagger UI, served by the node)", html)
    for path in ("/ui/app.js", "/ui/style.css", "/ui/docs.js", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"):
        media = "text/css" if path.endswith(".css") else "text/javascript"
        paths[path] = _get("an asset of the page", {media: {"schema": {"type": "string"}}})
    return paths
