"""One 9P connection shared by many tasks: tags, fids, a reader task, a send lock, Tflush.

Each request gets a free tag and a ``_Pending`` slot; one reader task decodes replies
and hands each to the slot its tag names. Writes go through one lock and a shielded
scope, so frames never interleave and a cancelled task never cuts one in half.

Cancelling a task that waits for a reply sends ``Tflush(oldtag)`` and waits (shielded,
at most ``flush_timeout`` seconds) for ``Rflush`` before the tag is reused, as 9P
requires. A reply to the flushed request may still arrive first: it is dropped, but
its side effect is honoured -- a fid the request brought to life (Tattach, Twalk,
Txattrwalk) is clunked in the background so neither side leaks it.

Anything that breaks the connection (EOF, a malformed frame, a reply nobody asked
for) fails every waiting request and every later one with ``ConnectionLost``, whose
``__cause__`` says what happened, and closes the stream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..protocol.codec import FrameReader, ProtocolError, decode, encode
from ..protocol.constants import NOFID, NOTAG
from ..protocol.messages import (
    MESSAGE_CLASSES,
    Message,
    Rerror,
    Rflush,
    Rlerror,
    Rread,
    Rreaddir,
    Rwalk,
    Rwrite,
    Tclunk,
    Tflush,
    Twalk,
)
from .errors import ConnectionLost, error_from_reply

RECEIVE_CHUNK = 256 * 1024
JOIN_BELOW = 64 * 1024  # smaller Twrite payloads are copied behind their header: one send


def reply_class(request_cls: type[Message]) -> type[Message]:
    """The R-message class that answers ``request_cls`` (its type byte plus one)."""
    return MESSAGE_CLASSES[request_cls.TYPE + 1]


def _reply_problem(request: Message, reply: Message) -> str | None:
    """What is wrong with a well-formed ``reply`` given its ``request``, if anything."""
    if isinstance(reply, Rread) and len(reply.data) > request.count:  # type: ignore[attr-defined]
        return f"{len(reply.data)} bytes for a Tread of {request.count}"  # type: ignore[attr-defined]
    if isinstance(reply, Rreaddir) and len(reply.data) > request.count:  # type: ignore[attr-defined]
        return f"{len(reply.data)} bytes for a Treaddir of {request.count}"  # type: ignore[attr-defined]
    if isinstance(reply, Rwrite) and reply.count > len(request.data):  # type: ignore[attr-defined]
        return f"count {reply.count} for a Twrite of {len(request.data)}"  # type: ignore[attr-defined]
    if isinstance(reply, Rwalk) and len(reply.qids) > len(request.wnames):  # type: ignore[attr-defined]
        return f"{len(reply.qids)} qids for {len(request.wnames)} names"  # type: ignore[attr-defined]
    return None


class FidPool:
    """Hands out fids, smallest free first, and refuses to free one twice."""

    def __init__(self) -> None:
        self._next = 0
        self._free: list[int] = []
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        if self._free:
            fid = heapq.heappop(self._free)
        else:
            if self._next >= NOFID:
                raise RuntimeError("out of fids")
            fid = self._next
            self._next += 1
        self._in_use.add(fid)
        return fid

    def release(self, fid: int) -> None:
        if fid not in self._in_use:
            raise ValueError(f"fid {fid} is not allocated")
        self._in_use.remove(fid)
        heapq.heappush(self._free, fid)

    def __contains__(self, fid: int) -> bool:
        return fid in self._in_use

    def __len__(self) -> int:
        return len(self._in_use)


@dataclass(eq=False, slots=True)
class _Pending:
    """One tag's request, waiting for its reply."""

    request: Message
    creates_fid: int | None = None  # the fid this request brings to life if it succeeds
    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None
    sent: bool = False
    cancelled: bool = False  # the caller gave up; whoever learns the outcome settles creates_fid
    settled: bool = False
    frees_tag: int | None = None  # an abandoned Tflush: its late Rflush frees this old tag too


class Multiplexer:
    """Tags, fids and the reader task for one connection (``Client`` adds operations)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        msize: int,
        max_in_flight: int = 64,
        flush_timeout: float = 5.0,
        trace: Callable[[str], object] | None = None,
    ) -> None:
        if not 1 <= max_in_flight < NOTAG // 2:  # leave tags over for the Tflushes
            raise ValueError("max_in_flight must be between 1 and 32766")
        self.msize = msize
        self.flush_timeout = flush_timeout
        self.trace = trace  # called with "-> Tmessage(...)" / "<- Rmessage(...)" lines
        self.fids = FidPool()
        self._stream = stream
        self._frames = FrameReader(msize)
        self._send_lock = trio.Lock()
        self._request_slots = trio.Semaphore(max_in_flight)
        self._pending: dict[int, _Pending] = {}
        self._next_tag = 0
        self._failure: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        self._reader_scope = trio.CancelScope(shield=True)
        self._closing = False
        self._quiet = trio.Event()  # set when closing and nothing is in flight
        self.requests_sent = 0  # counters for tests and benchmarks (Tflush included)
        self.flushes_sent = 0

    # --- lifecycle -------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        """Start the reader task; background clunks also run in ``nursery``."""
        self._nursery = nursery
        nursery.start_soon(self._read_replies)

    @property
    def closed(self) -> bool:
        return self._failure is not None

    @property
    def in_flight(self) -> int:
        """Tags in use, including tags kept after a Tflush that was never answered."""
        return len(self._pending)

    async def aclose(self) -> None:
        """Let requests in flight finish (at most ``flush_timeout`` seconds), then hang up.

        Waiting matters: diod 1.0.24 crashes when a client disconnects with two or
        more requests in flight (for instance background clunks of orphaned fids).
        """
        self._closing = True
        if not self._pending:
            self._quiet.set()
        with trio.move_on_after(self.flush_timeout, shield=True):
            await self._quiet.wait()
        self._fail(ConnectionLost("the client closed the connection"))
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)
        self._reader_scope.cancel()  # in case the stream's close did not wake it

    def _fail(self, cause: BaseException) -> None:
        """Remember why the connection ended and wake every waiting request."""
        if self._failure is not None:
            return
        self._failure = cause
        for pending in self._pending.values():
            pending.done.set()
        self._quiet.set()

    async def abort(self, cause: BaseException) -> None:
        """End the connection because of ``cause`` (a reply that broke the protocol in a
        way only its reader could see): every request fails with ConnectionLost."""
        self._fail(cause)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)

    def raise_if_closed(self) -> None:
        if self._failure is not None:
            raise ConnectionLost(f"connection lost: {self._failure}") from self._failure

    def agree_msize(self, msize: int) -> None:
        """Use the msize Tversion agreed on: for request sizes and to bound replies."""
        self.msize = msize
        self._frames.msize = msize

    # --- reading ---------------------------------------------------------------------
    async def _read_replies(self) -> None:
        # Shielded: when the caller's scope is cancelled, cancelled requests still need
        # their Rflush read. The reader stops when the stream is closed (aclose, _fail).
        with self._reader_scope:
            await self._read_until_closed()

    async def _read_until_closed(self) -> None:
        try:
            while True:
                frame = self._frames.next_frame()
                if frame is None:
                    data = await self._stream.receive_some(RECEIVE_CHUNK)
                    if not data:
                        raise ConnectionLost("the server closed the connection")
                    self._frames.feed(data)
                    continue
                reply = decode(frame)
                if self.trace is not None:
                    self.trace(f"<- {reply}")
                self._dispatch(reply)
        except trio.ClosedResourceError:
            self._fail(ConnectionLost("the connection was closed"))
        except (ProtocolError, ConnectionLost, trio.BrokenResourceError, OSError) as exc:
            self._fail(exc)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)

    def _dispatch(self, reply: Message) -> None:
        pending = self._pending.get(reply.tag)
        if pending is None or pending.reply is not None:
            raise ProtocolError(
                f"server sent {type(reply).__name__} for tag {reply.tag}, "
                "which has no request waiting"
            )
        expected = reply_class(type(pending.request))
        if not isinstance(reply, (expected, Rlerror, Rerror)):
            raise ProtocolError(
                f"server answered {type(pending.request).__name__} "
                f"with {type(reply).__name__} (tag {reply.tag})"
            )
        problem = _reply_problem(pending.request, reply)
        if problem:
            raise ProtocolError(f"{type(reply).__name__} (tag {reply.tag}): {problem}")
        pending.reply = reply
        pending.done.set()
        if pending.cancelled:
            self._settle_fid(pending)
        if pending.frees_tag is not None:  # a Tflush we stopped waiting for is answered
            self._forget_tag(reply.tag)
            old = self._pending.get(pending.frees_tag)
            if old is not None:
                self._settle_fid(old)
                self._forget_tag(pending.frees_tag)

    # --- writing ---------------------------------------------------------------------
    async def _send(self, pending: _Pending) -> None:
        buffers = encode(pending.request)
        size = sum(len(buffer) for buffer in buffers)
        if size > self.msize:
            raise ValueError(f"{type(pending.request).__name__} of {size} bytes exceeds "
                             f"msize {self.msize}")
        if len(buffers) > 1 and len(buffers[-1]) < JOIN_BELOW:
            buffers = [b"".join(buffers)]
        async with self._send_lock:
            self.raise_if_closed()
            with trio.CancelScope(shield=True):
                try:
                    for buffer in buffers:
                        await self._stream.send_all(buffer)
                    self.requests_sent += 1
                    if self.trace is not None:
                        self.trace(f"-> {pending.request}")
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._fail(exc)
                    await trio.aclose_forcefully(self._stream)
                    self.raise_if_closed()
            pending.sent = True

    # --- tags ------------------------------------------------------------------------
    def _allocate_tag(self) -> int:
        for _ in range(NOTAG):
            tag = self._next_tag
            self._next_tag = (tag + 1) % NOTAG
            if tag not in self._pending:
                return tag
        raise RuntimeError("all 65535 tags are in use")

    def _forget_tag(self, tag: int) -> None:
        del self._pending[tag]
        if self._closing and not self._pending:
            self._quiet.set()

    # --- requests --------------------------------------------------------------------
    async def rpc(self, request_cls: type[Message], /, *, creates_fid: int | None = None,
                  **fields: object) -> Message:
        """Send one request, wait for its reply and return it.

        Rlerror/Rerror raise ``OSError``. ``creates_fid`` names a fid the request brings to
        life on success: the caller owns it only if this returns a reply that made it;
        otherwise it is back in the pool, or being clunked for a cancelled caller.
        """
        try:
            self.raise_if_closed()
            await self._request_slots.acquire()
        except BaseException:  # cancelled or closed before the request existed
            if creates_fid is not None:
                self.fids.release(creates_fid)
            raise
        try:
            return await self._exchange(request_cls, self._allocate_tag(), creates_fid, fields)
        finally:
            self._request_slots.release()

    async def rpc_notag(self, request_cls: type[Message], /, **fields: object) -> Message:
        """Send a request with NOTAG (only Tversion): nothing else may be in flight."""
        self.raise_if_closed()
        if self._pending:
            raise RuntimeError(f"{request_cls.__name__} needs a connection with no requests in flight")
        return await self._exchange(request_cls, NOTAG, None, fields)

    async def _exchange(self, request_cls: type[Message], tag: int, creates_fid: int | None,
                        fields: dict[str, object]) -> Message:
        pending = _Pending(request=request_cls(tag, **fields), creates_fid=creates_fid)
        self._pending[tag] = pending
        tag_reusable = True
        try:
            await self._send(pending)
            await pending.done.wait()
        except trio.Cancelled:
            pending.cancelled = True
            if pending.sent and pending.reply is None and self._failure is None:
                tag_reusable = await self._flush_cancelled(tag)
            if tag_reusable or pending.reply is not None:
                self._settle_fid(pending)
            raise
        except BaseException:
            pending.cancelled = True
            self._settle_fid(pending)
            raise
        finally:
            if tag_reusable:
                self._forget_tag(tag)
        self._settle_fid(pending)
        reply = pending.reply
        if reply is None:
            self.raise_if_closed()
            raise AssertionError("a request woke up with neither reply nor failure")
        if isinstance(reply, (Rlerror, Rerror)):
            raise error_from_reply(reply)
        return reply

    async def _flush_cancelled(self, oldtag: int) -> bool:
        """Tflush a request whose caller was cancelled. True once ``oldtag`` is free.

        Runs shielded: the caller is already cancelled. If no Rflush comes within
        ``flush_timeout`` both tags stay reserved until it does (9P forbids reusing
        ``oldtag`` before then), and False is returned.
        """
        tag = self._allocate_tag()
        pending = _Pending(request=Tflush(tag, oldtag))
        self._pending[tag] = pending
        self.flushes_sent += 1
        with trio.move_on_after(self.flush_timeout, shield=True):
            try:
                await self._send(pending)
                await pending.done.wait()
            except ConnectionLost:
                pass
            self._forget_tag(tag)
            return True
        pending.frees_tag = oldtag
        return False

    def _settle_fid(self, pending: _Pending) -> None:
        """Decide the fate of the fid a request would bring to life (``creates_fid``).

        Made, and the caller still waits: the caller owns it. Not made (error reply,
        short walk, flushed, connection lost): back to the pool. Made, but the caller
        was cancelled: nobody owns it, so clunk it in the background.
        """
        if pending.settled or pending.creates_fid is None:
            return
        reply, fid = pending.reply, pending.creates_fid
        created = reply is not None and not isinstance(reply, (Rlerror, Rerror))
        if created and isinstance(pending.request, Twalk):
            created = len(reply.qids) == len(pending.request.wnames)  # type: ignore[attr-defined]
        if created and not pending.cancelled:
            return  # the caller takes it; it will settle nothing more
        pending.settled = True
        if created and self._nursery is not None and not self._closing and not self.closed:
            self._nursery.start_soon(self._clunk_quietly, fid)
        else:
            self.fids.release(fid)

    async def _clunk_quietly(self, fid: int) -> None:
        try:
            await self.rpc(Tclunk, fid=fid)
        except (OSError, ConnectionLost):
            pass  # a fid is gone after Tclunk whatever the reply says
        finally:
            self.fids.release(fid)

    async def flush(self, oldtag: int) -> None:
        """Tflush: ask the server to abandon the request with ``oldtag``; wait for Rflush.

        Cancellation already flushes; this is for callers that manage tags themselves.
        """
        reply = await self.rpc(Tflush, oldtag=oldtag)
        assert isinstance(reply, Rflush)
