"""The node's one credential: the Bearer token given to an orchestrator at registration."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from ..errors import Forbidden


def check_token(request: Request, token: str) -> None:
    """With a token configured, /infer and the stream calls need ``Authorization: Bearer <token>``: 403 otherwise,
    never 401 (an orchestrator drops a capability whose container answers 401)."""
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Forbidden("this node needs Authorization: Bearer <token> (the token given at registration)")
