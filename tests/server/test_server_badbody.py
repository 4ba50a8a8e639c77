"""A request whose body is malformed inside an intact frame costs that request only.

The frame's size field delimits it, so the stream is still in step: the server answers
Rlerror on the frame's tag (EILSEQ for a name that is not UTF-8, EINVAL for anything
else) and goes on serving. Only broken framing -- a size field below the header or
above msize -- ends the connection. One log line either way.
"""

import errno
import struct

import pytest
import trio

import ninep.server
from ninep.protocol import messages as m
from ninep.protocol.codec import encode_bytes
from ninep.protocol.constants import MessageType

from srv_memfs import MemFilesystem
from srv_wire import Peer, served


def frame(type_byte: int, tag: int, body: bytes) -> bytes:
    return struct.pack("<IBH", 7 + len(body), type_byte, tag) + body


def string(raw: bytes) -> bytes:
    return struct.pack("<H", len(raw)) + raw


def twalk(tag: int, names: list[bytes]) -> bytes:
    body = struct.pack("<IIH", 0, 1, len(names)) + b"".join(map(string, names))
    return frame(MessageType.Twalk, tag, body)


BAD_BODIES = {
    "name not UTF-8": (twalk(5, [b"caf\xe9"]), errno.EILSEQ),
    "NUL in a name": (twalk(5, [b"a\0b"]), errno.EINVAL),
    "17 walk elements": (twalk(5, [b"x"] * 17), errno.EINVAL),
    "body cut short": (frame(MessageType.Twalk, 5, struct.pack("<I", 0)), errno.EINVAL),
    "trailing bytes": (frame(MessageType.Tclunk, 5, struct.pack("<IB", 9, 0)), errno.EINVAL),
    "unknown type": (frame(250, 5, b"abc"), errno.EINVAL),
}


def ninep_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("ninep")]


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_body_gets_rlerror_and_the_connection_goes_on(case, caplog):
    raw, code = BAD_BODIES[case]
    async with served(MemFilesystem()) as ([peer], _):
        await peer.start()
        await peer.send_raw(raw)
        assert await peer.recv() == m.Rlerror(5, code)
        assert isinstance(await peer.rpc(m.Tstatfs(6, 0)), m.Rstatfs)
        lines = ninep_lines(caplog)
        assert len(lines) == 1 and "malformed request" in lines[0], lines


async def test_bad_body_between_good_requests_in_one_segment():
    async with served(MemFilesystem()) as ([peer], _):
        await peer.start()
        await peer.send_raw(encode_bytes(m.Tstatfs(1, 0)) + twalk(2, [b"\xff"])
                            + encode_bytes(m.Tstatfs(3, 0)))
        replies = {}
        for _ in range(3):
            reply = await peer.recv()
            replies[reply.tag] = reply
        assert replies[2] == m.Rlerror(2, errno.EILSEQ)
        assert isinstance(replies[1], m.Rstatfs) and isinstance(replies[3], m.Rstatfs)


@pytest.mark.parametrize("raw", [
    struct.pack("<IBH", 5, MessageType.Tstatfs, 1),  # size below the header
    struct.pack("<IBH", 1 << 30, MessageType.Tstatfs, 1),  # above msize
], ids=["size below header", "size above msize"])
async def test_broken_framing_ends_the_connection(raw, caplog):
    async with served(MemFilesystem()) as ([peer], _):
        await peer.start()
        await peer.send_raw(raw)
        assert await peer.at_eof()
        lines = ninep_lines(caplog)
        assert len(lines) == 1 and "malformed frame, closing" in lines[0], lines


async def test_over_tcp_too():
    """The socket reader (recv_into, not the memory-stream path) behaves the same."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, MemFilesystem(), ["tcp://127.0.0.1:0"])
        host, port = server.addresses[0].removeprefix("tcp://").rsplit(":", 1)
        peer = Peer(await trio.open_tcp_stream(host, int(port)))
        await peer.start()
        await peer.send_raw(twalk(5, [b"\xc3"]))
        assert await peer.recv() == m.Rlerror(5, errno.EILSEQ)
        assert isinstance(await peer.rpc(m.Tstatfs(6, 0)), m.Rstatfs)
        await peer.send_raw(struct.pack("<IBH", 3, MessageType.Tstatfs, 7))
        assert await peer.at_eof()
        await peer.stream.aclose()
        server.shutdown()
