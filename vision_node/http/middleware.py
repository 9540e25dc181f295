"""ASGI middleware around the node's routes."""

from __future__ import annotations

from ..contract import names_capabilities
from ..serving.node import Node


class CountResponses:
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
