"""The HTTP face of live streams: the calls go-livepeer makes, under each capability's stream URL.

A capability registered as a BYOC streaming capability has the URL ``{node}/live/{capability}``;
go-livepeer's orchestrator appends ``/stream/start``, ``/stream/params``, ``/stream/stop`` (and
clients read ``/stream/status``), with the stream's id in ``X-Stream-Id``. A persistent live-runner
session makes the same calls through the orchestrator's proxy, identified by ``Livepeer-Session-Id``.
``GET /streams`` lists every stream for the operator's page. What a stream does is ``vision_node.streams``.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InputError, PayloadTooLarge
from .auth import check_token

MAX_BODY = 1 << 20  # a start or a params update is a small JSON object
STREAM_ID = "x-stream-id"  # go-livepeer's createWorkerReq
SESSION_ID, SESSION_TOKEN, SESSION_CONTROL = "livepeer-session-id", "livepeer-session-token", "livepeer-session-control"


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"a stream call's body is at most {MAX_BODY} bytes")
    return bytes(body)


async def _json_object(request: Request) -> dict:
    body = await _body(request)
    try:
        value = json.loads(body or b"{}")
    except ValueError as err:
        raise InputError(f"the body is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise InputError(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def _node(request: Request):
    node = request.state.node
    if node.config.token:
        check_token(request, node.config.token)
    return node


def _stream_id(request: Request, body: dict | None = None) -> str:
    """Whose call this is: go-livepeer's X-Stream-Id, a live-runner session's id, or the body's id."""
    body = body or {}
    for given in (
        request.headers.get(STREAM_ID),
        request.headers.get(SESSION_ID),
        body.get("gateway_request_id"),
        body.get("stream_id"),
    ):
        if given:
            return str(given).strip()
    return ""


async def start(request: Request) -> Response:
    node = _node(request)
    session = node.session(request.path_params["capability"])  # 404 for a capability not served, 503 if not ready
    body = await _json_object(request)
    stream_id = _stream_id(request, body)
    control = request.headers.get(SESSION_CONTROL)
    if not body.get("subscribe_url") and control:  # a live-runner session: the node asks it for channels
        token = request.headers.get(SESSION_TOKEN, "")
        stream, urls = await node.streams.start_runner_session(session, body, stream_id, control, token)
        return JSONResponse({**_started(stream), "channels": urls})
    return JSONResponse(_started(await node.streams.start_byoc(session, body, stream_id)))


def _started(stream) -> dict:
    return {
        "status": "started",
        "stream_id": stream.id,
        "capability": stream.capability.name,
        "params": stream.options.public(),
    }


async def params(request: Request) -> Response:
    node = _node(request)
    body = await _json_object(request)
    stream = node.streams.update(_stream_id(request, body), body)
    return JSONResponse({"status": "updated", "stream_id": stream.id, "params": stream.options.public()})


async def stop(request: Request) -> Response:
    """Stop a stream; the body may be empty or go-livepeer's plain error text (never parsed as JSON here)."""
    node = _node(request)
    reason = (await _body(request)).decode(errors="replace").strip()[:200]
    stream_id = _stream_id(request)
    if not stream_id:
        running = node.streams.of(request.path_params["capability"])
        if len(running) != 1:
            raise InputError(f"which stream? send X-Stream-Id ({len(running)} streams of this capability run)")
        stream_id = running[0].id
    stopped = await node.streams.stop(stream_id, f"stopped by the orchestrator{': ' + reason if reason else ''}")
    return JSONResponse({"status": "stopped" if stopped else "not_running", "stream_id": stream_id})


async def status(request: Request) -> Response:
    node = _node(request)
    stream_id = _stream_id(request)
    if stream_id:
        return JSONResponse(node.streams.find(stream_id).status())
    capability = request.path_params["capability"]
    node.session(capability)
    running = node.streams.of(capability)
    return JSONResponse(
        {"capability": capability, "capacity": node.streams.capacity, "streams": [s.status() for s in running]}
    )


async def streams(request: Request) -> Response:
    node = request.state.node
    return JSONResponse({"capacity_per_capability": node.streams.capacity, "streams": node.streams.describe()})


def routes() -> list[Route]:
    base = "/live/{capability}"
    return [
        Route(f"{base}/stream/start", start, methods=["POST"]),
        Route(f"{base}/live-video-to-video", start, methods=["POST"]),  # ai-runner's and pytrickle's name for start
        Route(f"{base}/stream/params", params, methods=["POST"]),
        Route(f"{base}/stream/stop", stop, methods=["POST"]),
        Route(f"{base}/stream/status", status, methods=["GET"]),
        Route("/streams", streams, methods=["GET"]),
    ]
