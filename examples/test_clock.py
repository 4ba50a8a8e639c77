"""examples/clock.py: streaming reads through the client, Tflush mid-read, the feed."""

import trio

from ninep.client import connect
from ninep.protocol.constants import OpenFlags
from ninep.server import serve

import clock


async def test_time_stream_flush_and_event_feed():
    tree, events = clock.make_clock(interval=0.05)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, tree, "tcp://127.0.0.1:0")
        async with connect(server.addresses[0]) as client:
            async with client.root.open("time") as ticking:
                lines = [await ticking.read(100) for _ in range(3)]
                assert all(line.endswith(b"\n") and len(line) == 20 for line in lines)
                assert lines == sorted(lines)
                with trio.move_on_after(0.01) as interrupted:  # Ctrl-C mid-read -> Tflush
                    await ticking.read(100)
                assert interrupted.cancelled_caught
                with trio.fail_after(5):  # the open still works afterwards
                    assert (await ticking.read(100)).endswith(b"\n")
            assert (await client.root.read_file("now")).count(b"\n") == 1

            async with client.root.open("events") as feed_reader:
                async with client.root.open("ctl", OpenFlags.WRONLY) as ctl:
                    await ctl.write(b"hello")
                    await ctl.write(b"world\n")
                assert await feed_reader.read(100) == b"hello\n"
                assert await feed_reader.read(100) == b"world\n"
                async with trio.open_nursery() as ticker:
                    ticker.start_soon(clock.tick_events, events, 0.01)
                    with trio.fail_after(5):
                        assert (await feed_reader.read(100)).startswith(b"tick 1 ")
                    ticker.cancel_scope.cancel()
        # shutdown, not cancel: a cancelled serve() leaves its listening socket open
        server.shutdown()
