"""The node's live streams, by id: admission, start, params, stop, and the calls' Livepeer shapes.

Two ways a stream starts, on the same media path:

- **BYOC** (go-livepeer ``byoc/stream_orchestrator.go``): the orchestrator made the trickle channels
  and ``POST {capability url}/stream/start`` names them: ``subscribe_url``, ``publish_url``,
  ``control_url``, ``events_url`` (``data_url`` is accepted and not written), ``params``, with the
  stream's id in ``X-Stream-Id`` (else ``gateway_request_id``).
- **A persistent live-runner session** (go-livepeer ``doc/live-runner.md``): the client's start comes
  through the orchestrator's proxy with ``Livepeer-Session-Id``, ``-Token`` and ``-Control`` and names
  no channel; the node asks the session for its channels (``POST {Session-Control}/channels``) and
  answers their public URLs, so the client publishes to ``in`` and reads ``out``. The session is the
  stream: its id is the stream's, and when the client stops the session its channels close, which
  ends the stream.

Each capability takes up to ``--stream-capacity`` streams (503 past it; 0 turns streams off). A stream
is refused at its start (400) when a channel it names cannot be reached, so the orchestrator hears
about it at once rather than through a stream that never produces. All streams share one HTTP client
and the capability's session (engines, batching).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Histogram

from ..config import Config
from ..errors import Conflict, InputError, NotFound, NotReady, Overloaded
from ..livepeer import trickle
from ..metrics import Metrics
from ..serving.session import CapabilitySession
from . import params
from .stream import Channels, Settings, Stream

log = logging.getLogger("vision_node.streams")

CHECK_TIMEOUT_S = 3.0  # a channel that does not answer its /next within this is unreachable
KINDS = ("in", "out", "dropped", "skipped", "failed")
# What a live-runner stream asks its session for: name -> MIME type (go-livepeer's channel names are free).
RUNNER_CHANNELS = {"in": "video/MP2T", "out": "video/MP2T", "control": "application/json", "events": "application/json"}


class Streams:
    def __init__(self, config: Config, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.streams: dict[str, Stream] = {}
        self.settings = Settings(
            encoder=config.stream_encoder,
            quality=config.stream_quality,
            status_interval_s=config.stream_status_interval_s,
            idle_timeout_s=config.stream_idle_timeout_s,
            frame_timeout_s=config.request_timeout_s,
        )
        self._http: aiohttp.ClientSession | None = None
        self.closing = False

    @property
    def capacity(self) -> int:
        return self.config.stream_capacity

    def active(self, capability: str) -> int:
        return sum(1 for s in self.streams.values() if s.capability.name == capability)

    def find(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id!r} on this node")
        return stream

    def of(self, capability: str) -> list[Stream]:
        return [s for s in self.streams.values() if s.capability.name == capability]

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = trickle.client()
        return self._http

    # ---------------------------------------------------------------- starting

    async def start_byoc(self, session: CapabilitySession, body: dict, stream_id: str) -> Stream:
        """A stream whose channels the orchestrator made and named in ``body``."""
        missing = [key for key in ("subscribe_url", "publish_url") if not body.get(key)]
        if missing:
            raise InputError(
                f"{' and '.join(missing)} missing: a {session.name} stream needs video in and out (start it with "
                "video ingress and egress enabled)"
            )
        urls = {role: self._url(body, f"{role}_url") for role in Channels.ROLES}
        subscribe, publish = urls.pop("subscribe"), urls.pop("publish")
        assert subscribe is not None and publish is not None  # not missing (above)
        channels = Channels(subscribe, publish, **urls)
        options = self._admit(session, stream_id, body.get("params"))
        await self._check(channels)
        return self._run(session, stream_id, options, channels, "byoc")

    async def start_runner_session(
        self, session: CapabilitySession, body: dict, stream_id: str, control: str, token: str
    ) -> tuple[Stream, dict[str, str]]:
        """A stream in a persistent live-runner session: (stream, the channels' public URLs for the client)."""
        options = self._admit(session, stream_id, body.get("params"))
        control_url = self._url({"control": control}, "control", "Livepeer-Session-Control")
        assert control_url is not None  # the header is not empty (http.streams.start)
        made = await self._session_channels(control_url, token)
        inner = {name: entry.get("internal_url") or entry["url"] for name, entry in made.items()}
        channels = Channels(inner["in"], inner["out"], control=inner["control"], events=inner["events"])
        stream = self._run(session, stream_id, options, channels, "live-runner")
        return stream, {name: entry["url"] for name, entry in made.items()}

    def _admit(self, session: CapabilitySession, stream_id: str, given: Any) -> params.StreamOptions:
        if self.closing:
            raise NotReady("the node is shutting down: no new streams")
        if not self.capacity:
            raise NotFound("this node serves no streams (--stream-capacity 0)")
        if not stream_id:
            raise InputError("no stream id: send X-Stream-Id or gateway_request_id")
        if stream_id in self.streams:
            raise Conflict(f"stream {stream_id!r} is already running here; stop it first")
        if self.active(session.name) >= self.capacity:
            raise Overloaded(f"{session.name}: {self.capacity} streams already running (--stream-capacity)")
        return params.parse(session.capability, session.served.bounds, given)

    def _run(
        self, session: CapabilitySession, stream_id: str, options: params.StreamOptions, channels: Channels, origin: str
    ) -> Stream:
        if stream_id in self.streams or self.active(session.name) >= self.capacity:  # taken while we checked
            raise Overloaded(f"{session.name}: no room for stream {stream_id!r} any more")
        name = session.name
        counters: dict[str, Counter | Histogram] = {
            kind: self.metrics.stream_frames.labels(name, kind) for kind in KINDS
        }
        counters["latency"] = self.metrics.stream_latency.labels(name)
        stream = Stream(stream_id, session, options, channels, self.http, self.settings, counters, self._ended, origin)
        self.streams[stream_id] = stream
        stream.start()
        extra = "+".join(role for role in ("control", "events") if getattr(channels, role)) or "no control or events"
        log.info(
            "stream %s (%s, %s) started: video in and out, %s; params %s",
            stream_id,
            name,
            origin,
            extra,
            options.public(),
        )
        return stream

    def _ended(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        _give_back_memory()

    async def _check(self, channels: Channels) -> None:
        """Every channel named answers (its ``/next``); else 400 naming which and why (not its URL)."""
        named = {role: url for role, url in vars(channels).items() if url and role != "data"}
        problems = await asyncio.gather(*(self._unreachable(url) for url in named.values()))
        bad = [f"{role} channel: {why}" for role, why in zip(named, problems) if why]
        if bad:
            raise InputError("cannot start the stream: " + "; ".join(bad))

    async def _unreachable(self, url: str) -> str | None:
        try:
            async with self.http.get(f"{url}/next", timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as response:
                if response.status == 404:
                    return "no such channel (404)"
                if response.status >= 400:
                    return f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            return f"unreachable ({type(err).__name__}: {err or 'timed out'})"
        return None

    async def _session_channels(self, control: str, token: str) -> dict[str, dict]:
        """``POST {Session-Control}/channels`` (go-livepeer ``CreateLiveRunnerTrickleChannel``): name -> channel."""
        body = {"channels": [{"name": name, "mime_type": mime} for name, mime in RUNNER_CHANNELS.items()]}
        url = f"{control.rstrip('/')}/channels"
        try:
            timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S * 2)
            headers = {"Livepeer-Session-Token": token}  # a secret: never logged
            async with self.http.post(url, json=body, headers=headers, timeout=timeout) as response:
                if response.status != 200:
                    text = (await response.text(errors="replace"))[:200]
                    raise InputError(f"the session's channels were refused: HTTP {response.status} {text}")
                answer = await response.json(content_type=None)
            made = {entry["name"]: entry for entry in answer["channels"]}
            if missing := set(RUNNER_CHANNELS) - set(made):
                raise InputError(f"the session did not make the channels {sorted(missing)}")
            return made
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"cannot make the session's channels: {type(err).__name__}: {err}") from None

    def _url(self, body: dict, key: str, name: str | None = None) -> str | None:
        """The URL ``body[key]`` if there is one, http(s) and on a host streams may use; else 400."""
        value, name = body.get(key), name or key
        if value is None or value == "":
            return None
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{name} must be an http(s) URL")
        allowed = self.config.trickle_hosts
        if allowed and parts.hostname.lower() not in allowed and parts.netloc.lower() not in allowed:
            raise InputError(f"{name}: host {parts.hostname} is not one this node's streams may use (--stream-hosts)")
        return value.rstrip("/")

    # ---------------------------------------------------------------- the running ones

    def update(self, stream_id: str, given) -> Stream:
        stream = self.find(stream_id)
        stream.update(given)
        return stream

    async def stop(self, stream_id: str, reason: str) -> bool:
        """Stop a stream and wait until it has; False when none runs under that id (a stop is idempotent)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return False
        await stream.end(reason)
        return True

    async def close(self) -> None:
        """The node stops: every stream ends, then the HTTP client goes."""
        self.closing = True
        if self.streams:
            log.info("stopping %d stream(s)", len(self.streams))
            await asyncio.gather(*(s.end("the node is stopping") for s in list(self.streams.values())))
        if self._http is not None:
            await self._http.close()
            self._http = None

    def describe(self) -> list[dict]:
        return [s.status() for s in self.streams.values()]


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


def _give_back_memory() -> None:
    """Return the freed heap of an ended stream to the system (glibc keeps it in its per-thread arenas otherwise:
    each stream's decoding and encoding threads allocate there, and RSS crept up by ~5 MiB a stream, measured
    over 100 start/stop cycles; with this it stays within a few MiB)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
