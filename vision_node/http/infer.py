"""``POST /infer/{capability}[/{output}]``: HTTP only. The options are gathered from the path, the Content-Type
and the query, the body is read within its limit, and ``serving.answer`` does the rest in one call."""

from __future__ import annotations

import json
import time

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import InputError, PayloadTooLarge, RequestTimeout
from ..media import content_type
from ..serving.answer import answer, ask, named
from ..serving.node import Node
from .auth import check_token

# Content-Type parameters that are not options.
_IGNORED_PARAMS = {"charset"}

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
    deadline = time.monotonic() + node.config.request_timeout_s
    sessions = named(node, request.path_params["capability"], "output" in request.path_params)
    media_type, ct_params = content_type.parse(request.headers.get("content-type"))
    question = ask(sessions, media_type, _request_options(request, ct_params))
    started_read = time.perf_counter()
    body = await _read_body(request, node.config.max_body_bytes)
    livepeer_session = request.headers.get(LIVEPEER_SESSION_ID)
    reply = await answer(question, body, deadline, arrived, time.perf_counter() - started_read, livepeer_session)
    # The metrics are taken once the answer is on its way: off the request's latency.
    observed = BackgroundTask(node.observe, reply.timings, livepeer_session is not None)
    return Response(
        reply.body, media_type=reply.media_type, headers={"X-Metadata": json.dumps(reply.meta)}, background=observed
    )


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
