"""A TEST DOUBLE of go-livepeer's trickle server, for the tests and ``python -m benchmarks stream``.

It mirrors ``trickle/trickle_server.go`` (with ``segment_buffer.go`` and ``local_publisher.go``) at go-livepeer
commit 176aa415: the same routes, status codes and ``Lp-Trickle-*`` headers, a 5-segment ring per channel
(``maxSegmentsPerStream``), -1/-2 seq aliases, GET pre-creation at the write head, and POST bodies relayed to
subscribers chunk by chunk while they are still arriving. It is an aiohttp app on its own event loop in a daemon
thread; the synchronous ``TrickleServer`` API below is safe to call from any thread.

Deliberately not modelled (the double differs from the Go server here):

- the 10 s first-byte timeout of a POST and its ``100 Continue`` keepalives: a preconnected POST simply waits
  until its first byte arrives or its segment is closed;
- the idle sweeper (``IdleTimeout``/``SweepInterval``): channels live until deleted or the server stops;
- the ``_changes`` changefeed channel, and the ``BeforeCreate``/``BeforeDelete`` hooks;
- the segment buffer's page layout (32 KiB..1 MiB pages) and read sizes: chunk boundaries seen by subscribers
  follow aiohttp's reads, the bytes and their order do not change;
- a POST to a segment that is already closed: Go races the body read against ``closeCh``; the double always takes
  the close (empty reply, ``Connection: close``);
- a seq below -1 (POST), -2 (GET) or 0 (DELETE of a segment): Go indexes the ring with it and panics (net/http
  drops the connection); the double answers 400 ``Invalid idx``;
- HTTP-stack details: Go's path cleaning/redirects, ``X-Content-Type-Options`` on errors, and aiohttp's own
  ``Server``/``Date`` headers.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading

from aiohttp import web

MAX_SEGMENTS = 5  # maxSegmentsPerStream
_INT = re.compile(r"[+-]?[0-9]+")  # what strconv.Atoi accepts


class _Segment:
    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.data = bytearray()
        self.closed = False
        self.done = asyncio.Event()  # closeCh: wakes a publisher still waiting for its first byte
        self._more = asyncio.Event()  # replaced on every change, so one set() is a broadcast

    def _wake(self) -> None:
        self._more.set()
        self._more = asyncio.Event()

    def write(self, chunk: bytes) -> None:
        self.data += chunk  # Go keeps appending after close too; caught-up readers have already seen EOF
        self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.done.set()
            self._wake()

    async def read(self, pos: int) -> tuple[bytes, bool]:
        """Everything from pos on, waiting for at least one byte; (data, eof) as Segment.readData."""
        while len(self.data) <= pos and not self.closed:
            await self._more.wait()
        return bytes(self.data[pos:]), self.closed


class _Stream:
    def __init__(self, mime_type: str) -> None:
        self.mime_type = mime_type
        self.segments: list[_Segment | None] = [None] * MAX_SEGMENTS
        self.next_write = 0
        self.closed = False

    def close(self) -> None:
        for seg in self.segments:
            if seg is not None:
                seg.close()
        self.segments = [None] * MAX_SEGMENTS
        self.closed = True

    def get_for_write(self, idx: int) -> _Segment:
        idx = self.next_write if idx == -1 else idx
        old = self.segments[idx % MAX_SEGMENTS]
        if old is not None and old.idx == idx:
            return old  # a preconnect (GET or POST) got here first
        if old is not None:
            old.close()  # an older segment in this slot: overwrite it, its readers see EOF
        seg = self.segments[idx % MAX_SEGMENTS] = _Segment(idx)
        return seg

    def get_for_read(self, idx: int) -> tuple[_Segment | None, int]:
        if idx == -1:
            idx = self.next_write
        elif idx == -2:
            idx = max(self.next_write - 1, 0)
        seg = self.segments[idx % MAX_SEGMENTS]
        if seg is not None and seg.idx == idx:
            return seg, self.next_write
        # a read just ahead of the write head is pre-created and waits for the publisher
        if (idx == self.next_write or (self.next_write == 0 and idx == 1)) and not self.closed:
            seg = self.segments[idx % MAX_SEGMENTS] = _Segment(idx)
            return seg, self.next_write
        return None, self.next_write


def _error(message: str, status: int) -> web.Response:
    return web.Response(status=status, text=message + "\n")  # as http.Error


def _seq(request: web.Request, lowest: int) -> int | None:
    """The {idx} path part as strconv.Atoi (a Go int) reads it; None below `lowest` (where Go would panic)."""
    raw = request.match_info["idx"]
    return int(raw) if _INT.fullmatch(raw) and lowest <= int(raw) < 2**63 else None


class TrickleServer:
    def __init__(self, autocreate: bool = False, base_path: str = "/ai/trickle/") -> None:
        assert base_path.startswith("/") and base_path.endswith("/"), base_path
        self.autocreate = autocreate
        self.base_path = base_path
        self._streams: dict[str, _Stream] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trickle-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- synchronous API, called from other threads ---

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; no window for another process to take it
        self._on_loop(self._start, sock)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}{self.base_path.rstrip('/')}"
        return self

    def __exit__(self, *exc) -> None:
        self._on_loop(self._stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def create_channel(self, name: str, mime_type: str) -> str:
        """As NewLocalPublisher(server, name, mime_type).CreateChannel(): creates even without autocreate."""
        self._on_loop(self._get_or_create, name, mime_type, True)
        return f"{self.url}/{name}"

    def close_channel(self, name: str) -> None:
        """As closeStream: close every segment (waiting readers get EOF) and forget the channel."""
        self._on_loop(self._close_stream, name)

    def channels(self) -> list[str]:
        return self._on_loop(lambda: list(self._streams))

    def next_write(self, name: str) -> int:
        return self._on_loop(lambda: self._streams[name].next_write)

    def segments(self, name: str) -> list[int]:
        """The seqs the channel's ring holds, pre-created ones included (lets tests see that a GET is waiting)."""
        return self._on_loop(lambda: sorted(g.idx for g in self._streams[name].segments if g))

    def _on_loop(self, fn, *args):
        """fn(*args) run on the server's loop (awaited if it is a coroutine function); its result here."""

        async def call():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    async def _start(self, sock: socket.socket) -> None:
        app = web.Application()
        base = self.base_path
        app.router.add_post(base + "{name}", self._handle_create)
        app.router.add_get(base + "{name}/next", self._handle_next)  # before {idx}, as Go's more specific pattern
        app.router.add_get(base + "{name}/{idx}", self._handle_get)
        app.router.add_post(base + "{name}/{idx}", self._handle_post)
        app.router.add_delete(base + "{name}/{idx}", self._handle_close_seq)
        app.router.add_delete(base + "{name}", self._handle_delete)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _stop(self) -> None:
        for stream in self._streams.values():  # as Start()'s stop: clearAllStreams wakes every waiter
            stream.close()
        self._streams.clear()
        await self._runner.cleanup()
        # handlers of connections that were closing as cleanup returned: finish them so none outlives the loop
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    # --- the server, as trickle_server.go ---

    def _get_or_create(self, name: str, mime_type: str, force: bool) -> _Stream | None:
        if name not in self._streams and (force or self.autocreate):
            self._streams[name] = _Stream(mime_type)
        return self._streams.get(name)

    def _close_stream(self, name: str) -> bool:
        stream = self._streams.pop(name, None)
        if stream is not None:
            stream.close()
        return stream is not None

    async def _handle_create(self, request: web.Request) -> web.Response:
        if self._get_or_create(request.match_info["name"], request.headers.get("Expect-Content", ""), False) is None:
            return _error("Stream not found", 404)
        return web.Response()

    async def _handle_delete(self, request: web.Request) -> web.Response:
        if not self._close_stream(request.match_info["name"]):
            return _error("Invalid stream", 400)  # Go answers 400 here, not 404
        return web.Response()

    async def _handle_close_seq(self, request: web.Request) -> web.Response:
        stream = self._streams.get(request.match_info["name"])
        if stream is None:
            return _error("Stream not found", 404)
        idx = _seq(request, 0)
        if idx is None:
            return _error("Invalid idx", 400)
        seg = stream.segments[idx % MAX_SEGMENTS]
        if seg is None or seg.idx != idx:
            return _error("Nonexistent segment", 400)
        seg.close()
        return web.Response()

    async def _handle_next(self, request: web.Request) -> web.Response:
        stream = self._streams.get(request.match_info["name"])
        if stream is None:
            return _error("Stream not found", 404)
        headers = {"Lp-Trickle-Latest": str(stream.next_write)}
        if stream.closed:
            headers["Lp-Trickle-Closed"] = "terminated"
        return web.Response(text=str(stream.next_write), headers=headers)

    async def _handle_post(self, request: web.Request) -> web.Response:
        stream = self._get_or_create(request.match_info["name"], request.headers.get("Content-Type", ""), False)
        if stream is None:
            resp = _error("Stream not found", 404)
            resp.force_close()  # Connection: close wakes gotrickle preconnects
            return resp
        idx = _seq(request, -1)
        if idx is None:
            return _error("Invalid idx", 400)
        seg = stream.get_for_write(idx)
        if request.headers.get("Lp-Trickle-Reset"):
            # a restarted publisher: close older segments to unblock their readers, keep preconnected newer ones
            for old in stream.segments:
                if old is not None and old.idx < seg.idx:
                    old.close()
        total = 0
        try:
            chunk = await self._first_chunk(request, seg)
            while chunk:
                if total == 0:
                    stream.next_write = seg.idx + 1
                seg.write(chunk)  # relayed now, while the rest of the body is still on its way
                total += len(chunk)
                chunk = await request.content.readany()
        except Exception:
            return _error("Server error", 500)  # as Go: the segment is left open
        headers = {"Lp-Trickle-Seq": str(seg.idx)}
        if total == 0:
            # an empty body, usually a preconnect whose segment or channel was closed
            stream.next_write = seg.idx + 1  # "increment seq anyway: avoids clients erroring out on next seq"
            if stream.closed:
                headers["Lp-Trickle-Closed"] = "terminated"
        seg.close()
        resp = web.Response(headers=headers)
        if total == 0:
            resp.force_close()  # the body is not drained (skipClose); Connection: close
        return resp

    @staticmethod
    async def _first_chunk(request: web.Request, seg: _Segment) -> bytes:
        """The timeoutReader's first read: the first bytes of the body, or b"" once the segment is closed."""
        if seg.closed:
            return b""
        read = asyncio.ensure_future(request.content.readany())
        closed = asyncio.ensure_future(seg.done.wait())
        await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if read.done():
            return read.result()
        read.cancel()
        return b""

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        stream = self._streams.get(request.match_info["name"])
        if stream is None:
            return _error("Stream not found", 404)
        idx = _seq(request, -2)
        if idx is None:
            return _error("Invalid idx", 400)
        seg, latest = stream.get_for_read(idx)
        if seg is None:
            headers = {"Lp-Trickle-Latest": str(latest), "Lp-Trickle-Seq": str(idx)}  # idx as asked, even -1/-2
            if stream.closed:
                headers["Lp-Trickle-Closed"] = "terminated"
            return web.Response(status=200 if stream.closed else 470, text="Entry not found", headers=headers)
        resp: web.StreamResponse | None = None
        pos = 0
        while True:
            data, eof = await seg.read(pos)
            if data:
                if resp is None:  # headers go out with the first bytes, as Go's first w.Write
                    resp = web.StreamResponse()
                    if seg.idx != latest:
                        resp.headers["Lp-Trickle-Latest"] = str(latest)
                    resp.headers["Lp-Trickle-Seq"] = str(seg.idx)
                    resp.headers["Content-Type"] = stream.mime_type
                    await resp.prepare(request)
                try:
                    await resp.write(data)
                except ConnectionError:
                    return resp  # the subscriber went away
                pos += len(data)
            if eof:
                break
        if resp is not None:
            return resp
        # nothing was ever written: the segment was closed (dropped, overwritten, or the channel closed)
        headers = {"Lp-Trickle-Seq": str(seg.idx), "Lp-Trickle-Latest": str(stream.next_write)}
        if stream.closed:
            headers["Lp-Trickle-Closed"] = "terminated"
        return web.Response(headers=headers)
