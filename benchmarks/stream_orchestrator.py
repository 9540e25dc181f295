"""A TEST DOUBLE of the orchestrator (and gateway) side of a go-livepeer BYOC stream, for end-to-end tests.

It drives a node the way go-livepeer does: trickle channels on a ``TrickleServer``, ``/stream/start``,
``/stream/params`` and ``/stream/stop`` calls, keep-alives on the control channel, and the events subscriber
with its watchdog. The harness's ``publish`` and ``Reader`` (benchmarks/live_io.py) play the video ingest and
egress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import aiohttp

from .live_io import MP2T, subscribe
from .trickle_server import TrickleServer

JSON = "application/json"


@dataclass
class StartResult:
    status: int  # the node's own status (go-livepeer turns a 401 into 500 for the gateway)
    body: str
    control_url: str
    events_url: str
    subscribe_url: str | None = None  # the node's input, {id}
    publish_url: str | None = None  # the node's output, {id}-out
    data_url: str | None = None


@dataclass
class _Stream:
    channels: list[str]
    urls: dict[str, str]
    tasks: list[asyncio.Task] = field(default_factory=list)
    events: list[tuple[float, dict]] = field(default_factory=list)
    last_event: float = 0.0
    watchdog_tripped: bool = False
    control_seq: int = 0


class StreamOrchestrator:
    """TEST DOUBLE of go-livepeer's BYOC orchestrator side of a stream, after go-livepeer 176aa415.

    Models, each call made as the Go code makes it (method, route, headers, body, content type):

    - ``byoc/stream_orchestrator.go`` ``StartStream``: the channels (``{id}-control``, ``{id}-events`` always,
      ``{id}`` / ``{id}-out`` / ``{id}-data`` as ingress / egress / data output are on), the ``/stream/start``
      body, and on a status > 399 the channels closed again;
    - ``UpdateStream`` (``/stream/params``), ``StopStream`` (``/stream/stop`` then ``RemoveStream``, which closes
      every channel), and ``monitorOrchStream``'s removal for low balance (``vanish``: channels closed, no call);
    - the gateway's loops in ``byoc/trickle.go``: ``startControlPublish`` (``{"keep":"alive"}`` every 10 s) and
      ``startEventsSubscribe`` (every event recorded; its watchdog's 30 s gap only flagged, not acted on).

    Not modelled: payments and balances (setupOrchJob, chargeForCompute, the 23 s debit), the gateway's ingest
    (RTMP/WHIP to segments: the harness's ``publish`` stands in) and egress (``Reader``), the data channel's
    subscriber, capability registration and the removal of a capability on 401, orchestrator swaps (and the
    re-sending of the last params on control that comes with one), ``-liveAITrickleHostForRunner`` host
    rewriting, the gateway's retries, and its reaction to a tripped watchdog or a vanished channel. In go-livepeer
    that reaction is a ``/stream/stop`` with the error's text as body (``runStream`` after ``kickOrch``; the
    control keep-alive meets 404 within 10 s): call ``stop`` after ``vanish`` to model it.
    """

    def __init__(
        self,
        trickle: TrickleServer,
        capability_url: str,
        token: str | None = None,
        keepalive_s: float = 10.0,
        event_gap_s: float = 30.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.trickle = trickle
        self.capability_url = capability_url.rstrip("/")
        self.token = token
        self.keepalive_s, self.event_gap_s, self.timeout_s = keepalive_s, event_gap_s, timeout_s
        self._streams: dict[str, _Stream] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(
        self, stream_id: str, params: dict | None, ingress: bool = True, egress: bool = True, data: bool = False
    ) -> StartResult:
        """StartStream: create the channels, POST /stream/start; on success start the gateway's loops."""
        wanted = {"control_url": (f"{stream_id}-control", JSON), "events_url": (f"{stream_id}-events", JSON)}
        if ingress:
            wanted["subscribe_url"] = (stream_id, MP2T)  # the node subscribes to the gateway's input
        if egress:
            wanted["publish_url"] = (f"{stream_id}-out", MP2T)
        if data:
            wanted["data_url"] = (f"{stream_id}-data", "application/jsonl")
        urls = {key: self.trickle.create_channel(name, mime) for key, (name, mime) in wanted.items()}
        stream = _Stream([name for name, _ in wanted.values()], urls)
        # reqBodyForRunner, then the gateway's body merged in: setupStream stores exactly {"params": <map or null>}
        body = {"gateway_request_id": stream_id, **urls, "params": params}
        try:
            status, text = await self._worker("/stream/start", stream_id, _go_json(body), JSON)
        except BaseException:
            self._close_channels(stream)  # Go: "Error sending request to worker", failedToStartStream
            raise
        if status > 399:
            self._close_channels(stream)  # failedToStartStream: the deferred cleanup closes the channels
        else:
            self._streams[stream_id] = stream
            stream.tasks = [asyncio.ensure_future(self._keepalive(stream)), asyncio.ensure_future(self._events(stream))]
        return StartResult(status, text, **urls)

    async def update(self, stream_id: str, params: dict) -> tuple[int, str]:
        """UpdateStream: the gateway's body (the client's flat JSON) as is, with Content-Type application/json."""
        return await self._worker("/stream/params", stream_id, json.dumps(params).encode(), JSON)

    async def control(self, stream_id: str, message: dict) -> None:
        """One message on the control channel, as the gateway's control publisher writes one."""
        await self._write_control(self._streams[stream_id], json.dumps(message).encode())

    async def stop(self, stream_id: str, body: bytes = b"") -> tuple[int, str]:
        """StopStream: POST /stream/stop with the gateway's body as is (empty or plain error text, no
        Content-Type), then RemoveStream, which closes every channel."""
        try:
            result = await self._worker("/stream/stop", stream_id, body, None)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            result = (200, "")  # Go logs the error and answers the gateway 200 with no body, then removes the stream
        self._end(stream_id)
        return result

    async def vanish(self, stream_id: str) -> None:
        """monitorOrchStream on low balance: RemoveStream without calling /stream/stop; the node sees 404s."""
        self._end(stream_id)

    def events(self, stream_id: str) -> list[tuple[float, dict]]:
        """(time.monotonic(), event) of every event read from the node, the wrapper's "event" unwrapped."""
        return list(self._streams[stream_id].events)

    def watchdog_tripped(self, stream_id: str) -> bool:
        """Whether the gateway's watchdog would have killed the stream: no event for more than event_gap_s."""
        return self._streams[stream_id].watchdog_tripped

    async def close(self) -> None:
        """Stop every loop and the HTTP client; channels stay as they are."""
        for stream in self._streams.values():
            await _cancel(stream.tasks)
        if self._http is not None:
            await self._http.close()

    def _end(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)  # none after a failed start: Go's RemoveStream is then a no-op
        if stream is not None:
            for task in stream.tasks:
                task.cancel()  # the gateway's context is cancelled with the stream
            self._close_channels(stream)

    def _close_channels(self, stream: _Stream) -> None:
        for name in stream.channels:  # StreamInfo.cleanup / the deferred close in StartStream
            self.trickle.close_channel(name)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            # As Go's http.Client: its User-Agent and Accept-Encoding, no Accept, no Content-Type unless set.
            self._http = aiohttp.ClientSession(
                headers={"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"},
                skip_auto_headers=("Accept", "Content-Type"),
            )
        return self._http

    async def _worker(self, route: str, stream_id: str, body: bytes, content_type: str | None) -> tuple[int, str]:
        """createWorkerReq + sendReqWithTimeout: POST with X-Stream-Id and the capability's Bearer token."""
        headers = {"X-Stream-Id": stream_id}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if content_type:
            headers["Content-Type"] = content_type
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self._session().post(
            self.capability_url + route, data=body, headers=headers, timeout=timeout
        ) as resp:
            return resp.status, await resp.text()

    async def _write_control(self, stream: _Stream, message: bytes) -> bool:
        """One segment on control, as TricklePublisher.Write (seq 0, 1, ...); False once the channel is gone."""
        seq, stream.control_seq = stream.control_seq, stream.control_seq + 1
        # The Go publisher sends every segment as video/MP2T, control messages included (trickle_publisher.go).
        url = f"{stream.urls['control_url']}/{seq}"
        async with self._session().post(url, data=message, headers={"Content-Type": MP2T}) as resp:
            await resp.read()
            return resp.status != 404

    async def _keepalive(self, stream: _Stream) -> None:
        """startControlPublish: {"keep":"alive"} every 10 s; stops when the channel no longer exists."""
        while True:
            await asyncio.sleep(self.keepalive_s)
            if not await self._write_control(stream, b'{"keep":"alive"}'):
                return

    async def _events(self, stream: _Stream) -> None:
        """startEventsSubscribe: read every event from the next one written (seq -1), with the gap watchdog."""
        stream.last_event = time.monotonic()  # lastEvent starts at the subscription's start
        watchdog = asyncio.ensure_future(self._watchdog(stream))
        try:
            async with contextlib.aclosing(subscribe(self._session(), stream.urls["events_url"], -1)) as segments:
                async for resp in segments:
                    try:
                        parsed = json.loads(await resp.read())
                    except ValueError:
                        continue  # "Failed to parse JSON from events subscription"
                    # Go unmarshals {"queue_event_type", "event": map} first, else the body as a bare event map.
                    event = parsed.get("event") if isinstance(parsed, dict) else None
                    event = parsed if event is None else event
                    if isinstance(event, dict):
                        stream.last_event = time.monotonic()
                        stream.events.append((stream.last_event, event))
        finally:
            await _cancel([watchdog])  # eventsDone ends the watchdog

    async def _watchdog(self, stream: _Stream) -> None:
        """The heartbeat watchdog: checks every eventCheckInterval (10 s) for a gap over maxEventGap (30 s)."""
        while True:
            await asyncio.sleep(self.event_gap_s / 3)
            if time.monotonic() - stream.last_event > self.event_gap_s:
                stream.watchdog_tripped = True  # Go: stopProcessing("timeout waiting for events")
                return


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _go_json(value) -> bytes:
    """json.Marshal of a map[string]interface{}: sorted keys, compact, HTML-escaped, numbers as float64."""

    def go(v):
        if isinstance(v, dict):
            return {k: go(x) for k, x in v.items()}
        if isinstance(v, list):
            return [go(x) for x in v]
        return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 1e21 else v  # 1.0 -> 1, as Go

    text = json.dumps(go(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text.encode()
