"""The node's errors, each mapped to one HTTP status in one place (``NodeError.status``).

Routes raise these; ``http.errors`` turns any of them into ``{"error": code, "detail": message}``.
"""

from __future__ import annotations

import secrets


class NodeError(Exception):
    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InputError(NodeError):
    """The request is malformed: bad option, undecodable body, wrong raw length."""

    status, code = 400, "bad_request"


class RequestTimeout(NodeError):
    """The request did not arrive in time (``--receive-timeout-s``): a slow or stalled client."""

    status, code = 408, "request_timeout"


class Forbidden(NodeError):
    status, code = 403, "forbidden"  # never 401: an orchestrator drops a capability that answers 401


class NotFound(NodeError):
    status, code = 404, "not_found"


class Conflict(NodeError):
    """The request clashes with what runs: a stream id already in use."""

    status, code = 409, "conflict"


class PayloadTooLarge(NodeError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(NodeError):
    status, code = 415, "unsupported_media_type"


class FrameRejected(NodeError):
    """A well-formed frame the graphs cannot take: dimensions outside the bounds, too many pixels."""

    status, code = 422, "unprocessable_frame"


class Overloaded(NodeError):
    """The capability's queue is full: retryable, and a gateway tries the next orchestrator."""

    status, code = 503, "overloaded"
    headers = {"Retry-After": "1"}


class NotReady(NodeError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class BackendOutOfMemory(NodeError):
    """A transient failure (out of memory): only this request fails; retry, here or elsewhere."""

    status, code = 503, "backend_out_of_memory"
    headers = {"Retry-After": "1"}


class BackendFailed(NodeError):
    """The device or runtime is broken; the node stops being ready and exits for its supervisor."""

    status, code = 503, "backend_failed"
    headers = {"Retry-After": "5"}


class DeadlineExceeded(NodeError):
    status, code = 504, "deadline_exceeded"


class EngineError(NodeError):
    """The backend failed on a frame that passed validation."""

    status, code = 500, "engine_error"


def incident() -> str:
    """A short id for an error whose details stay in the node's log: the client gets the id, never the text
    of an exception from inside the node (paths, library internals)."""
    return secrets.token_hex(4)


class StartupError(Exception):
    """Start-up cannot go on; the message names the file (or setting) and the reason."""
