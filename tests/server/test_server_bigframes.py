"""Frames bigger than the receive buffer (1 MiB Twrites) land in pooled buffers.

A pooled buffer is handed out again only when nothing refers to it any more, so a
backend that keeps the payload it was given never sees it overwritten, and pipelined
big writes to a host file arrive intact.
"""

import os

import trio

import ninep.server
from ninep.fs.backend import File, Filesystem
from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import OpenFlags
from ninep.protocol.messages import Qid
from ninep.server.connection import _FramePool

from srv_wire import Peer

MSIZE = 1 << 20
CHUNK = 600 * 1024  # more than the 256 KiB receive buffer


def test_pool_reuses_only_buffers_nobody_holds():
    pool = _FramePool()
    first = pool.take(100, 1000)
    second = pool.take(100, 1000)
    assert first.obj is not second.obj and len(first) == 1000
    kept = first[:10]  # a payload a backend kept
    first_buffer = id(first.obj)  # (holding the object itself would pin it)
    del first
    third = pool.take(100, 1000)
    assert id(third.obj) != first_buffer
    del kept, second, third
    assert id(pool.take(100, 1000).obj) == first_buffer
    assert len(pool.take(5000, 1000)) == 5000  # bigger than the pooled ones: a new one


class KeepingFile(File):
    """Keeps every payload it is given, uncopied."""

    def __init__(self, kept: list) -> None:
        self.kept = kept
        self.qid = Qid(0, 0, 1)

    async def walk(self, names):
        return [self.qid] * len(names), KeepingFile(self.kept)

    async def open(self, flags: int) -> int:
        return 0

    async def write(self, offset: int, data: memoryview) -> int:
        self.kept.append((offset, data))
        return len(data)


class KeepingFilesystem(Filesystem):
    def __init__(self) -> None:
        self.kept: list = []

    async def attach(self, aname, creds):
        return KeepingFile(self.kept)


def chunks(count: int) -> list[bytes]:
    return [bytes([i + 1]) * CHUNK for i in range(count)]


async def pipelined_writes(filesystem, name: str, data: list[bytes]) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, filesystem, ["tcp://127.0.0.1:0"])
        host, port = server.addresses[0].removeprefix("tcp://").rsplit(":", 1)
        peer = Peer(await trio.open_tcp_stream(host, int(port)))
        await peer.start(msize=MSIZE)
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, (name,))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, int(OpenFlags.WRONLY))), m.Rlopen)
        await peer.send(*(m.Twrite(10 + i, 1, i * CHUNK, chunk) for i, chunk in enumerate(data)))
        replies = sorted([(await peer.recv()) for _ in data], key=lambda r: r.tag)
        assert replies == [m.Rwrite(10 + i, CHUNK) for i in range(len(data))]
        await peer.stream.aclose()
        server.shutdown()


async def test_kept_payloads_are_never_overwritten():
    fs = KeepingFilesystem()
    data = chunks(8)
    await pipelined_writes(fs, "f", data)
    assert sorted((offset, bytes(view)) for offset, view in fs.kept) == [
        (i * CHUNK, chunk) for i, chunk in enumerate(data)]


async def test_pipelined_big_writes_reach_a_host_file_intact(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    fs = HostFilesystem(str(tmp_path))
    data = chunks(12)
    try:
        await pipelined_writes(fs, "f", data)
    finally:
        await fs.aclose()
    assert (tmp_path / "f").read_bytes() == b"".join(data)
    assert os.path.getsize(tmp_path / "f") == 12 * CHUNK
