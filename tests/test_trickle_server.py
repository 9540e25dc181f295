"""Conformance of benchmarks/trickle_server.py (the go-livepeer trickle server double) against pytrickle's own
publisher and subscriber, and against raw aiohttp requests where pytrickle does not exercise a behaviour.

Expected headers and statuses are those go-livepeer's trickle/trickle_server.go (commit 176aa415) sets.

Note: aiohttp's client (which pytrickle uses) holds a streamed POST's headers back until the first body chunk, so a
"preconnected" POST only reaches the server with its data. Tests that need a POST waiting at the server before its
first byte (as Go's client preconnects) send it with ``expect100=True``, which makes aiohttp send the headers first.
"""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pytest
from pytrickle.publisher import TricklePublisher
from pytrickle.subscriber import TrickleSubscriber

from benchmarks.trickle_server import MAX_SEGMENTS, TrickleServer

TIMEOUT = 5.0  # per test; every wait is bounded, so a broken server fails instead of hanging


def run(coro):
    try:
        return asyncio.run(asyncio.wait_for(coro, TIMEOUT))
    except BaseException as exc:
        # finalize a failed test's leftovers now: the GC running them inside pytest's ast.parse of the failure report
        # crashes CPython 3.11.7 ("SystemError: AST constructor recursion depth mismatch", an INTERNALERROR)
        gc.collect()
        if isinstance(exc, TimeoutError):
            raise AssertionError(f"timed out after {TIMEOUT} s: an awaited reply or segment never came") from None
        raise


@pytest.fixture
def server():
    with TrickleServer() as s:
        yield s


async def until(predicate, timeout: float = 2.0) -> None:
    """Poll observable state (not sleep-and-hope): returns once predicate() holds, fails after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def read_segment(segment) -> bytes:
    data = b""
    while chunk := await segment.read():
        data += chunk
    return data


class Errors:
    """pytrickle error callback that records what it was told."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def __call__(self, kind, exc) -> None:
        self.kinds.append(kind)


class Held:
    """A streamed POST body the test feeds chunk by chunk, ended by put(None)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def body(self):
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    def put(self, chunk: bytes | None) -> None:
        self.queue.put_nowait(chunk)


async def publish(pub: TricklePublisher, *chunks: bytes, close: bool = True):
    """One segment through pytrickle: next(), the chunks, close; returns the writer if left open.

    pytrickle's next() preconnects seq+1 in a background task; a next() before that task has run would reuse the
    same seq (a client race: the Go server appends concurrent writes to one seq), so wait for pytrickle's index."""
    idx = pub.idx
    writer = await pub.next()
    for chunk in chunks:
        await writer.write(chunk)
    if close:
        await writer.close()
    await until(lambda: pub.idx == idx + 1)
    return writer


async def post(session, url, data=b"", **headers):
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


async def get(session, url):
    async with session.get(url) as resp:
        return resp.status, resp.headers, await resp.read()


def test_segments_round_trip_from_pytrickle_publisher_to_subscriber(server):
    url = server.create_channel("rt", "video/mp2t")
    payloads = [bytes([i]) * 50_000 + b"end%d" % i for i in range(3)]

    async def main():
        async with TricklePublisher(url, "application/x-ignored") as pub:
            for data in payloads:
                await publish(pub, data[:1000], data[1000:])
            await until(lambda: server.next_write("rt") == 3)
            async with TrickleSubscriber(url, start_seq=0) as sub:
                got = []
                for _ in payloads:
                    segment = await sub.next()
                    # the channel's mime type is the creating call's, not the publishing POST's Content-Type
                    assert segment.response.headers["Content-Type"] == "video/mp2t"
                    assert segment.response.headers["Lp-Trickle-Latest"] == "3"  # as TestTrickle_Close
                    got.append((segment.seq(), await read_segment(segment)))
        return got

    assert run(main()) == list(enumerate(payloads))


def test_body_is_relayed_while_still_being_written(server):
    url = server.create_channel("relay", "video/mp2t")

    async def main():
        async with TricklePublisher(url, "video/mp2t") as pub, TrickleSubscriber(url, start_seq=0) as sub:
            writer = await pub.next()
            await writer.write(b"first chunk")
            # the rest of the body is written only after the subscriber has the first chunk: a server that relays
            # only complete bodies never sends it, and the wait_for below fails
            segment = await asyncio.wait_for(sub.next(), 2)
            first = await asyncio.wait_for(segment.read(), 2)
            await writer.write(b"last chunk")
            await writer.close()
            rest = await read_segment(segment)
        return segment.seq(), first, rest

    assert run(main()) == (0, b"first chunk", b"last chunk")


def test_late_subscriber_at_minus_2_gets_current_segment_from_its_start(server):
    url = server.create_channel("late", "video/mp2t")

    async def main():
        async with TricklePublisher(url, "video/mp2t") as pub:
            for i in range(3):
                await publish(pub, b"old%d" % i)
            writer = await publish(pub, b"head of 3|", close=False)
            await until(lambda: server.next_write("late") == 4)  # the server has seq 3's first bytes
            async with TrickleSubscriber(url, start_seq=-2) as sub:
                segment = await sub.next()
                first = await segment.read()
                await writer.write(b"tail of 3")
                await writer.close()
                rest = await read_segment(segment)
            # Go compares with nextWrite (4), so the current segment carries Lp-Trickle-Latest
            return segment.seq(), segment.response.headers.get("Lp-Trickle-Latest"), first, rest

    assert run(main()) == (3, "4", b"head of 3|", b"tail of 3")


def test_subscriber_at_minus_1_waits_for_the_next_write(server):
    url = server.create_channel("edge", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            for i in range(2):
                await post(session, f"{url}/{i}", b"old%d" % i)
            async with TrickleSubscriber(url, start_seq=-1) as sub:
                nxt = asyncio.create_task(sub.next())
                await until(lambda: 2 in server.segments("edge"))  # -1 resolved to nextWrite (2), pre-created
                assert not nxt.done()
                await post(session, f"{url}/2", b"new")
                segment = await nxt
                return segment.seq(), await read_segment(segment)

    assert run(main()) == (2, b"new")


def test_subscriber_behind_the_ring_gets_470_and_pytrickle_follows_to_latest(server):
    url = server.create_channel("ring", "video/mp2t")
    written = MAX_SEGMENTS + 2  # seqs 0..6: slots now hold 5, 6, 2, 3, 4

    async def main():
        async with aiohttp.ClientSession() as session:
            for i in range(written):
                assert (await post(session, f"{url}/{i}", b"seg%d" % i))[0] == 200
            status, headers, body = await get(session, f"{url}/0")
            assert (status, headers["Lp-Trickle-Latest"], headers["Lp-Trickle-Seq"]) == (470, "7", "0")
            assert body == b"Entry not found"
            assert (await get(session, f"{url}/2"))[2] == b"seg2"  # still in the ring
            async with TrickleSubscriber(url, start_seq=0) as sub:
                nxt = asyncio.create_task(sub.next())  # 470 -> GET /7, which waits at the write head
                await until(lambda: 7 in server.segments("ring"))
                await post(session, f"{url}/7", b"seg7")
                segment = await nxt
                latest = segment.response.headers.get("Lp-Trickle-Latest")  # none: 7 was the write head
                return segment.seq(), latest, await read_segment(segment)

    assert run(main()) == (7, None, b"seg7")


def test_unknown_channel_404_ends_pytrickle_subscriber(server):
    async def main():
        errors = Errors()
        async with TrickleSubscriber(f"{server.url}/nope", start_seq=0, error_callback=errors) as sub:
            segment = await sub.next()
        async with aiohttp.ClientSession() as session:
            status, headers, _ = await post(session, f"{server.url}/nope/0", b"x")
            raw = [(await get(session, f"{server.url}/nope/{p}"))[0] for p in ("0", "next")]
        return segment, errors.kinds, status, headers.get("Connection"), raw

    # one 404 ends it at once: no retries (they would report max_retries_exceeded)
    assert run(main()) == (None, ["stream_not_found"], 404, "close", [404, 404])
    assert server.channels() == []  # without autocreate a POST does not create the channel


def test_delete_channel_ends_blocked_subscriber_and_later_calls_404(server):
    url = server.create_channel("del", "video/mp2t")

    async def main():
        errors = Errors()
        async with aiohttp.ClientSession() as session, TrickleSubscriber(url, -1, error_callback=errors) as sub:
            nxt = asyncio.create_task(sub.next())  # -1: the write head, seq 0
            raw = asyncio.create_task(get(session, f"{url}/1"))  # seq 1 is pre-created too while nothing was written
            await until(lambda: server.segments("del") == [0, 1])  # both GETs are waiting
            async with session.delete(url) as resp:
                assert resp.status == 200
            assert await nxt is None  # EOS from Lp-Trickle-Closed, not a 404 (that would call errors)
            assert errors.kinds == []
            status, headers, body = await raw
            assert (status, body) == (200, b"")
            assert (headers["Lp-Trickle-Closed"], headers["Lp-Trickle-Seq"]) == ("terminated", "1")
            assert (await get(session, f"{url}/0"))[0] == 404
            assert (await get(session, f"{url}/next"))[0] == 404
            assert (await post(session, f"{url}/0", b"x"))[0] == 404
            async with session.delete(url) as resp:
                assert resp.status == 400  # closeStream of an absent channel: Go's 400 "Invalid stream"

    run(main())
    assert server.channels() == []


def test_closing_channel_answers_preconnected_post(server):
    url = server.create_channel("pre", "video/mp2t")

    async def main():
        held = Held()
        async with aiohttp.ClientSession() as session:
            pending = asyncio.create_task(session.post(f"{url}/0", data=held.body(), expect100=True))
            await until(lambda: server.segments("pre") == [0])  # the POST waits for its first byte
            server.close_channel("pre")
            async with await pending as resp:
                result = resp.status, dict(resp.headers), await resp.read()
            held.put(None)
            return result

    status, headers, body = run(main())
    assert (status, body) == (200, b"")
    assert headers["Lp-Trickle-Seq"] == "0"
    assert headers["Lp-Trickle-Closed"] == "terminated"
    assert headers["Connection"] == "close"


def test_post_minus_1_writes_next_seq_and_reports_it(server):
    url = server.create_channel("next", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            seqs = [(await post(session, f"{url}/-1", b"p%d" % i))[1]["Lp-Trickle-Seq"] for i in range(3)]
            assert server.next_write("next") == 3
            bodies = [(await get(session, f"{url}/{i}"))[2] for i in range(3)]
        return seqs, bodies

    assert run(main()) == (["0", "1", "2"], [b"p0", b"p1", b"p2"])


def test_next_reports_next_write_in_body_and_header(server):
    url = server.create_channel("n", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            before = await get(session, f"{url}/next")
            for i in range(2):
                await post(session, f"{url}/{i}", b"x")
            after = await get(session, f"{url}/next")
        return [(s, h["Lp-Trickle-Latest"], h.get("Lp-Trickle-Closed"), b) for s, h, b in (before, after)]

    assert run(main()) == [(200, "0", None, b"0"), (200, "2", None, b"2")]


def test_overwritten_segment_ends_its_readers(server):
    url = server.create_channel("over", "text/plain")

    async def main():
        held = Held()
        async with aiohttp.ClientSession() as session:
            writing = asyncio.create_task(post(session, f"{url}/0", held.body()))
            held.put(b"partial")
            async with session.get(f"{url}/0") as resp:
                assert await resp.content.readany() == b"partial"
                # seq 5 takes slot 0: seq 0 is closed and its reader sees EOF while its POST is still open
                assert (await post(session, f"{url}/{MAX_SEGMENTS}", b"five"))[0] == 200
                rest = await asyncio.wait_for(resp.read(), 2)
            gone = (await get(session, f"{url}/0"))[0]
            held.put(None)
            await writing
        return rest, gone

    assert run(main()) == (b"", 470)


def test_reset_closes_older_segments_and_keeps_their_bytes(server):
    url = server.create_channel("reset", "text/plain")

    async def main():
        held = Held()
        async with aiohttp.ClientSession() as session:
            writing = asyncio.create_task(post(session, f"{url}/0", held.body()))
            held.put(b"Hello")
            async with session.get(f"{url}/0") as resp:
                assert await resp.content.readany() == b"Hello"
                status, headers, _ = await post(session, f"{url}/-1", b"after-reset", **{"Lp-Trickle-Reset": "1"})
                rest = await asyncio.wait_for(resp.read(), 2)  # hangs if the reset does not close seq 0
            again = (await get(session, f"{url}/0"))[2]
            held.put(None)
            await writing
        return status, headers["Lp-Trickle-Seq"], rest, again

    assert run(main()) == (200, "1", b"", b"Hello")


def test_delete_seq_ends_a_waiting_reader_without_closing_the_channel(server):
    url = server.create_channel("dseq", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(get(session, f"{url}/0"))
            await until(lambda: server.segments("dseq") == [0])
            async with session.delete(f"{url}/0") as resp:
                assert resp.status == 200
            status, headers, body = await waiting
            absent = await session.delete(f"{url}/3")
        return status, headers.get("Lp-Trickle-Closed"), headers["Lp-Trickle-Seq"], body, absent.status

    assert run(main()) == (200, None, "0", b"", 400)
    assert server.channels() == ["dseq"]


def test_seq_1_is_precreated_while_nothing_was_written_but_seq_2_is_not(server):
    url = server.create_channel("one", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(get(session, f"{url}/1"))
            await until(lambda: server.segments("one") == [1])
            ahead = await get(session, f"{url}/2")
            await post(session, f"{url}/1", b"one")
            status, headers, body = await waiting
        return ahead[0], ahead[1]["Lp-Trickle-Latest"], status, headers["Lp-Trickle-Seq"], body

    assert run(main()) == (470, "0", 200, "1", b"one")


def test_empty_post_completes_segment_and_advances_next_write(server):
    url = server.create_channel("empty", "text/plain")

    async def main():
        async with aiohttp.ClientSession() as session:
            posted = await post(session, f"{url}/0")
            got = await get(session, f"{url}/0")
        return posted, got

    (pstatus, pheaders, _), (gstatus, gheaders, body) = run(main())
    assert (pstatus, pheaders["Lp-Trickle-Seq"], pheaders["Connection"]) == (200, "0", "close")
    assert (gstatus, gheaders["Lp-Trickle-Seq"], gheaders["Lp-Trickle-Latest"], body) == (200, "0", "1", b"")
    assert "Lp-Trickle-Closed" not in gheaders  # as go-livepeer's TestTrickle_EmptySegment


async def create_and_publish(url: str) -> tuple[int, int]:
    """POST {channel} with Expect-Content, and POST {other}/0 with a Content-Type: their statuses."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/made", headers={"Expect-Content": "video/mp2t"}) as resp:
            created = resp.status
        published = (await post(session, f"{url}/auto/0", b"x", **{"Content-Type": "text/csv"}))[0]
    return created, published


async def content_types(urls: list[str]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        await post(session, urls[0] + "/0", b"y", **{"Content-Type": "text/plain"})  # not the channel's type
        return [(await get(session, f"{u}/0"))[1]["Content-Type"] for u in urls]


def test_create_and_publish_need_autocreate():
    with TrickleServer() as server:
        assert run(create_and_publish(server.url)) == (404, 404)
        assert server.channels() == []


def test_autocreated_channel_takes_mime_type_of_the_creating_call():
    with TrickleServer(autocreate=True, base_path="/t/") as server:
        assert server.url.endswith("/t")
        assert run(create_and_publish(server.url)) == (200, 200)
        assert sorted(server.channels()) == ["auto", "made"]
        # "made" from Expect-Content of POST {channel}; "auto" from Content-Type of its first POST {channel}/0
        assert run(content_types([f"{server.url}/made", f"{server.url}/auto"])) == ["video/mp2t", "text/csv"]


def test_exit_ends_waiting_clients_and_joins_its_thread():
    server = TrickleServer().__enter__()
    url = server.create_channel("bye", "text/plain")
    exited = []

    async def main():
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.create_task(get(session, f"{url}/0"))
            await until(lambda: server.segments("bye") == [0])
            started = time.monotonic()
            await asyncio.to_thread(server.__exit__, None, None, None)
            exited.append(time.monotonic() - started)
            status, headers, _ = await waiting
            return status, headers.get("Lp-Trickle-Closed")

    try:
        result = run(main())
    finally:
        if not exited:
            server.__exit__(None, None, None)
    assert result == (200, "terminated")  # as Start()'s stop: clearAllStreams closes every channel
    assert exited[0] < 1.0
    assert not server._thread.is_alive()
