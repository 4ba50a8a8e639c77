"""Leaf nodes: static, generated, control and streaming files, symlinks, device nodes.

Each file kind differs only in how an open (a ``Handle``) reads and writes:

* ``StaticFile(b"...")``: fixed bytes; qid.version 0 until the program replaces them.
* ``GeneratedFile(fn)``: ``fn()`` / ``fn(ctx)`` (sync or async) makes the content. By
  default the content is snapshotted when the file is opened, so reads at increasing
  offsets see one consistent text; ``refresh="read"`` regenerates on every read at
  offset 0 instead (a reader that re-reads from the start sees fresh content).
* ``ControlFile(on_write=fn)``: every write calls ``fn(data)`` / ``fn(data, ctx)``;
  what it returns (if anything) is what this open then reads, as with Plan 9's
  ``clone``/query files. ``on_read`` optionally gives a status text to read.
* ``StreamFile(source)``: reads block until data arrives. ``source`` is a ``Feed`` (the
  program publishes, every open gets its own subscription) or an async function
  called for each read (``await trio.sleep(1); return "tick\\n"``). Returning ``None``
  or ``b""`` / closing the feed is end of file. Reads are cancelled by Tflush.
"""

from __future__ import annotations

import errno
import stat
from collections import deque
from typing import Any, Awaitable, Callable, Literal

import trio

from ..backend import errno_error
from .node import Handle, Node, OpenContext, as_bytes, callback, now_ns

ContentFunction = Callable[..., Any]


class _BytesHandle(Handle):
    """Reads slice a snapshot held by this open."""

    def __init__(self, ctx: OpenContext, content: bytes = b""):
        super().__init__(ctx)
        self.content = content

    async def read(self, offset: int, count: int) -> bytes | memoryview:
        # A view, not a slice: the codec sends it without copying (content is immutable).
        return memoryview(self.content)[offset:offset + count]


class StaticFile(Node):
    """Fixed content. Assigning ``.data`` replaces it and bumps qid.version."""

    def __init__(self, data: bytes | str = b"", **meta: Any):
        super().__init__(**meta)
        self._data = as_bytes(data)
        self._version = 0

    @property
    def data(self) -> bytes:
        return self._data

    @data.setter
    def data(self, value: bytes | str) -> None:
        self._data = as_bytes(value)
        self._version += 1
        self.touch()

    @property
    def version(self) -> int:
        return self._version

    def size(self) -> int:
        return len(self._data)

    async def make_handle(self, ctx: OpenContext) -> Handle:
        # The snapshot is the bytes object itself (immutable), so a concurrent
        # replacement does not tear a reader's view.
        return _BytesHandle(ctx, self._data)


class GeneratedFile(Node):
    """Content made by a function, snapshotted per open (or per read pass)."""

    def __init__(self, generate: ContentFunction, *,
                 refresh: Literal["open", "read"] = "open", **meta: Any):
        super().__init__(**meta)
        if refresh not in ("open", "read"):
            raise ValueError("refresh must be 'open' or 'read'")
        self._generate = callback(generate, 0)
        self.refresh = refresh
        self._generation = 0

    @property
    def version(self) -> int:
        # Changes every time content is produced: a cached copy is never current.
        return self._generation

    async def generate(self, ctx: OpenContext) -> bytes:
        self._generation += 1
        self.atime_ns = now_ns()
        return as_bytes(await self._generate(ctx))

    async def make_handle(self, ctx: OpenContext) -> Handle:
        if self.refresh == "open":
            return _BytesHandle(ctx, await self.generate(ctx))
        return _RegeneratingHandle(ctx, self)


class _RegeneratingHandle(_BytesHandle):
    def __init__(self, ctx: OpenContext, node: GeneratedFile):
        super().__init__(ctx)
        self.node = node

    async def read(self, offset: int, count: int) -> bytes:
        if offset == 0:
            self.content = await self.node.generate(self.ctx)
        return await super().read(offset, count)


class ControlFile(Node):
    """Writes are commands: each one calls ``on_write``. Opening for reading is
    allowed when ``on_read`` is given (a status text, snapshotted at open)."""

    DEFAULT_MODE = 0o644
    writable = True

    def __init__(self, on_write: ContentFunction, on_read: ContentFunction | None = None,
                 **meta: Any):
        if on_read is None and "mode" not in meta:
            meta["mode"] = 0o200
        super().__init__(**meta)
        self._on_write = callback(on_write, 1)
        self._on_read = callback(on_read, 0) if on_read is not None else None
        self.readable = on_read is not None
        self._writes = 0

    @property
    def version(self) -> int:
        return self._writes

    async def make_handle(self, ctx: OpenContext) -> Handle:
        status = as_bytes(await self._on_read(ctx)) if self._on_read and ctx.reading else b""
        return _ControlHandle(ctx, self, status)


class _ControlHandle(_BytesHandle):
    def __init__(self, ctx: OpenContext, node: ControlFile, status: bytes):
        super().__init__(ctx, status)
        self.node = node

    async def write(self, offset: int, data: memoryview) -> int:
        payload = bytes(data)
        try:
            reply = await self.node._on_write(payload, self.ctx)
        except ValueError as error:  # "bad command": the handler's way of saying EINVAL
            raise errno_error(errno.EINVAL, str(error)) from error
        self.node._writes += 1
        self.node.touch()
        if reply is not None:
            self.content = as_bytes(reply)
        return len(payload)


class Feed:
    """A broadcast of byte chunks to every open of the ``StreamFile``s built on it.

    ``publish`` never blocks the producer: a subscriber whose ``backlog`` is full
    misses the chunk (counted in ``dropped``), as a slow ``tail -f`` reader of a
    ring buffer would. New subscribers first receive the last ``history`` chunks.
    ``close()`` ends every subscriber's stream (readers see end of file).
    """

    def __init__(self, *, backlog: int = 256, history: int = 0):
        self.backlog = backlog
        self._history: deque[bytes] = deque(maxlen=history)
        # each subscriber's receiving end -> the sending end publish() writes to
        self._subscribers: dict[trio.MemoryReceiveChannel[bytes], trio.MemorySendChannel[bytes]] = {}
        self.closed = False
        self.published = 0
        self.dropped = 0

    def publish(self, data: bytes | str) -> None:
        if self.closed:
            raise trio.ClosedResourceError("feed is closed")
        chunk = as_bytes(data)
        if not chunk:
            return  # an empty chunk would read as end of file
        self.published += 1
        self._history.append(chunk)
        for channel in self._subscribers.values():
            try:
                channel.send_nowait(chunk)
            except trio.WouldBlock:
                self.dropped += 1

    def close(self) -> None:
        self.closed = True
        for channel in self._subscribers.values():
            channel.close()
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> trio.MemoryReceiveChannel[bytes]:
        send, receive = trio.open_memory_channel[bytes](max(self.backlog, len(self._history)))
        for chunk in self._history:
            send.send_nowait(chunk)
        if self.closed:
            send.close()
        else:
            self._subscribers[receive] = send
        return receive

    def unsubscribe(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        send = self._subscribers.pop(receive, None)
        if send is not None:
            send.close()
        receive.close()


class StreamFile(Node):
    """Reads block until data arrives; offsets are ignored (it is a stream)."""

    def __init__(self, source: Feed | Callable[..., Awaitable[Any]], **meta: Any):
        super().__init__(**meta)
        self.feed = source if isinstance(source, Feed) else None
        self._next = None if self.feed else callback(source, 0)
        self._opens = 0

    @property
    def version(self) -> int:
        return self._opens

    async def make_handle(self, ctx: OpenContext) -> Handle:
        self._opens += 1
        return _StreamHandle(ctx, self)


class _StreamHandle(Handle):
    def __init__(self, ctx: OpenContext, node: StreamFile):
        super().__init__(ctx)
        self.node = node
        self.channel = node.feed.subscribe() if node.feed else None
        self.pending = b""  # the unread tail of a chunk larger than a read's count
        self.at_eof = False
        self.last_short_read: tuple[int, int, int] | None = None  # offset, count, returned
        # Two reads of one open must not interleave halves of chunks.
        self.lock = trio.Lock()

    async def _next_chunk(self) -> bytes:
        if self.channel is not None:
            try:
                return await self.channel.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        return as_bytes(await self.node._next(self.ctx))

    def _continues_short_read(self, offset: int, count: int) -> bool:
        """Whether this Tread is Linux's v9fs asking for the rest of one read(2).

        The kernel (p9_client_read) keeps sending Treads until the caller's buffer is
        full or a read returns 0, so ``cat`` on a stream would block until 128 KiB had
        arrived. Its follow-up Tread has a signature: the offset right after the short
        read and the count it left over. Answering that one with 0 ends the read(2)
        with the chunk; the next read(2) comes with the whole buffer's count and
        blocks for new data as it should. Clients that send one Tread per read call
        (ours, Plan 9, Linux with O_NONBLOCK) never produce that signature."""
        last, self.last_short_read = self.last_short_read, None
        if last is None or self.pending:
            return False
        last_offset, last_count, returned = last
        return offset == last_offset + returned and count == last_count - returned

    async def read(self, offset: int, count: int) -> bytes:
        async with self.lock:
            if self._continues_short_read(offset, count):
                return b""
            while not self.pending and not self.at_eof:
                # Cancellation (Tflush, disconnect) lands here and loses nothing:
                # a memory channel's receive either returns an item or is cancelled.
                chunk = await self._next_chunk()
                if not chunk:
                    self.at_eof = True
                self.pending = chunk
            data, self.pending = self.pending[:count], self.pending[count:]
            self.node.atime_ns = now_ns()
            if 0 < len(data) < count:
                self.last_short_read = (offset, count, len(data))
            return data

    async def close(self) -> None:
        if self.channel is not None:
            self.node.feed.unsubscribe(self.channel)  # type: ignore[union-attr]


class Symlink(Node):
    FILE_TYPE = stat.S_IFLNK
    DEFAULT_MODE = 0o777
    readable = False

    def __init__(self, target: str, **meta: Any):
        super().__init__(**meta)
        self.target = target

    def size(self) -> int:
        return len(self.target.encode())

    async def readlink(self) -> str:
        return self.target

    async def open(self, ctx: OpenContext) -> Handle:
        raise errno_error(errno.ELOOP, "symlinks are resolved by the client")


class SpecialFile(Node):
    """A device node, FIFO or socket as a directory entry (a root filesystem has
    /dev/null...). The client's kernel implements them; the server never opens them."""

    DEFAULT_MODE = 0o644

    def __init__(self, file_type: int, rdev: int = 0, **meta: Any):
        if file_type not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise ValueError("SpecialFile is for character/block devices, FIFOs and sockets")
        super().__init__(**meta)
        self.FILE_TYPE = file_type  # type: ignore[misc]  # per instance: one class for four kinds
        self._rdev = rdev

    def rdev(self) -> int:
        return self._rdev

    async def open(self, ctx: OpenContext) -> Handle:
        raise errno_error(errno.ENXIO, "special files are opened by the client")
