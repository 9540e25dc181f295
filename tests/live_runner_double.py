"""A TEST DOUBLE of a go-livepeer orchestrator's live-runner side, built from its source.

go-livepeer 176aa415 (2026-08-18): ``ai/runner/live_runner.go`` and ``server/ai_http.go``. What it
does, as they do:

- ``POST /runners/heartbeat``: the body is validated first (400, plain text naming the field:
  ``invalid runner_url``, ``app must be trimmed``, ``status must be lowercase and trimmed``, ``mode
  must be "persistent" or "single-shot"``, ``capacity must be >= 0``, metadata over 1024 bytes;
  ``price_info.*`` when ``onchain``). An unknown ``runner_id`` (or none: ``runner_`` + 8 chars) is a
  registration checked against the orchestrator secret (401 ``invalid registration
  authorization``) and answered with a ``heartbeat_secret``; a known one is checked against it
  (404 ``runner not found`` once its TTL passed, 401 ``invalid heartbeat authorization``). Each
  heartbeat replaces the runner's fields. Only status "" or "ready" is discoverable.
- Expiry after ``ttl`` without a heartbeat; a sweep every ``interval`` removes expired runners
  (until then they answer 404, after that their id is unknown: 401 for the heartbeat secret).
- ``POST /runners/{id}/unregister`` with the heartbeat secret: 204.
- ``GET /discovery``: ``[{"address", "runners": [...]}]`` of ready, unexpired runners.
- Single-shot ``ANY /apps/{id}/app/{path}``: a slot for the request (503 ``no capacity available
  for runner`` when full), proxied with method, query, headers (Host rewritten) and body, plus
  ``Livepeer-Runner-Route``, ``Livepeer-Session-Id``, ``Livepeer-Session-Token`` and
  ``Livepeer-Session-Control``; 502 when the runner is unreachable.
- Persistent: ``POST /apps/{id}/session`` -> ``session_id``, ``app_url``, ``control_url``;
  ``ANY /apps/{id}/session/{sid}/app/{path}``; ``POST /apps/{id}/session/{sid}/stop`` -> 204.
- Static: ``register_static(runners.json)`` validates like ``POST /registerLiveRunners`` (400
  ``runners[i]: ...``) and polls each ``health_url`` every ``health_interval`` (3 s timeout),
  healthy only on exactly ``healthy_status_code``.

- Session callbacks, with a trickle server (``trickle=``, a ``benchmarks.trickle_server.TrickleServer``):
  ``POST /runner/{id}/session/{sid}/channels`` with the session's token (401 ``invalid authorization``
  otherwise; 404 for an unknown session) makes each named channel ``{sid}-{name}`` (names with ``/``
  become ``-``; alphanumerics, ``_`` and ``-`` only: 400) and answers ``{"channels": [{name,
  channel_name, url, mime_type}]}`` (``CreateLiveRunnerTrickleChannel``); existing names are
  idempotent. Stopping a session closes its channels (``closeChannelsLocked``).

Not modelled: payments (on-chain 402s), the o2r trickle channel, proxy templates, the other callbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import threading
import time
from decimal import Decimal, InvalidOperation
from urllib.parse import urlparse

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from benchmarks.nodeproc import free_port

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class Refused(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def _go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


class LiveRunnerDouble:
    def __init__(
        self,
        secret: str,
        interval: float = 0.5,
        ttl: float = 2.0,
        onchain: bool = False,
        health_interval: float = 0.3,
        delay_s: float = 0.0,
        trickle=None,
    ):
        self.trickle = trickle  # a TrickleServer for session channels (None: the callback answers 404)
        self.secret, self.interval, self.ttl, self.onchain = secret, interval, ttl, onchain
        self.health_interval = health_interval
        self.delay_s = delay_s  # a slow orchestrator: each heartbeat takes this long to be applied and answered
        self.in_flight = 0  # heartbeats received and not yet applied
        self.sweeping = True  # False holds expired runners in the 404 window
        self.runners: dict[str, dict] = {}
        self.sessions: dict[tuple[str, str], dict] = {}
        self.log: list[tuple[float, str, str, int]] = []  # (monotonic, kind, runner id, status) of every call
        self.forwarded: list[dict] = []  # headers the runner received, per proxied request
        self.channel_calls: list[dict] = []  # headers of each channels callback the runner made
        app = Starlette(
            routes=[
                Route("/runners/heartbeat", self.heartbeat, methods=["POST"]),
                Route("/runners/{runner_id}/unregister", self.unregister, methods=["POST"]),
                Route("/discovery", self.discovery, methods=["GET"]),
                Route("/apps/{runner_id}/session", self.reserve, methods=["POST"]),
                Route("/apps/{runner_id}/session/{session_id}/stop", self.stop_session, methods=["POST"]),
                Route("/apps/{runner_id}/session/{session_id}/app/{path:path}", self.in_session, methods=_ANY),
                Route("/apps/{runner_id}/app/{path:path}", self.single_shot, methods=_ANY),
                Route("/runner/{runner_id}/session/{session_id}/channels", self.channels, methods=["POST"]),
            ]
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_and_poll, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self._sweeper.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.server.should_exit = True
        self.thread.join(10)

    # ---------------------------------------------------------------- what a test looks at and does

    def restart(self) -> None:
        """The registry is in memory: a restarted orchestrator knows no runner and no session."""
        self.runners.clear()
        self.sessions.clear()

    def expire(self, runner_id: str) -> None:
        """Make a runner's TTL pass now (it answers 404 until the next sweep)."""
        self.runners[runner_id]["last"] = -1e9

    def discoverable(self) -> dict[str, dict]:
        return {i: r for i, r in self.runners.items() if self._ready(r)}

    # ---------------------------------------------------------------- dynamic registration

    async def heartbeat(self, request: Request) -> Response:
        try:
            body = self._normalise(await request.json())
            auth = request.headers.get("authorization", "")
            runner_id = (body.get("runner_id") or "").strip() or "runner_" + secrets.token_hex(4)
            runner = self.runners.get(runner_id)
            first = runner is None
            if first:
                if not hmac.compare_digest(auth, self.secret):
                    raise Refused(401, "invalid registration authorization")
                runner = {"id": runner_id, "secret": secrets.token_hex(26), "static": False}
            elif runner.get("removed") or time.monotonic() - runner["last"] > self.ttl:
                raise Refused(404, "runner not found")
            elif not hmac.compare_digest(auth, runner["secret"]):
                raise Refused(401, "invalid heartbeat authorization")
        except Refused as refused:
            self.log.append((time.monotonic(), "heartbeat", "", refused.status))
            return PlainTextResponse(refused.text + "\n", status_code=refused.status)
        if self.delay_s:
            self.in_flight += 1
            await asyncio.sleep(self.delay_s)
            self.in_flight -= 1
        runner.update(fields=body, last=time.monotonic())
        self.runners[runner_id] = runner
        self.log.append((time.monotonic(), "register" if first else "heartbeat", runner_id, 200))
        answer = {
            "runner_id": runner_id,
            "orchestrator": self.url,
            "heartbeat_interval": _go_duration(self.interval),
            "heartbeat_ttl": _go_duration(self.ttl),
            "session_ids": sorted(s for (r, s) in self.sessions if r == runner_id),
        }
        if first:
            answer["heartbeat_secret"] = runner["secret"]
        return JSONResponse(answer)

    async def unregister(self, request: Request) -> Response:
        runner = self.runners.get(request.path_params["runner_id"])
        if runner is None or time.monotonic() - runner["last"] > self.ttl and not runner["static"]:
            return PlainTextResponse("runner not found\n", status_code=404)
        if runner["static"]:
            return PlainTextResponse("static runner cannot unregister with heartbeat credentials\n", status_code=400)
        if not hmac.compare_digest(request.headers.get("authorization", ""), runner["secret"]):
            return PlainTextResponse("invalid authorization\n", status_code=401)
        self._remove(runner["id"])
        self.log.append((time.monotonic(), "unregister", runner["id"], 204))
        return Response(status_code=204)

    def _normalise(self, body: dict) -> dict:
        """normalizeHeartbeat: every check and message of go-livepeer, in its order."""
        url = urlparse(body.get("runner_url") or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise Refused(400, "invalid runner_url")
        app = body.get("app") or ""
        if not app or app != app.strip():
            raise Refused(400, "app must be trimmed")
        metadata = body.get("metadata") or ""
        if len(metadata.encode()) > 1024:
            raise Refused(400, "metadata must be at most 1024 bytes")
        status = body.get("status") or ""
        if status != status.strip().lower():
            raise Refused(400, "status must be lowercase and trimmed")
        mode = {"": "persistent", "single_shot": "single-shot"}.get(body.get("mode") or "", body.get("mode"))
        if mode not in ("persistent", "single-shot"):
            raise Refused(400, 'mode must be "persistent" or "single-shot"')
        capacity = body.get("capacity") or 0
        if not isinstance(capacity, int) or capacity < 0:
            raise Refused(400, "capacity must be >= 0")
        if self.onchain:
            price = (body.get("price_info") or {}).get("price")
            if price in (None, ""):
                raise Refused(400, "price_info.price is required")
            try:
                if not Decimal(str(price)) > 0:
                    raise InvalidOperation
            except InvalidOperation:
                raise Refused(400, "price_info.price must be a positive decimal") from None
            if ((body["price_info"].get("currency") or "usd").strip().lower()) != "usd":
                raise Refused(400, "price_info.currency must be usd")
            if (body["price_info"].get("unit") or "hour").strip().lower() not in ("hour", "720p", "fixed"):
                raise Refused(400, "price_info.unit must be hour, 720p, or fixed")
        return {**body, "mode": mode, "capacity": capacity or 1, "status": status}

    # ---------------------------------------------------------------- static registration

    def register_static(self, config: dict) -> list[dict]:
        """``POST /registerLiveRunners``: all entries valid, or Refused(400, "runners[i]: ...")."""
        entries, labels = [], set()
        for i, entry in enumerate(config.get("runners", [])):
            try:
                routing = (entry.get("routing") or "").strip() or "runner-id"
                if routing not in ("runner-id", "label"):
                    raise Refused(400, 'routing must be "runner-id" or "label"')
                label = entry.get("label") or ""
                if not label or label != label.strip():
                    raise Refused(400, "label is required and must be trimmed")
                health = entry.get("health_url") or ""
                if not health:
                    raise Refused(400, "health_url is required")
                if health.startswith("/"):
                    health = (entry.get("runner_url") or "").rstrip("/") + health
                if urlparse(health).scheme not in ("http", "https"):
                    raise Refused(400, "invalid health_url")
                code = entry.get("healthy_status_code") or 200
                if not 100 <= code <= 599:
                    raise Refused(400, "healthy_status_code must be a valid HTTP status code")
                fields = self._normalise(entry)
                if label in labels:
                    raise Refused(400, f'duplicate label "{label}"')
                if routing == "label" and "/" in label:
                    raise Refused(400, 'label cannot contain / when routing is "label"')
            except Refused as refused:
                raise Refused(400, f"runners[{i}]: {refused.text}") from None
            labels.add(label)
            entries.append(
                {"fields": {**fields, "status": "unavailable"}, "health": health, "code": code, "label": label}
            )
        added = []
        for entry in entries:
            runner_id = "runner_" + secrets.token_hex(4)
            runner = {"id": runner_id, "static": True, "last": time.monotonic(), **entry}
            runner["fields"]["status"] = "ready" if self._healthy(runner) else "unavailable"
            self.runners[runner_id] = runner
            added.append(runner)
        return added

    def _healthy(self, runner: dict) -> bool:
        try:
            return httpx.get(runner["health"], timeout=3.0).status_code == runner["code"]
        except httpx.HTTPError:
            return False

    def _sweep_and_poll(self) -> None:
        """The expiry loop (every heartbeat interval) and the static health poll, on one thread."""
        next_sweep = next_poll = time.monotonic()
        while not self._stop.wait(0.02):
            now = time.monotonic()
            if now >= next_sweep and self.sweeping:
                next_sweep = now + self.interval
                for runner in list(self.runners.values()):
                    if not runner["static"] and now - runner["last"] > self.ttl:
                        self._remove(runner["id"])
            if now >= next_poll:
                next_poll = now + self.health_interval
                for runner in [r for r in self.runners.values() if r["static"]]:
                    healthy = self._healthy(runner)
                    runner["fields"]["status"] = "ready" if healthy else "unavailable"
                    if not healthy:  # unhealthy: every session released
                        for key in [k for k in self.sessions if k[0] == runner["id"]]:
                            del self.sessions[key]

    def _remove(self, runner_id: str) -> None:
        self.runners.pop(runner_id, None)
        for key in [k for k in self.sessions if k[0] == runner_id]:
            del self.sessions[key]

    # ---------------------------------------------------------------- discovery and the proxy

    def _ready(self, runner: dict) -> bool:
        fresh = runner["static"] or time.monotonic() - runner["last"] <= self.ttl
        return fresh and runner["fields"].get("status", "") in ("", "ready")

    async def discovery(self, request: Request) -> Response:
        listed = []
        for runner_id, runner in self.discoverable().items():
            fields = runner["fields"]
            used = sum(1 for (r, _) in self.sessions if r == runner_id)
            path = "app" if fields["mode"] == "single-shot" else "session"
            listed.append(
                {
                    "url": f"{self.url}/apps/{runner_id}/{path}",
                    "app": fields["app"],
                    "mode": fields["mode"],
                    "capacity": fields["capacity"],
                    "capacity_used": used,
                    "capacity_available": fields["capacity"] - used,
                    "version": fields.get("version", ""),
                    **({"gpu": fields["gpu"]} if fields.get("gpu") else {}),
                }
            )
        return JSONResponse([{"address": self.url, **({"runners": listed} if listed else {})}])

    def _runner(self, runner_id: str) -> dict:
        runner = self.runners.get(runner_id)
        if runner is None or not self._ready(runner):
            raise Refused(404, "runner not found")
        return runner

    def _reserve(self, runner: dict) -> str:
        used = sum(1 for (r, _) in self.sessions if r == runner["id"])
        if used >= runner["fields"]["capacity"]:
            raise Refused(503, "no capacity available for runner")
        session_id = "session_" + secrets.token_hex(4)
        self.sessions[(runner["id"], session_id)] = {"created": time.monotonic()}
        return session_id

    async def reserve(self, request: Request) -> Response:
        try:
            runner = self._runner(request.path_params["runner_id"])
            if runner["fields"]["mode"] != "persistent":
                raise Refused(400, "only persistent runners have sessions")
            session_id = self._reserve(runner)
        except Refused as refused:
            return PlainTextResponse(refused.text + "\n", status_code=refused.status)
        base = f"{self.url}/apps/{runner['id']}/session/{session_id}"
        return JSONResponse({"session_id": session_id, "app_url": f"{base}/app", "control_url": base})

    async def stop_session(self, request: Request) -> Response:
        if request.path_params["runner_id"] not in self.runners:
            return PlainTextResponse("runner not found\n", status_code=404)
        session = self.sessions.pop((request.path_params["runner_id"], request.path_params["session_id"]), None)
        for channel in (session or {}).get("channels", {}).values():
            self.trickle.close_channel(channel["channel_name"])  # the session's channels go with it
        return Response(status_code=204)  # go-livepeer answers 204 even for an unknown session

    async def channels(self, request: Request) -> Response:
        """``CreateLiveRunnerTrickleChannel``: the session's token, then each named channel (idempotent)."""
        key = (request.path_params["runner_id"], request.path_params["session_id"])
        session = self.sessions.get(key)
        if session is None or self.trickle is None:
            return PlainTextResponse("runner session not found\n", status_code=404)
        if not hmac.compare_digest(request.headers.get("livepeer-session-token", ""), _session_token(*key)):
            return PlainTextResponse("invalid authorization\n", status_code=401)
        try:
            asked = (await request.json())["channels"]
        except (ValueError, KeyError, TypeError):
            return PlainTextResponse("invalid body\n", status_code=400)
        if not asked:
            return PlainTextResponse("channels is required\n", status_code=400)
        made = session.setdefault("channels", {})
        answer = []
        for channel in asked:
            name = (channel.get("name") or "").strip().replace("/", "-")
            if not name or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                why = "trickle channel name may only contain alphanumerics, underscores, or hyphens\n"
                return PlainTextResponse(why, status_code=400)
            if name not in made:
                channel_name = f"{key[1]}-{name}"
                mime = (channel.get("mime_type") or "").strip() or "application/octet-stream"
                url = self.trickle.create_channel(channel_name, mime)
                made[name] = {"name": name, "channel_name": channel_name, "url": url, "mime_type": mime}
            answer.append(made[name])
        self.channel_calls.append(dict(request.headers))
        return JSONResponse({"channels": answer})

    async def in_session(self, request: Request) -> Response:
        try:
            runner = self._runner(request.path_params["runner_id"])
            if (runner["id"], request.path_params["session_id"]) not in self.sessions:
                raise Refused(404, "runner session not found")
        except Refused as refused:
            return PlainTextResponse(refused.text + "\n", status_code=refused.status)
        return await self._proxy(request, runner, request.path_params["session_id"])

    async def single_shot(self, request: Request) -> Response:
        try:
            runner = self._runner(request.path_params["runner_id"])
            if runner["fields"]["mode"] != "single-shot":
                raise Refused(400, "runner is not single-shot")
            session_id = self._reserve(runner)  # held for the whole request
        except Refused as refused:
            return PlainTextResponse(refused.text + "\n", status_code=refused.status)
        try:
            return await self._proxy(request, runner, session_id)
        finally:
            self.sessions.pop((runner["id"], session_id), None)

    async def _proxy(self, request: Request, runner: dict, session_id: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        token = _session_token(runner["id"], session_id)
        headers.update(
            {
                "Livepeer-Runner-Route": request.path_params["runner_id"],
                "Livepeer-Session-Id": session_id,
                "Livepeer-Session-Token": token,
                "Livepeer-Session-Control": f"{self.url}/runner/{runner['id']}/session/{session_id}",
            }
        )
        self.forwarded.append(headers)
        target = runner["fields"]["runner_url"].rstrip("/") + "/" + request.path_params["path"]
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                answer = await client.request(
                    request.method,
                    target,
                    params=request.url.query or None,
                    content=await request.body(),
                    headers=headers,
                )
        except httpx.TransportError as err:
            return PlainTextResponse(f"{err}\n", status_code=502)
        back = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return Response(answer.content, status_code=answer.status_code, headers=back)


def _session_token(runner_id: str, session_id: str) -> str:
    return hashlib.sha256(f"{runner_id}:{session_id}".encode()).hexdigest()


_ANY = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
