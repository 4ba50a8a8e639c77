"""Streaming files: blocking reads, per-open subscriptions, cancellation, end of file."""

from __future__ import annotations

import trio
import trio.testing

from ninep.fs.synthetic import Directory, Feed, StreamFile
from ninep.protocol.constants import OpenFlags

from synthetic_helpers import attach, walk


async def open_stream(root, path):
    file = await walk(root, path)
    await file.open(OpenFlags.RDONLY)
    return file


async def test_feed_read_blocks_until_published_and_every_open_gets_every_chunk():
    feed = Feed()
    root = await attach(Directory({"events": StreamFile(feed)}))
    first, second = await open_stream(root, "events"), await open_stream(root, "events")
    assert feed.subscribers == 2
    got = []

    async def reader(file):
        got.append(await file.read(0, 100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, first)
        nursery.start_soon(reader, second)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing published yet: both reads are blocked
        feed.publish("event 1\n")
    assert got == [b"event 1\n", b"event 1\n"]
    await first.close()
    assert feed.subscribers == 1
    feed.publish("event 2\n")
    assert await second.read(0, 100) == b"event 2\n"
    await second.close()


async def test_large_chunk_is_split_across_reads_and_close_is_eof():
    feed = Feed()
    root = await attach(Directory({"log": StreamFile(feed)}))
    file = await open_stream(root, "log")
    feed.publish(b"abcdefghij")
    feed.publish(b"klm")
    assert await file.read(0, 4) == b"abcd"
    assert await file.read(4, 100) == b"efghij"  # the rest of the chunk, not the next one
    assert await file.read(10, 100) == b"klm"
    feed.close()
    assert await file.read(13, 100) == b""
    assert await file.read(13, 100) == b""
    await file.close()


async def test_history_replays_to_new_subscribers_and_overflow_is_counted():
    feed = Feed(backlog=2, history=1)
    feed.publish("old\n")
    feed.publish("last\n")
    root = await attach(Directory({"log": StreamFile(feed)}))
    file = await open_stream(root, "log")
    assert await file.read(0, 100) == b"last\n"
    for n in range(5):
        feed.publish(f"{n}\n")
    assert feed.dropped == 3 and feed.published == 7
    assert [await file.read(0, 100) for _ in range(2)] == [b"0\n", b"1\n"]
    await file.close()


async def test_cancelled_read_loses_nothing_and_the_open_keeps_working(autojump_clock):
    feed = Feed()
    root = await attach(Directory({"events": StreamFile(feed)}))
    file = await open_stream(root, "events")
    with trio.move_on_after(5) as scope:  # what Tflush does to the request's task
        await file.read(0, 100)
    assert scope.cancelled_caught
    feed.publish("after flush\n")
    assert await file.read(0, 100) == b"after flush\n"
    await file.close()


async def test_function_source_is_called_per_read_and_none_is_eof(autojump_clock):
    ticks = iter(range(3))

    async def tick():
        await trio.sleep(1)
        n = next(ticks, None)
        return None if n is None else f"tick {n}\n"

    root = await attach(Directory({"clock": StreamFile(tick)}))
    file = await open_stream(root, "clock")
    start = trio.current_time()
    assert [await file.read(0, 100) for _ in range(4)] == [b"tick 0\n", b"tick 1\n", b"tick 2\n", b""]
    assert trio.current_time() - start == 4
    await file.close()


async def test_cancelling_a_function_source_cancels_the_handler(autojump_clock):
    cancelled = []

    async def forever():
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    root = await attach(Directory({"never": StreamFile(forever)}))
    file = await open_stream(root, "never")
    with trio.move_on_after(1):
        await file.read(0, 10)
    assert cancelled == [True]
    await file.close()


async def test_feed_closed_before_open_reads_eof_immediately():
    feed = Feed(history=2)
    feed.publish("x")
    feed.close()
    root = await attach(Directory({"done": StreamFile(feed)}))
    file = await open_stream(root, "done")
    assert await file.read(0, 10) == b"x"
    assert await file.read(0, 10) == b""
    await file.close()


async def test_linux_follow_up_read_ends_the_read_call_without_eof():
    """p9_client_read asks for the rest of the buffer after a short read; that one
    Tread gets 0 so read(2) returns, and the stream goes on."""
    feed = Feed()
    root = await attach(Directory({"log": StreamFile(feed)}))
    file = await open_stream(root, "log")
    feed.publish("line 1\n")
    assert await file.read(0, 4096) == b"line 1\n"
    assert await file.read(7, 4096 - 7) == b""  # the kernel's follow-up: end of this read(2)
    feed.publish("line 2\n")
    assert await file.read(7, 4096) == b"line 2\n"  # the next read(2): whole buffer again
    feed.publish("line 3\n")
    assert await file.read(14, 4096) == b"line 3\n"  # one Tread per call (O_NONBLOCK): no 0
    feed.publish("line 4\n")
    assert await file.read(0, 100) == b"line 4\n"  # our client's style: offset 0 every time
    feed.publish("a long line\n")
    assert await file.read(21, 4) == b"a lo"  # full reads leave no follow-up to answer
    assert await file.read(25, 4) == b"ng l"
    await file.close()
