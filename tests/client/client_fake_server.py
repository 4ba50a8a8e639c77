"""A small, scriptable 9P2000.L server for the client's tests.

It speaks through the real codec over any trio Stream and serves a tree of dicts
(directories) and bytearrays (files). Every request runs in its own task and cancel
scope, so replies can come out of order and Tflush really cancels. Tests steer it by
replacing entries of ``handlers`` (type -> async function returning a reply or None),
setting the knobs below, or writing raw bytes with ``send_raw``.
"""

from __future__ import annotations

import errno
import os
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

import trio
import trio.testing

from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes, pack_dirents
from ninep.client import Client, open_client
from ninep.protocol.constants import DirentType, QidType

Handler = Callable[[m.Message], Awaitable["m.Message | None"]]


def error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FakeServer:
    def __init__(self, stream: trio.abc.Stream, *, msize: int = 8192, iounit: int = 0) -> None:
        self.stream = stream
        self.msize = msize
        self.iounit = iounit
        self.version = "9P2000.L"
        self.tree: dict = {}
        self.fids: dict[int, tuple[str, ...]] = {}
        self.received: list[m.Message] = []
        self.max_in_flight = 0
        self.supports_unlinkat = True
        self.supports_renameat = True
        self.flush_answers_original_first = False
        self.closed_by_peer = trio.Event()
        self.after_receive: Callable[[int], Awaitable[None]] | None = None
        self._in_flight: dict[int, trio.CancelScope] = {}
        self._send_lock = trio.Lock()
        self.handlers: dict[type, Handler] = {
            cls: getattr(self, "on_" + cls.__name__[1:].lower())
            for cls in (m.Tversion, m.Tattach, m.Twalk, m.Tclunk, m.Tlopen, m.Tlcreate, m.Tread,
                        m.Twrite, m.Treaddir, m.Tgetattr, m.Tremove, m.Tunlinkat, m.Trenameat,
                        m.Trename, m.Tmkdir)
        }

    # --- plumbing ------------------------------------------------------------------------
    async def serve(self) -> None:
        frames = FrameReader(1 << 20)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.closed_by_peer.set()
                    nursery.cancel_scope.cancel()
                    return
                frames.feed(data)
                if self.after_receive is not None:
                    await self.after_receive(frames.buffered)
                for frame in frames:
                    request = decode(frame)
                    self.received.append(request)
                    if isinstance(request, m.Tflush):
                        nursery.start_soon(self._flush, request)
                    else:
                        scope = trio.CancelScope()
                        self._in_flight[request.tag] = scope
                        self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
                        nursery.start_soon(self._run, request, scope)

    async def _run(self, request: m.Message, scope: trio.CancelScope) -> None:
        reply = None
        with scope:
            try:
                reply = await self.handlers[type(request)](request)
            except OSError as exc:
                reply = m.Rlerror(request.tag, exc.errno)
        self._in_flight.pop(request.tag, None)
        if reply is not None and not scope.cancelled_caught:
            await self.send(reply)

    async def _flush(self, request: m.Tflush) -> None:
        scope = self._in_flight.get(request.oldtag)
        if scope is not None and not self.flush_answers_original_first:
            scope.cancel()
        while request.oldtag in self._in_flight:
            await trio.sleep(0.001)
        handler = self.handlers.get(m.Tflush)
        if handler is not None:
            reply = await handler(request)
            if reply is None:
                return
        await self.send(m.Rflush(request.tag))

    async def send(self, reply: m.Message) -> None:
        await self.send_raw(encode_bytes(reply))

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def requests(self, cls: type) -> list:
        return [r for r in self.received if isinstance(r, cls)]

    # --- the tree ------------------------------------------------------------------------
    def lookup(self, path: tuple[str, ...]):
        node = self.tree
        for name in path:
            if not isinstance(node, dict) or name not in node:
                raise error(errno.ENOENT)
            node = node[name]
        return node

    def qid(self, path: tuple[str, ...]) -> m.Qid:
        node = self.lookup(path)
        kind = QidType.DIR if isinstance(node, dict) else QidType.FILE
        return m.Qid(int(kind), 0, hash(path) & 0xFFFFFFFF)

    def path_of(self, fid: int) -> tuple[str, ...]:
        if fid not in self.fids:
            raise error(errno.EBADF)
        return self.fids[fid]

    # --- handlers ------------------------------------------------------------------------
    async def on_version(self, r: m.Tversion):
        return m.Rversion(r.tag, min(r.msize, self.msize), self.version)

    async def on_attach(self, r: m.Tattach):
        self.fids[r.fid] = ()
        return m.Rattach(r.tag, self.qid(()))

    async def on_walk(self, r: m.Twalk):
        path = self.path_of(r.fid)
        qids = []
        for name in r.wnames:
            try:
                path = path[:-1] if name == ".." else path + (name,)
                qids.append(self.qid(path))
            except OSError:
                if not qids:
                    raise
                return m.Rwalk(r.tag, tuple(qids))
        self.fids[r.newfid] = path
        return m.Rwalk(r.tag, tuple(qids))

    async def on_clunk(self, r: m.Tclunk):
        self.path_of(r.fid)
        del self.fids[r.fid]
        return m.Rclunk(r.tag)

    async def on_lopen(self, r: m.Tlopen):
        return m.Rlopen(r.tag, self.qid(self.path_of(r.fid)), self.iounit)

    async def on_lcreate(self, r: m.Tlcreate):
        path = self.path_of(r.fid) + (r.name,)
        self.lookup(path[:-1])[r.name] = bytearray()
        self.fids[r.fid] = path
        return m.Rlcreate(r.tag, self.qid(path), self.iounit)

    async def on_read(self, r: m.Tread):
        data = self.lookup(self.path_of(r.fid))
        return m.Rread(r.tag, bytes(data[r.offset:r.offset + r.count]))

    async def on_write(self, r: m.Twrite):
        data = self.lookup(self.path_of(r.fid))
        if r.offset > len(data):
            data.extend(bytes(r.offset - len(data)))  # a hole reads as zeros
        data[r.offset:r.offset + len(r.data)] = r.data
        return m.Rwrite(r.tag, len(r.data))

    async def on_readdir(self, r: m.Treaddir):
        directory = self.lookup(self.path_of(r.fid))
        entries = [
            m.Dirent(self.qid(self.path_of(r.fid) + (name,)), index + 1,
                     DirentType.DIR if isinstance(node, dict) else DirentType.REG, name)
            for index, (name, node) in enumerate(directory.items())
        ][r.offset:]
        data, _ = pack_dirents(entries, r.count)
        return m.Rreaddir(r.tag, data)

    async def on_getattr(self, r: m.Tgetattr):
        path = self.path_of(r.fid)
        node = self.lookup(path)
        size = 0 if isinstance(node, dict) else len(node)
        return m.Rgetattr(r.tag, r.request_mask, self.qid(path), 0o644, 0, 0, 1, 0, size,
                          4096, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    async def on_remove(self, r: m.Tremove):
        path = self.path_of(r.fid)
        del self.fids[r.fid]
        del self.lookup(path[:-1])[path[-1]]
        return m.Rremove(r.tag)

    async def on_unlinkat(self, r: m.Tunlinkat):
        if not self.supports_unlinkat:
            raise error(errno.EOPNOTSUPP)
        del self.lookup(self.path_of(r.dirfid))[r.name]
        return m.Runlinkat(r.tag)

    async def on_renameat(self, r: m.Trenameat):
        if not self.supports_renameat:
            raise error(errno.ENOSYS)
        old_dir = self.lookup(self.path_of(r.olddirfid))
        self.lookup(self.path_of(r.newdirfid))[r.newname] = old_dir.pop(r.oldname)
        return m.Rrenameat(r.tag)

    async def on_rename(self, r: m.Trename):
        path = self.path_of(r.fid)
        node = self.lookup(path[:-1]).pop(path[-1])
        self.lookup(self.path_of(r.dfid))[r.name] = node
        return m.Rrename(r.tag)

    async def on_mkdir(self, r: m.Tmkdir):
        path = self.path_of(r.dfid) + (r.name,)
        self.lookup(path[:-1])[r.name] = {}
        return m.Rmkdir(r.tag, self.qid(path))


@asynccontextmanager
async def served(*, msize: int = 8192, iounit: int = 0, tree: dict | None = None,
                 setup: Callable[[FakeServer], None] | None = None, **client_options):
    """A FakeServer and a Client joined by an in-memory stream: yields (server, client)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream, msize=msize, iounit=iounit)
    server.tree = tree if tree is not None else {}
    if setup is not None:
        setup(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        client_options.setdefault("msize", msize)
        async with open_client(client_stream, **client_options) as client:
            yield server, client
        nursery.cancel_scope.cancel()


__all__ = ["Client", "FakeServer", "served"]
