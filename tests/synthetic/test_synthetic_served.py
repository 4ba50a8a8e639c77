"""Synthetic trees served by the real server, read with the project's client."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from ninep.fs.synthetic import ControlFile, Directory, Feed, GeneratedFile, StreamFile
from ninep.protocol.constants import OpenFlags

from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME, NOTAG
from ninep.server import serve

from synthetic_helpers import served


async def test_tree_served_directly():
    commands = []
    tree = Directory({
        "hello": b"hi\n",
        "sub": {"n": GeneratedFile(lambda: "42\n")},
        "ctl": ControlFile(on_write=commands.append),
    })
    async with served(tree) as client:
        assert await client.root.read_file("hello") == b"hi\n"
        assert await client.root.read_file("sub/n") == b"42\n"
        assert sorted(e.name for e in await client.root.listdir("")) == [".", "..", "ctl", "hello", "sub"]
        async with client.root.open("ctl", OpenFlags.WRONLY | OpenFlags.TRUNC) as ctl:
            await ctl.write(b"reload\n")
        assert commands == [b"reload\n"]
        with pytest.raises(OSError) as failure:
            await client.root.open("hello", OpenFlags.WRONLY)
        assert failure.value.errno == errno.EROFS


async def test_flushed_stream_read_is_cancelled_and_the_connection_stays_healthy():
    entered, cancelled = trio.Event(), trio.Event()

    async def never_ready():
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    feed = Feed()
    tree = Directory({"stuck": StreamFile(never_ready), "events": StreamFile(feed), "ok": b"fine\n"})
    async with served(tree) as client:
        async with client.root.open("stuck") as stuck:
            with trio.move_on_after(10) as scope:  # the guest's Ctrl-C: client sends Tflush
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stuck.read, 100)
                    await entered.wait()
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught  # the read returned promptly after the flush
            with trio.fail_after(5):
                await cancelled.wait()  # the handler saw trio cancellation
        # the same connection answers the next requests
        assert await client.root.read_file("ok") == b"fine\n"
        async with client.root.open("events") as events:
            async with trio.open_nursery() as nursery:
                got = []

                async def reader():
                    got.append(await events.read(100))

                nursery.start_soon(reader)
                while feed.subscribers == 0:  # the open has subscribed; the read may block
                    await trio.sleep(0.01)
                feed.publish("event\n")
            assert got == [b"event\n"]


async def test_disconnect_cancels_a_blocked_read_and_ends_the_session():
    """A guest that goes away mid-read: no Tflush, just a closed socket."""
    entered, cancelled = trio.Event(), trio.Event()

    async def wait_forever():
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    tree = Directory({"stuck": StreamFile(wait_forever)})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, tree, "tcp://127.0.0.1:0")
        host, port = server.addresses[0].removeprefix("tcp://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        frames = FrameReader(65536)

        async def rpc(msg):
            await stream.send_all(encode_bytes(msg))
            while (frame := frames.next_frame()) is None:
                frames.feed(await stream.receive_some())
            return decode(frame)

        assert isinstance(await rpc(m.Tversion(NOTAG, 65536, "9P2000.L")), m.Rversion)
        assert isinstance(await rpc(m.Tattach(1, 0, NOFID, "", "", NONUNAME)), m.Rattach)
        assert isinstance(await rpc(m.Twalk(1, 0, 1, ("stuck",))), m.Rwalk)
        assert isinstance(await rpc(m.Tlopen(1, 1, OpenFlags.RDONLY)), m.Rlopen)
        await stream.send_all(encode_bytes(m.Tread(2, 1, 0, 100)))
        await entered.wait()
        assert len(tree.filesystem.sessions) == 1
        await stream.aclose()
        with trio.fail_after(5):
            await cancelled.wait()
            while tree.filesystem.sessions:  # every fid closed: the session ended
                await trio.sleep(0.01)
        server.shutdown()


async def test_union_served_with_a_synthetic_mount():
    from ninep.fs.synthetic import RamDirectory, RamFilesystem
    from ninep.fs.union import UnionFilesystem

    base = RamFilesystem(RamDirectory({"run": RamDirectory(), "etc": RamDirectory({"motd": b"base\n"})}))
    union = UnionFilesystem(base, {"run/host": Directory({"name": b"host-1\n"})})
    async with served(union) as client:
        assert await client.root.read_file("run/host/name") == b"host-1\n"
        assert await client.root.read_file("run/host/../../etc/motd") == b"base\n"
        assert [e.name for e in await client.root.listdir("run")] == [".", "..", "host"]
