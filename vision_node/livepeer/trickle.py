"""A small trickle client: subscribe to and publish on Livepeer's trickle channels (aiohttp).

Trickle (go-livepeer ``trickle/README.md``, ``trickle_server.go``): a channel is a sequence of
numbered segments; ``POST {channel}/{seq}`` writes one with a chunked body that the server relays to
``GET {channel}/{seq}`` readers while it is still being written. This module follows go-livepeer's
own clients (``trickle_subscriber.go``, ``trickle_publisher.go``):

- a subscriber starts at ``-2`` (the segment being written, from its start: the live edge at a
  keyframe) or ``-1`` (the next one), then reads ``Lp-Trickle-Seq`` + 1; a ``470`` (fallen out of the
  server's 5-segment window) jumps to ``Lp-Trickle-Latest``; ``404`` or ``Lp-Trickle-Closed`` ends it;
  the next segment's GET is made while the current one is read, so a boundary costs no set-up;
- a publisher writes ``{channel}/{n}`` for n counting up from where the channel is (``/next``), and
  likewise opens the next segment's POST before it is needed.

Why not pytrickle's clients: importing pytrickle imports torch (seconds of start-up and a GB of
dependencies the server must not need), and its classes keep one stream's state each in ways the
node, which runs many streams over one HTTP client, does not need. The protocol is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp

log = logging.getLogger("vision_node.livepeer.trickle")

CURRENT, NEXT = -2, -1  # a subscriber's start: the segment being written, or the one after it
SEQ, LATEST, CLOSED = "Lp-Trickle-Seq", "Lp-Trickle-Latest", "Lp-Trickle-Closed"
CHUNK = 1 << 16


class ChannelError(Exception):
    """A channel cannot be read or written: unreachable, refused, or an answer the protocol does not have."""


class ChannelGone(ChannelError):
    """The channel does not exist (404) or was closed: the orchestrator ended the stream."""


def client(connect_timeout_s: float = 5.0) -> aiohttp.ClientSession:
    """One HTTP client for every channel of every stream. No total timeout: a GET waits for the next segment
    as long as it takes to be written, and a POST lasts as long as its segment."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=False),  # orchestrators' trickle certificates are self-signed
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s),
        auto_decompress=False,
    )


class Segment:
    """One segment being read: its bytes as they arrive."""

    def __init__(self, seq: int, latest: int | None, response: aiohttp.ClientResponse):
        self.seq = seq
        self.latest = latest  # the channel's next write when this segment is not the newest (else None)
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise ChannelError(f"segment {self.seq}: the connection broke while reading ({err})") from None
        finally:
            self._response.release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        self._response.close()


class Subscriber:
    """Reads a channel segment after segment (``async for segment in subscriber``)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, start: int = CURRENT, max_jumps: int = 10):
        self.http, self.url, self.seq = http, url.rstrip("/"), start
        self.max_jumps = max_jumps  # 470s in a row before giving up: a server that never has the latest
        self._pending: asyncio.Task | None = None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Segment:
        segment = await self.next()
        if segment is None:
            raise StopAsyncIteration
        return segment

    async def next(self) -> Segment | None:
        """The next segment, or None when the channel has ended (404, or closed)."""
        pending, self._pending = self._pending, None
        response = await (pending if pending is not None else self._get(self.seq))
        jumps = 0
        while response is not None and response.status == 470:  # fell out of the window: jump to the newest
            latest = _header_int(response, LATEST)
            response.release()
            jumps += 1
            if jumps > self.max_jumps:
                raise ChannelError(f"{self.url}: still no segment after {jumps} jumps to the latest")
            self.seq = latest if latest is not None else NEXT
            log.info("%s: behind the window, jumping to segment %s", self.url, self.seq)
            response = await self._get(self.seq)
        if response is None or response.headers.get(CLOSED) or response.status == 404:
            if response is not None:
                response.release()
            return None
        if response.status != 200:
            text = (await response.text(errors="replace"))[:200]
            response.release()
            raise ChannelError(f"{self.url}/{self.seq}: HTTP {response.status} {text}")
        seq = _header_int(response, SEQ)
        if seq is not None and seq >= 0:
            self.seq = seq
        segment = Segment(self.seq, _header_int(response, LATEST), response)
        self.seq += 1
        self._pending = asyncio.ensure_future(self._get(self.seq))  # preconnect, as the Go client does
        return segment

    def skip_to(self, seq: int) -> None:
        """Read ``seq`` next (e.g. ``CURRENT`` to catch up with the live edge)."""
        self._cancel_pending()
        self.seq = seq

    async def _get(self, seq: int) -> aiohttp.ClientResponse | None:
        try:
            return await self.http.get(f"{self.url}/{seq}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise ChannelError(f"{self.url}/{seq}: {type(err).__name__}: {err}") from None

    def _cancel_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            pending.add_done_callback(_release)

    async def close(self) -> None:
        self._cancel_pending()


class SegmentWriter:
    """One segment being written: ``write`` hands bytes to its POST at once (no await), ``finish`` ends it."""

    def __init__(self, publisher: Publisher, seq: int):
        self.seq = seq
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._post = asyncio.ensure_future(publisher._post(seq, self._body()))
        self.written = 0

    async def _body(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self._queue.put_nowait(data)

    async def finish(self) -> None:
        """End the body and wait for the server's answer; ChannelGone or ChannelError if it refused."""
        self._queue.put_nowait(None)
        await self._post

    def abandon(self) -> None:
        """End it without waiting (a preconnected segment never used, a stream that stops)."""
        self._queue.put_nowait(None)
        self._post.add_done_callback(_retrieve)


class Publisher:
    """Writes a channel's segments in order: ``segment()`` gives the next one (already connected)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, mime_type: str):
        self.http, self.url, self.mime_type = http, url.rstrip("/"), mime_type
        self.seq: int | None = None
        self._next: SegmentWriter | None = None

    async def segment(self) -> SegmentWriter:
        if self.seq is None:
            self.seq = await self._next_seq()
        writer = self._next or SegmentWriter(self, self.seq)
        self.seq += 1
        self._next = SegmentWriter(self, self.seq)  # preconnect the one after
        return writer

    async def send(self, data: bytes) -> None:
        """One whole segment (a JSON message on an events channel)."""
        writer = await self.segment()
        writer.write(data)
        await writer.finish()

    async def _next_seq(self) -> int:
        """Where the channel is: a fresh one at 0, one written before (a restarted stream) past its segments."""
        try:
            async with self.http.get(f"{self.url}/next") as response:
                if response.status == 404:
                    raise ChannelGone(f"{self.url}: no such channel (404)")
                if response.status != 200:
                    return 0
                return int((await response.text()).strip() or 0)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as err:
            raise ChannelError(f"{self.url}: {type(err).__name__}: {err}") from None

    async def _post(self, seq: int, body: AsyncIterator[bytes]) -> None:
        url = f"{self.url}/{seq}"
        try:
            # expect100: the request's head goes now, so the segment's POST is ready before its first byte (aiohttp
            # otherwise holds a streamed body's head back until that byte)
            headers = {"Content-Type": self.mime_type}
            async with self.http.post(url, data=body, headers=headers, expect100=True) as response:
                if response.status == 404 or response.headers.get(CLOSED):
                    raise ChannelGone(f"{url}: the channel is gone")
                if response.status != 200:
                    text = (await response.text(errors="replace"))[:200]
                    raise ChannelError(f"{url}: HTTP {response.status} {text}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise ChannelError(f"{url}: {type(err).__name__}: {err}") from None

    async def close(self) -> None:
        """Let go of the preconnected segment (the server counts it as an empty one)."""
        pending, self._next = self._next, None
        if pending is not None:
            pending.abandon()


def _header_int(response: aiohttp.ClientResponse, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _release(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is None and task.result() is not None:
        task.result().release()


def _retrieve(task: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        task.exception()  # a refused segment nobody waits for: retrieved, not logged as never retrieved
