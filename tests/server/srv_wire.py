"""Test helpers: a raw 9P peer over any trio stream, and a server connection in memory."""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio
import trio.testing

from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME
from ninep.server.connection import Connection, LockManager
from ninep.server.rules import ByteBudget
from ninep.server.session import Export, Limits


class Peer:
    """A 9P client that speaks raw messages: send anything, read replies in order."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.frames = FrameReader(1 << 24)

    async def send(self, *msgs: m.Message) -> None:
        await self.stream.send_all(b"".join(encode_bytes(x) for x in msgs))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self) -> m.Message:
        while True:
            frame = self.frames.next_frame()
            if frame is not None:
                return decode(frame)
            data = await self.stream.receive_some(1 << 20)
            if not data:
                raise EOFError("server closed the connection")
            self.frames.feed(data)

    async def at_eof(self) -> bool:
        try:
            return await self.stream.receive_some(1 << 16) == b""
        except trio.BrokenResourceError:
            return True

    async def rpc(self, msg: m.Message) -> m.Message:
        await self.send(msg)
        reply = await self.recv()
        assert reply.tag == msg.tag, (msg, reply)
        return reply

    async def start(self, msize: int = 65536, aname: str = "", n_uname: int = NONUNAME) -> None:
        """Tversion + Tattach as fid 0."""
        assert await self.rpc(m.Tversion(0xFFFF, msize, "9P2000.L")) == m.Rversion(0xFFFF, msize, "9P2000.L")
        reply = await self.rpc(m.Tattach(1, 0, NOFID, "nobody", aname, n_uname))
        assert isinstance(reply, m.Rattach), reply


def stream_pair(kind: str) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """(client, server): a real socketpair (the server's SocketTransport, as in
    production) or trio's memory streams (its StreamTransport, as for fd pairs)."""
    if kind == "memory":
        return trio.testing.memory_stream_pair()
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


@asynccontextmanager
async def served(exports, *, limits: Limits = Limits(), locks: LockManager | None = None,
                 connections: int = 1, streams: str = "socket", budget: ByteBudget | None = None):
    """Run ``connections`` server connections over a socketpair each (``streams=
    "memory"``: memory streams); yield their Peers. ``budget``: one process budget
    for all of them (as ``Server.bulk``), else each its own."""
    if not isinstance(exports, dict):
        exports = {"": Export(exports)}
    locks = locks or LockManager()
    peers, conns = [], []
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            client, server = stream_pair(streams)
            conn = Connection(server, exports, locks, limits=limits, budget=budget)
            conns.append(conn)
            nursery.start_soon(conn.run)
            peers.append(Peer(client))
        try:
            yield peers, conns
        finally:
            nursery.cancel_scope.cancel()
            for peer in peers:
                with trio.CancelScope(shield=True):
                    await peer.stream.aclose()
