"""The node's own trickle client (vision_node.livepeer.trickle) against the trickle server double (go-livepeer)."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.trickle_server import TrickleServer
from vision_node.livepeer import trickle


def run(scenario):
    with TrickleServer() as server:
        return asyncio.run(asyncio.wait_for(scenario(server), 20))


async def _until(condition, what: str):
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_publisher_connects_the_next_segment_before_its_first_byte_and_starts_where_the_channel_is():
    async def scenario(server):
        url = server.create_channel("ch", "video/MP2T")
        async with trickle.client() as http:
            first = trickle.Publisher(http, url, "video/MP2T")
            writer = await first.segment()
            # the segment and the one after it wait at the server with no byte written yet
            await _until(lambda: server.segments("ch") == [0, 1], "two preconnected segments")
            writer.write(b"a")
            await writer.finish()
            await first.close()
            await _until(lambda: server.next_write("ch") == 2, "the abandoned preconnect counted")
            second = trickle.Publisher(http, url, "video/MP2T")  # a restarted stream on the same channel
            writer = await second.segment()
            writer.write(b"b")
            await writer.finish()
            await second.close()
            return writer.seq

    assert run(scenario) == 2  # after the written segment and the empty one: never over an old segment


def test_subscriber_gets_a_segment_while_it_is_still_being_written():
    async def scenario(server):
        url = server.create_channel("ch", "video/MP2T")
        async with trickle.client() as http:
            publisher, subscriber = trickle.Publisher(http, url, "video/MP2T"), trickle.Subscriber(http, url, 0)
            writer = await publisher.segment()
            writer.write(b"first chunk;")
            segment = await subscriber.next()
            chunks = segment.chunks()
            got = await anext(chunks)  # arrives before the segment's end was written
            writer.write(b"second")
            await writer.finish()
            rest = b"".join([chunk async for chunk in chunks])
            await publisher.close()
            await subscriber.close()
            return segment.seq, got + rest

    assert run(scenario) == (0, b"first chunk;second")


def test_subscriber_behind_the_window_jumps_to_the_latest_segment():
    async def scenario(server):
        url = server.create_channel("ch", "video/MP2T")
        async with trickle.client() as http:
            publisher = trickle.Publisher(http, url, "video/MP2T")
            for i in range(8):
                await publisher.send(b"segment %d" % i)
            subscriber = trickle.Subscriber(http, url, 0)  # 0 left the 5-segment window: 470, latest 8
            reading = asyncio.ensure_future(subscriber.next())
            await asyncio.sleep(0.05)
            await publisher.send(b"segment 8")
            segment = await reading
            data = await segment.read()
            await subscriber.close()
            await publisher.close()
            return segment.seq, data

    assert run(scenario) == (8, b"segment 8")


def test_subscriber_ends_on_a_closed_channel_and_on_an_unknown_one():
    async def scenario(server):
        url = server.create_channel("ch", "video/MP2T")
        async with trickle.client() as http:
            subscriber = trickle.Subscriber(http, url)
            waiting = asyncio.ensure_future(subscriber.next())
            await asyncio.sleep(0.1)
            server.close_channel("ch")  # what go-livepeer does to an unpaid stream: no stop call
            closed = await waiting
            unknown = await trickle.Subscriber(http, f"{server.url}/nothing").next()
            await subscriber.close()
            return closed, unknown

    assert run(scenario) == (None, None)


def test_publishing_to_a_gone_channel_is_channel_gone():
    async def scenario(server):
        async with trickle.client() as http:
            with pytest.raises(trickle.ChannelGone):
                await trickle.Publisher(http, f"{server.url}/nothing", "video/MP2T").send(b"x")
            url = server.create_channel("ch", "application/json")
            publisher = trickle.Publisher(http, url, "application/json")
            await publisher.send(b"{}")
            server.close_channel("ch")
            with pytest.raises(trickle.ChannelGone):
                await publisher.send(b"{}")
            await publisher.close()

    run(scenario)
