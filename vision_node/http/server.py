"""uvicorn, with what a node in production needs and uvicorn lacks.

``GuardedHttpToolsProtocol``: a receive deadline and a header cap. uvicorn bounds only the idle
time between requests (keep-alive). A client that trickles its request line, headers or body a
byte at a time would hold its connection, and the memory of what it sent, for as long as it
likes (slowloris); httptools also buffers headers of any size. Here every request must arrive
whole within ``receive_timeout_s`` of its first byte (or of the connection, for a client that
sends nothing), else it gets 408 and the connection is closed; a request line + headers over
``max_header_bytes`` gets 431.

``DrainingServer``: SIGTERM/SIGINT drain the node, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("vision_node")


def _response(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Give it to uvicorn as ``functools.partial(GuardedHttpToolsProtocol, node=node)``."""

    def __init__(self, *args, node, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = node
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's line and headers are arriving
        self._head_bytes = 0  # bytes read while the head was incomplete
        self._parsed_bytes = 0  # the head's bytes as parsed so far
        self._refused = False  # answered 408/431 and closing

    # -- the deadline runs from a request's first byte until its last

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.node.config.receive_timeout_s, self._receive_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest is not read
        self._arm()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if self._in_head:  # the head is still incomplete, so all of this chunk was head
            self._head_bytes += len(data)  # (httptools holds a header that is still arriving)
            self._check_head()

    # -- the head is counted exactly as it is parsed, and across reads while it is incomplete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._parsed_bytes = True, 0, 0

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        if not self._check_head():
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        if not self._check_head():
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def _check_head(self) -> bool:
        """Refuse (431) once the head passes the cap; True when this connection is refused."""
        limit = self.node.config.max_header_bytes
        if not self._refused and max(self._head_bytes, self._parsed_bytes) > limit:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"request line and headers passed {limit} bytes",
            )
        return self._refused

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._disarm()  # all of it arrived: the request deadline (--request-timeout-s) takes over

    def _receive_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        receiving_body = self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body
        if not (self._in_head or receiving_body):
            self.transport.close()  # connected and sent nothing: nothing to answer
            return
        self._refuse(
            408,
            "Request Timeout",
            "request_timeout",
            f"the request did not arrive within {self.node.config.receive_timeout_s:g} s",
        )

    def _refuse(self, status: int, reason: str, code: str, detail: str) -> None:
        """Answer ``status`` and close. A handler waiting for the body sees a disconnect, and its reply is dropped."""
        self._refused = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            started = self.cycle.response_started
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            if started:  # a response is under way: no second status line, just close
                self.transport.close()
                return
        self.node.metrics.refused_connections.labels(str(status)).inc()
        log.info("%s:%s: %d %s", *(self.client or ("?", "?")), status, detail)
        self.transport.write(_response(status, reason, code, detail))
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, with SIGTERM/SIGINT meaning: drain, then exit 0.

    The first signal turns ``/ready`` 503 and unregisters from the orchestrator at once, keeps
    serving for ``--drain-delay-s``, then closes the listener; requests in flight get
    ``--shutdown-grace-s`` to finish. A second signal stops waiting. (uvicorn's own handler
    re-raises the signal after a clean shutdown, so the process would end with status -15.)
    """

    def __init__(self, config: uvicorn.Config, node):
        super().__init__(config)
        self.node = node
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:  # a signal handler, on the event loop's thread
        if self.should_exit or self.node.draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self.node.draining  # the second signal: stop waiting for requests in flight
            return
        self.node.draining = True  # /ready is 503 from this instant
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(sig))  # held: the loop keeps only weak references

    async def _drain(self, sig: int) -> None:
        node = self.node
        in_flight = sum(s.pending for s in node.sessions.values())
        leaving = ", unregistering" if node.registrar or node.live_runners else ""
        log.info("%s: draining (%d requests in flight): not ready%s", signal.Signals(sig).name, in_flight, leaving)
        await node.drain()
        if node.config.drain_delay_s:
            await asyncio.sleep(node.config.drain_delay_s)
        log.info("closing the listener; requests in flight have %g s to finish", node.config.shutdown_grace_s)
        self.should_exit = True
