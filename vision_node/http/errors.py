"""The node's errors as JSON: ``{"error": code, "detail": why}`` with the error's status; an unexpected one
as a 500 that names an incident, whose details stay in the log."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import NodeError, incident

log = logging.getLogger("vision_node")


def error_response(err: NodeError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status, headers=err.headers)


# Starlette types every handler as taking an Exception: each narrows to the class it is registered for.


async def node_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, NodeError)
    if err.status >= 500 and err.status not in (503, 504):
        log.error("%s %s: %s", request.method, request.url.path, err.detail)
    return error_response(err)


async def http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse({"error": code, "detail": err.detail}, status_code=err.status_code, headers=err.headers)


async def unexpected(request: Request, err: Exception) -> JSONResponse:
    case = incident()
    log.error("%s %s: unexpected error (incident %s)", request.method, request.url.path, case, exc_info=err)
    detail = f"an unexpected error (incident {case}: the node's log has its details)"
    return JSONResponse({"error": "internal_error", "detail": detail}, status_code=500)


HANDLERS = {NodeError: node_error, HTTPException: http_error, Exception: unexpected}
