"""Requests answered in the connection's reader (no worker task) for ``prompt``
filesystems when nothing else is in flight -- and never one that may wait."""

import pytest
import trio

from ninep.fs.host import HostFilesystem
from ninep.fs.synthetic import Directory, StaticFile, as_filesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import LockFlags, LockStatus, LockType

from srv_wire import served

WR = LockType.WRLCK


async def test_one_request_at_a_time_is_answered_in_the_reader(tmp_path):
    (tmp_path / "f").write_bytes(b"hello")
    async with served(HostFilesystem(str(tmp_path))) as ([peer], [conn]):
        await peer.start()
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, 0)), m.Rlopen)
        assert await peer.rpc(m.Tread(4, 1, 0, 100)) == m.Rread(4, b"hello")
        assert isinstance(await peer.rpc(m.Tgetattr(5, 1, 0x3FFF)), m.Rgetattr)
        assert await peer.rpc(m.Tclunk(6, 1)) == m.Rclunk(6)
        assert conn.requests_inline == 5  # Tversion and Tattach are not candidates
        # A pipelined burst: the first may go inline, the rest go to worker tasks.
        await peer.send(*(m.Tgetattr(tag, 0, 0x7FF) for tag in range(10, 20)))
        replies = [await peer.recv() for _ in range(10)]
        assert sorted(r.tag for r in replies) == list(range(10, 20))
        assert all(isinstance(r, m.Rgetattr) for r in replies)


async def test_a_filesystem_that_is_not_prompt_is_never_run_in_the_reader():
    tree = as_filesystem(Directory({"f": StaticFile(b"x")}))
    assert not tree.prompt
    async with served(tree) as ([peer], [conn]):
        await peer.start()
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tgetattr(3, 1, 0x7FF)), m.Rgetattr)
        assert conn.requests_inline == 0


async def test_a_blocking_lock_on_a_prompt_filesystem_can_still_be_flushed(tmp_path):
    """Were Tlock run in the reader, the reader could not read the Tflush."""
    (tmp_path / "f").write_bytes(b"")
    async with served(HostFilesystem(str(tmp_path)), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await peer.rpc(m.Tlopen(3, 1, 2)), m.Rlopen)
        assert await a.rpc(m.Tlock(4, 1, WR, 0, 0, 0, 1, "a")) == m.Rlock(4, LockStatus.SUCCESS)
        await b.send(m.Tlock(4, 1, WR, LockFlags.BLOCK, 0, 0, 2, "b"))
        await trio.sleep(0.2)
        with trio.fail_after(5):
            assert await b.rpc(m.Tflush(5, 4)) == m.Rflush(5)
        # And the connection goes on serving, inline again.
        assert isinstance(await b.rpc(m.Tgetattr(6, 1, 0x7FF)), m.Rgetattr)


async def test_a_blocking_lock_is_tried_in_the_reader_and_waits_in_a_task(tmp_path):
    """F_SETLKW on a free range costs no task; refused, it waits and is granted when
    the holder lets go."""
    (tmp_path / "f").write_bytes(b"")
    async with served(HostFilesystem(str(tmp_path)), connections=2) as ([a, b], [ca, cb]):
        for peer in (a, b):
            await peer.start()
            assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await peer.rpc(m.Tlopen(3, 1, 2)), m.Rlopen)
        inline = ca.requests_inline
        assert await a.rpc(m.Tlock(4, 1, WR, LockFlags.BLOCK, 0, 0, 1, "a")) == \
            m.Rlock(4, LockStatus.SUCCESS)
        assert ca.requests_inline == inline + 1
        inline = cb.requests_inline
        await b.send(m.Tlock(4, 1, WR, LockFlags.BLOCK, 0, 0, 2, "b"))
        await trio.sleep(0.2)
        assert cb.requests_inline == inline  # refused: waiting in a task
        assert await a.rpc(m.Tlock(5, 1, LockType.UNLCK, 0, 0, 0, 1, "a")) == \
            m.Rlock(5, LockStatus.SUCCESS)
        with trio.fail_after(5):
            assert await b.recv() == m.Rlock(4, LockStatus.SUCCESS)


async def test_a_request_held_for_the_reader_meets_tflush_and_tversion(tmp_path):
    """A lone candidate waits for the reader to find nothing more to read; a Tflush or
    Tversion arriving in the same read must still see it as an ordinary request."""
    (tmp_path / "f").write_bytes(b"x")
    async with served(HostFilesystem(str(tmp_path))) as ([peer], [conn]):
        await peer.start()
        await peer.send(m.Tgetattr(5, 0, 0x7FF), m.Tflush(6, 5))
        with trio.fail_after(5):  # Rgetattr if it ran before the flush, then Rflush
            while (reply := await peer.recv()) != m.Rflush(6):
                assert isinstance(reply, m.Rgetattr) and reply.tag == 5, reply
        await peer.send(m.Tgetattr(7, 0, 0x7FF), m.Tversion(0xFFFF, 65536, "9P2000.L"))
        with trio.fail_after(5):
            while (reply := await peer.recv()) != m.Rversion(0xFFFF, 65536, "9P2000.L"):
                assert reply.tag == 7, reply


async def test_a_lone_client_in_another_thread_is_waited_for_outside_the_scheduler(tmp_path):
    """One connection, a client that is not a task of this loop (here a thread; in
    production another process): the reader waits for its next request in select(),
    not through trio -- and a timer of this loop still fires on time meanwhile."""
    import socket
    import threading

    from ninep.protocol.codec import FrameReader, decode, encode_bytes
    from ninep.server.connection import Connection, LockManager
    from ninep.server.session import Export

    (tmp_path / "f").write_bytes(b"x")
    ours, theirs = socket.socketpair()
    conn = Connection(trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
                      {"": Export(HostFilesystem(str(tmp_path)))}, LockManager())
    rounds = 400
    replies = []

    def client() -> None:
        frames = FrameReader(1 << 20)

        def rpc(msg):
            theirs.sendall(encode_bytes(msg))
            while (frame := frames.next_frame()) is None:
                frames.feed(theirs.recv(65536))
            return decode(frame)

        rpc(m.Tversion(0xFFFF, 65536, "9P2000.L"))
        rpc(m.Tattach(1, 0, 0xFFFFFFFF, "nobody", "", 0xFFFFFFFF))
        replies.extend(rpc(m.Tgetattr(2, 0, 0x7FF)) for _ in range(rounds))
        theirs.close()

    ticks = []

    async def timer():
        while True:
            start = trio.current_time()
            await trio.sleep(0.005)
            ticks.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer)
        thread = threading.Thread(target=client)
        thread.start()
        with trio.fail_after(30):
            await conn.run()
        await trio.to_thread.run_sync(thread.join)
        nursery.cancel_scope.cancel()
    assert len(replies) == rounds and all(isinstance(r, m.Rgetattr) for r in replies)
    assert conn.lone_waits > rounds // 2
    assert ticks and max(ticks) < 0.1  # the loop was never held for long


@pytest.mark.parametrize("streams", ["socket", "memory"])
async def test_the_pump_over_a_socket_and_over_any_stream(tmp_path, streams):
    """The same reader and writer serve a socket (recv_into/sendmsg) and any trio
    stream (receive_some/send_all): pipelined requests, a big frame in its own
    buffer, and a Tflush of a request already answered."""
    (tmp_path / "f").write_bytes(b"")
    big = bytes(range(256)) * 1200  # 300 KiB: a frame of its own buffer
    async with served(HostFilesystem(str(tmp_path)), streams=streams) as ([peer], [conn]):
        await peer.start(msize=1 << 20)
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, 2)), m.Rlopen)
        await peer.send(m.Twrite(4, 1, 0, big), *(m.Tgetattr(tag, 1, 0x7FF) for tag in range(5, 20)),
                        m.Tflush(20, 19))
        replies = [await peer.recv() for _ in range(17)]
        assert replies[0] == m.Rwrite(4, len(big))
        assert sorted(r.tag for r in replies[1:16]) == list(range(5, 20))
        assert replies[16] == m.Rflush(20)
        assert await peer.rpc(m.Tread(21, 1, 0, len(big))) == m.Rread(21, big)
        assert conn.requests_inline >= 18
