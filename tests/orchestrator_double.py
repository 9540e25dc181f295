"""A TEST DOUBLE of a go-livepeer orchestrator's BYOC side, built from the facts in docs/livepeer.md.

Registration: raw secret in Authorization (400 on a wrong one), JSON fields checked by type,
``ok`` on success, registry in memory keyed by name (``restart()`` forgets it). A job:
``POST /process/request/<route>`` with a base64 JSON ``Livepeer`` header naming the capability
is forwarded as ``POST {registered url}/<route>`` with the body and only Content-Type,
Content-Length and the Bearer token (query and other headers dropped); status, body,
Content-Type and X-Metadata come back. A 401 or a connection error drops the capability.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from benchmarks.nodeproc import free_port

FIELDS = {
    "name": str,
    "description": str,
    "url": str,
    "capacity": int,
    "price_per_unit": int,
    "price_scaling": int,
    "currency": str,
}


class OrchestratorDouble:
    def __init__(self, secret: str, delay_s: float = 0.0):
        self.secret = secret
        self.delay_s = delay_s  # a slow orchestrator: a registration takes this long to be applied and answered
        self.registry: dict[str, dict] = {}
        self.registrations: list[dict] = []  # every accepted registration body, in order
        self.unregistered: list[str] = []
        self.unregistered_at: list[float] = []  # time.monotonic() of each unregistration
        self.rejected = 0
        self.in_flight = 0  # registrations received and not yet applied
        self.forwarded_headers: list[dict] = []
        app = Starlette(
            routes=[
                Route("/capability/register", self.register, methods=["POST"]),
                Route("/capability/unregister", self.unregister, methods=["POST"]),
                Route("/process/request/{route:path}", self.job, methods=["POST"]),
            ]
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def restart(self) -> None:
        """go-livepeer keeps the registry in memory: a restart forgets every capability."""
        self.registry.clear()

    async def register(self, request: Request) -> Response:
        if request.headers.get("authorization") != self.secret:
            self.rejected += 1
            return PlainTextResponse("invalid authorization", status_code=400)
        body = json.loads(await request.body())
        for name, kind in FIELDS.items():
            if not isinstance(body.get(name), kind):
                return PlainTextResponse(f"bad field {name}", status_code=400)
        self.in_flight += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.registry[body["name"]] = body
        self.registrations.append(body)
        self.in_flight -= 1
        return PlainTextResponse("ok")

    async def unregister(self, request: Request) -> Response:
        if request.headers.get("authorization") != self.secret:
            return PlainTextResponse("invalid authorization", status_code=400)
        name = (await request.body()).decode()
        self.registry.pop(name, None)
        self.unregistered.append(name)
        self.unregistered_at.append(time.monotonic())
        return PlainTextResponse("ok")

    async def job(self, request: Request) -> Response:
        livepeer = json.loads(base64.b64decode(request.headers["livepeer"]))
        entry = self.registry.get(livepeer["capability"])
        if entry is None:
            return PlainTextResponse("no orchestrators available", status_code=503)
        headers = {k: request.headers[k] for k in ("content-type",) if k in request.headers}
        if entry.get("token"):
            headers["authorization"] = f"Bearer {entry['token']}"
        self.forwarded_headers.append(headers)
        try:
            target = f"{entry['url']}/{request.path_params['route']}"  # the query string is dropped
            async with httpx.AsyncClient(timeout=30) as client:
                answer = await client.post(target, content=await request.body(), headers=headers)
        except httpx.TransportError:
            self.registry.pop(entry["name"], None)
            return PlainTextResponse("container unreachable", status_code=503)
        if answer.status_code == 401:
            self.registry.pop(entry["name"], None)
        back = {k: answer.headers[k] for k in ("content-type", "x-metadata") if k in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=back)


def livepeer_header(capability: str, timeout_seconds: int = 30) -> str:
    job = {
        "request": json.dumps({}),
        "parameters": json.dumps({}),
        "capability": capability,
        "timeout_seconds": timeout_seconds,
    }
    return base64.b64encode(json.dumps(job).encode()).decode()
