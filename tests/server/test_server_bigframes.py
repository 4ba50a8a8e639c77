"""Big frames (1 MiB Twrites) land in buffers of their own, filled by the socket.

Each big frame gets a fresh buffer sized to it, which becomes the Twrite's payload:
a backend that keeps the payload it was given never sees it overwritten, and
pipelined big writes to a host file arrive intact.
"""

import os

import trio

import ninep.server
from ninep.fs.backend import File, Filesystem
from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import OpenFlags
from ninep.protocol.messages import Qid
from ninep.protocol.codec import FrameReader, encode_bytes

from srv_wire import Peer

MSIZE = 1 << 20
CHUNK = 600 * 1024  # more than the 256 KiB receive buffer


def test_a_big_frame_gets_its_own_buffer_and_the_socket_fills_it():
    frames = FrameReader(MSIZE, big_frame=1000)
    small = encode_bytes(m.Tclunk(1, 7))
    big = encode_bytes(m.Twrite(2, 1, 0, b"w" * 5000))
    frames.feed(small + big[:100])
    assert frames.next_frame() == small
    assert frames.next_frame() is None
    # Not a quarter of it yet: no buffer (codec), unless the reader, seeing the rest
    # queued on its socket, has it allotted now.
    assert frames.receive_buffer() is None and frames.big_wanting == len(big) // 4 - 100
    frames.allot()
    target = frames.receive_buffer()  # the rest of the big frame, for recv_into
    assert len(target) == len(big) - 100 and frames.big_wanting == 0
    target[:] = big[100:]
    frames.received(len(target))
    frame = frames.next_frame()
    assert bytes(frame) == big and isinstance(frame, memoryview)
    assert frames.receive_buffer() is None and frames.buffered == 0
    second = frames.next_frame()
    assert second is None
    frames.feed(big)  # another one: a new buffer, the first stays as it was
    again = frames.next_frame()
    assert again.obj is not frame.obj and bytes(frame) == big


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
