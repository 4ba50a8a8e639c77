"""One client connection on trio: a reader, a task + CancelScope per tag, one writer.

* The reader decodes frames and hands each request to a task of the connection's
  request nursery -- a parked one that finished an earlier request, else a new one --
  where it runs inside a ``CancelScope`` registered under its tag, so Tflush is a
  cancellation and a slow request never holds up the others (see ``_Worker``).
* Request tasks never touch the stream: they queue their encoded reply. The single
  writer task takes everything queued and sends it in one scatter-gather ``sendmsg``
  (``encode()``'s buffer lists, payloads uncopied). Since only the writer writes, and it
  is cancelled only when the connection is being torn down, a frame is never cut.
* Backpressure: when ``max_in_flight`` tags are running or ``max_buffered`` reply bytes
  are queued (a client that stopped reading), the reader stops reading that client.
  Other connections are unaffected: each has its own tasks and buffers.
* Tflush: the flushed request's scope is cancelled and Rflush is queued only when that
  request has finished. If it completed anyway (the backend call was already done),
  its reply is queued *first* and Rflush after it -- the client then learns the effect
  of an operation that did happen (a created file, a new fid). If it was cancelled, it
  gets no reply at all.
* A request whose body is malformed inside an intact frame gets Rlerror (EILSEQ for
  a name that is not UTF-8, else EINVAL) and the connection goes on; broken framing
  (a size field out of range, no tag to answer) ends it. One log line either way.
* Disconnect cancels what is in flight, closes every fid and drops the connection's
  locks.
"""

from __future__ import annotations

import errno
import itertools
import logging
import sys
from typing import Hashable, Mapping

import outcome
import trio

from ..protocol import messages as m
from ..protocol.codec import FrameReader, ProtocolError, decode, encode, pack_dirents
from ..protocol.constants import HEADER_SIZE, Errno, host_errno_to_wire
from ..protocol.errors import NOT_UTF8
from .dispatch import Dispatcher
from .locks import LockTable
from .ratelimit import LogLimiter
from .session import Export, Limits, Session
from .trace import describe

log = logging.getLogger("ninep.server")
trace_log = logging.getLogger("ninep.trace")

_IOV_MAX = 1024  # Linux UIO_MAXIOV: buffers per sendmsg
_RECEIVE_SIZE = 256 * 1024
_PEEK_SIZE = 4096
_DRAIN_SECONDS = 5.0  # how long a closing connection may take to send what is queued
_connection_numbers = itertools.count(1)


class LockManager:
    """The server-wide lock table plus the trio side of waiting on it."""

    def __init__(self, table: LockTable | None = None) -> None:
        self.table = table if table is not None else LockTable()
        self._released: dict[Hashable, trio.Event] = {}

    def connection_id(self, number: int) -> Hashable:
        """How lock owners name connection ``number`` of this process."""
        return ("connection", number)

    async def wait_for_release(self, key: Hashable) -> None:
        event = self._released.get(key)
        if event is None:
            event = self._released[key] = trio.Event()
        await event.wait()

    def released(self, keys: set[Hashable]) -> None:
        for key in keys:
            event = self._released.pop(key, None)
            if event is not None:
                event.set()


# Requests answered in the reader task itself (no worker task, one task switch fewer:
# +15-35% single-client getattr) when nothing else of the connection is in flight and
# the fid's filesystem is ``prompt``; the value names the field holding that fid. The
# reader cannot read while it runs one, so nothing that may wait for another client
# goes here: not Tlock (a blocking one is ended by a Tflush the reader must read), not
# Tfsync, Tflush, Tversion or Tattach.
_INLINE_FID_FIELD = {
    m.Tgetattr: "fid", m.Twalk: "fid", m.Tclunk: "fid", m.Tlopen: "fid", m.Tread: "fid",
    m.Twrite: "fid", m.Treaddir: "fid", m.Tstatfs: "fid", m.Treadlink: "fid",
    m.Txattrwalk: "fid", m.Txattrcreate: "fid", m.Tlcreate: "fid", m.Tsetattr: "fid",
    m.Tunlinkat: "dirfid", m.Tmkdir: "dfid", m.Tsymlink: "fid", m.Trenameat: "olddirfid",
    m.Tremove: "fid", m.Tlink: "dfid", m.Tmknod: "dfid", m.Trename: "fid",
    m.Tgetlock: "fid",
}


class _Request:
    __slots__ = ("tag", "scope", "_done", "finished", "reply_bytes")

    def __init__(self, tag: int, reply_bytes: int = 0) -> None:
        self.tag = tag
        self.scope: trio.CancelScope | None = None  # cancelling it cancels this request
        self._done: trio.Event | None = None  # made only for a Tflush/Tversion to wait on
        self.finished = False
        self.reply_bytes = reply_bytes  # what its reply may add to the output buffer

    def finish(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()

    async def wait_finished(self) -> None:
        if not self.finished:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()


class _FramePool:
    """Buffers for frames bigger than the receive buffer (1 MiB Twrites), reused.

    A fresh 1 MiB bytearray is zero-filled (and often page-faulted in) for every
    such frame: ~10% of the server's time in 16-connection write runs. The frame's
    buffer becomes the Twrite's payload, which a backend may keep, so a buffer is
    handed out again only when nothing refers to it any more: no message, no
    memoryview of it (each view's buffer export holds a reference to it), which
    CPython's reference count says exactly.
    """

    __slots__ = ("_buffers",)
    KEEP = 4  # buffers kept per connection
    _FREE = 3  # references to a free buffer: our list, the loop variable, getrefcount's

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []

    def take(self, size: int, capacity: int) -> memoryview:
        for buffer in self._buffers:
            if len(buffer) >= size and sys.getrefcount(buffer) == self._FREE:
                return memoryview(buffer)
        buffer = bytearray(max(size, capacity))
        if len(self._buffers) < self.KEEP:
            self._buffers.append(buffer)
        return memoryview(buffer)


class _Worker:
    """A request task that outlives its request: handing the next request to a
    parked worker costs ~1.5 us where spawning a task and entering a fresh
    CancelScope costs ~12 us (trio 0.35 on these machines), and that is a quarter of
    a Tgetattr. Each request still runs alone in a CancelScope that a Tflush of its
    tag cancels; the worker enters a new scope only after one was cancelled."""

    __slots__ = ("task", "scope")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.scope = trio.CancelScope()


class Connection:
    """Serve 9P on one stream until the client goes, errs, or the server stops."""

    def __init__(self, stream: trio.abc.Stream, exports: Mapping[str, Export],
                 locks: LockManager, *, limits: Limits = Limits(), trace: bool = False,
                 name: str = "") -> None:
        self.stream = stream
        self.number = next(_connection_numbers)
        self.name = name or f"connection {self.number}"
        self.limits = limits
        self.trace = trace
        self.session = Session(exports, limits, connection_id=locks.connection_id(self.number))
        self.locks = locks
        self.dispatcher = Dispatcher(self.session, locks, pack_dirents)
        self._frames = FrameReader(limits.max_msize)
        self._big_frames = _FramePool()
        self._requests: dict[int, _Request] = {}
        self._idle_workers: list[_Worker] = []
        self._nursery: trio.Nursery | None = None
        self._read_scope = trio.CancelScope()
        self._out: list = []
        self._out_bytes = 0  # queued + being sent
        self._promised = 0  # bulk reply bytes of requests still running
        self._out_ready = trio.Event()
        self._room = trio.Event()
        self._closing = False
        self._socket = getattr(stream, "socket", None)  # trio.SocketStream: use sendmsg
        # The stdlib socket under trio's (non-blocking already) for the direct send.
        self._raw_socket = getattr(self._socket, "_sock", None)
        self._writer_busy = False
        self.requests_served = 0
        self.requests_inline = 0  # of those, answered in the reader (_INLINE_FID_FIELD)
        self._held: tuple | None = None  # (msg, request): a lone candidate for the reader
        self._log_limit = LogLimiter()  # a client must not write our log at line rate

    # --- lifetime ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._write_loop, outer.cancel_scope)
                try:
                    async with trio.open_nursery() as requests:
                        self._nursery = requests
                        with self._read_scope:
                            await self._read_loop()
                        if self._read_scope.cancelled_caught:
                            # Graceful stop: let what is in flight finish and be answered.
                            while self._requests:
                                self._room = trio.Event()
                                await self._room.wait()
                        # The client is gone, or all is answered: cancel the rest
                        # (requests in flight if the client left; parked workers).
                        requests.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._forget_everything()
                    self._closing = True
                    self._out_ready.set()
                    outer.cancel_scope.deadline = trio.current_time() + _DRAIN_SECONDS
        finally:
            for cause, count in self._log_limit.pending().items():
                log.warning("%s: %d more %ss, not logged", self.name, count, cause)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    def _warn(self, cause: str, text: str, *args) -> None:
        """log.warning for what a client causes: the first few of each cause verbatim,
        then one line a minute saying how many more there were."""
        write, dropped = self._log_limit.admit(cause, trio.current_time())
        if dropped:
            log.warning("%s: %d more %ss in the last minute, not logged",
                        self.name, dropped, cause)
        if write:
            log.warning("%s: " + text, self.name, *args)

    def stop_reading(self) -> None:
        """Graceful shutdown: read no more requests, let those in flight finish."""
        self._read_scope.cancel()

    async def _forget_everything(self) -> None:
        for fid in self.session.clear():
            await self.dispatcher.close_fid(fid)
        released = self.locks.table.release_connection(self.session.connection_id)
        self.locks.released(released)

    # --- reading -------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            if self._raw_socket is not None:
                await self._read_socket()
            else:
                await self._read_stream()
        finally:
            self._release_held()  # stopping or gone: it runs (or is cancelled) as any other

    async def _read_socket(self) -> None:
        """recv_into one reused buffer; a frame bigger than it (a 1 MiB Twrite) gets
        a buffer of its own that the socket fills directly, and that becomes the
        message's payload without another copy."""
        sock = self._raw_socket
        buffer = bytearray(_RECEIVE_SIZE)
        view = memoryview(buffer)
        start = end = 0
        waited = True  # whether we yielded to trio since the last successful recv
        peek = 0  # if set, receive at most this much next (see the big-frame case)
        while True:
            while end - start >= 4:
                size = int.from_bytes(view[start:start + 4], "little")
                if size < HEADER_SIZE or size > self._frames.msize:
                    log.warning("%s: malformed frame, closing: size field %d outside 7..%d",
                                self.name, size, self._frames.msize)
                    return
                if end - start < size:
                    break
                if not await self._take_frame(bytes(view[start:start + size])):
                    return
                start += size
            if start == end:
                start = end = 0
            elif end - start >= 4 and int.from_bytes(view[start:start + 4], "little") > len(buffer):
                size = int.from_bytes(view[start:start + 4], "little")
                frame = self._big_frames.take(size, self._frames.msize)[:size]
                frame[:end - start] = view[start:end]
                if not await self._fill(frame[end - start:]):
                    return
                start = end = 0
                taken = await self._take_frame(frame)
                frame = None  # only the message holds the buffer now (see _FramePool)
                if not taken:
                    return
                # Big frames come in runs (a file being written): read just the head
                # of the next one, so that its bulk lands in its own buffer directly
                # instead of being copied there from ours.
                peek = _PEEK_SIZE
                continue
            elif len(buffer) - end < 4096:
                view[:end - start] = view[start:end]  # make room: move the partial frame down
                start, end = 0, end - start
            if not waited:
                # Data twice without waiting: a busy client must not starve the others.
                await trio.lowlevel.checkpoint()
            try:
                received = sock.recv_into(view[end:end + peek] if peek else view[end:])
            except (BlockingIOError, InterruptedError):
                if self._held is not None:  # a lone request, nothing more to read: answer it
                    await self._run_held()
                    continue
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError:
                return
            if received == 0:
                return
            end += received
            waited = False
            peek = 0

    async def _fill(self, target: memoryview) -> bool:
        sock = self._raw_socket
        while len(target):
            try:
                received = sock.recv_into(target)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return False
            if received == 0:
                return False
            target = target[received:]
        return True

    async def _take_frame(self, frame) -> bool:
        try:
            msg = decode(frame)
        except ProtocolError as exc:
            return self._bad_frame(exc)
        await self._accept(msg)
        return True

    def _bad_frame(self, exc: ProtocolError) -> bool:
        """A frame that did not decode: True to go on serving, False to hang up.

        The codec sets ``exc.tag`` when the frame was well delimited and only its body
        is bad (a name that is not UTF-8, a NUL in a name, 17 walk elements, a body
        cut short inside its frame): the stream is still in step, so that request
        alone fails -- EILSEQ for bad UTF-8 (what Linux says for unencodable names),
        EINVAL otherwise. Without a tag the framing itself is broken: hang up."""
        if exc.tag is None:
            log.warning("%s: malformed frame, closing: %s", self.name, exc)
            return False
        code = errno.EILSEQ if NOT_UTF8 in str(exc) else errno.EINVAL
        self._warn("malformed request", "malformed request, answering Rlerror(%s): %s",
                   errno.errorcode[code], exc)
        self.queue_reply(m.Rlerror(exc.tag, host_errno_to_wire(code)))
        return True

    async def _read_stream(self) -> None:
        frames = self._frames
        while True:
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            frames.feed(data)
            try:
                for frame in frames:
                    if not await self._take_frame(frame):
                        return
            except ProtocolError as exc:  # the FrameReader's: a size field out of range
                log.warning("%s: malformed frame, closing: %s", self.name, exc)
                return
            if self._held is not None:
                await self._run_held()

    async def _accept(self, msg: m.Message) -> None:
        if self.trace:
            trace_log.info("%s <- %s", self.name, describe(msg))
        self._release_held()  # another request came: the held one is no longer alone
        if isinstance(msg, m.Tversion):
            await self._version(msg)
            return
        tag = msg.tag
        if tag in self._requests:
            self.queue_reply(m.Rlerror(tag, Errno.EINVAL))  # duplicate tag in flight
            return
        # Bulk replies count against the output buffer from the moment they are
        # asked for: 64 pipelined 1 MiB Treads must not queue 64 MiB.
        promised = min(msg.count, self.session.msize) if isinstance(msg, (m.Tread, m.Treaddir)) else 0
        request = self._requests[tag] = _Request(tag, promised)
        self._promised += promised
        field = _INLINE_FID_FIELD.get(type(msg))
        if field is not None and len(self._requests) == 1 and self._prompt(getattr(msg, field)):
            # Answered by the reader itself once it finds nothing more to read; if more
            # comes first, it goes to a worker like any (replies stay batched under load).
            self._held = (msg, request)
        else:
            self._start(msg, request)
        limits = self.limits
        while (len(self._requests) >= limits.max_in_flight
               or self._out_bytes + self._promised >= limits.max_buffered):
            self._room = trio.Event()
            await self._room.wait()

    def _start(self, msg: m.Message, request: _Request) -> None:
        if isinstance(msg, m.Tflush):
            request.scope = trio.CancelScope()
            self._nursery.start_soon(self._flush, msg, request)
        elif self._idle_workers:
            worker = self._idle_workers.pop()
            request.scope = worker.scope
            trio.lowlevel.reschedule(worker.task, outcome.Value((msg, request)))
        else:
            worker = _Worker()
            request.scope = worker.scope
            self._nursery.start_soon(self._work, worker, (msg, request))

    def _release_held(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._start(*held)

    async def _run_held(self) -> None:
        (msg, request), self._held = self._held, None
        await self._run_inline(msg, request)

    def _prompt(self, number: int) -> bool:
        fid = self.session.fids.get(number)
        return fid is not None and fid.export.filesystem.prompt

    async def _run_inline(self, msg: m.Message, request: _Request) -> None:
        request.scope = trio.CancelScope()
        reply = None
        try:
            with request.scope:
                reply = await self.dispatcher.handle(msg)
        finally:
            msg = None  # as in _work: do not pin a pooled frame buffer
            self.requests_inline += 1
            self._finish(request, reply)

    async def _work(self, worker: _Worker, job: tuple | None) -> None:
        """Serve requests one after the other, parking in between (see _Worker)."""
        worker.task = trio.lowlevel.current_task()
        while True:
            with worker.scope:
                while True:
                    if job is None:
                        job = await self._park(worker)
                    msg, request = job
                    job = None
                    reply = None
                    try:
                        reply = await self.dispatcher.handle(msg)
                    finally:
                        msg = None  # a parked worker must not pin a pooled frame buffer
                        self._finish(request, reply)
            # A Tflush or Tversion cancelled our scope (the request is finished, or
            # the cancel came after it completed anyway): carry on in a fresh one.
            worker.scope = trio.CancelScope()

    async def _park(self, worker: _Worker) -> tuple:
        self._idle_workers.append(worker)

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            self._idle_workers.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _finish(self, request: _Request, reply: m.Message | None) -> None:
        del self._requests[request.tag]
        self._promised -= request.reply_bytes
        if reply is not None and not self._closing:
            self.queue_reply(reply)
        request.finish()  # after the reply is queued: Rflush must come behind it
        self._room.set()
        self.requests_served += 1

    async def _flush(self, msg: m.Tflush, request: _Request) -> None:
        try:
            with request.scope:
                target = self._requests.get(msg.oldtag)
                if target is not None and target is not request:
                    target.scope.cancel()
                    await target.wait_finished()
                self.queue_reply(m.Rflush(msg.tag))
        finally:
            del self._requests[request.tag]
            request.finish()
            self._room.set()

    async def _version(self, msg: m.Tversion) -> None:
        """Tversion resets the session: abort what is in flight, clunk every fid."""
        for request in list(self._requests.values()):
            request.scope.cancel()
        for request in list(self._requests.values()):
            await request.wait_finished()
        for fid in self.session.clear():
            await self.dispatcher.close_fid(fid)
        msize, version = self.session.negotiate(msg.msize, msg.version)
        self._frames.msize = msize
        self.queue_reply(m.Rversion(msg.tag, msize, version))

    # --- writing -------------------------------------------------------------------------
    def queue_reply(self, reply: m.Message) -> None:
        try:
            buffers = encode(reply)
        except (ValueError, TypeError, OverflowError) as exc:
            # A backend handed back something the wire cannot carry (a name with NUL,
            # a field out of range): that request fails, the connection goes on.
            log.error("%s: cannot encode %s: %s", self.name, type(reply).__name__, exc)
            reply = m.Rlerror(reply.tag, Errno.EIO)
            buffers = encode(reply)
        size = sum(map(len, buffers))
        if size >= self.session.msize:
            # Linux's fd/tcp transport drops the whole mount (EIO) on a reply whose size
            # is >= msize, not only > msize. Only variable replies without a count (a
            # huge Rreadlink) can get here.
            log.warning("%s: %s of %d bytes exceeds msize", self.name, type(reply).__name__, size)
            reply = m.Rlerror(reply.tag, Errno.ERANGE)
            buffers = encode(reply)
            size = sum(map(len, buffers))
        if self.trace:
            trace_log.info("%s -> %s", self.name, describe(reply))
        if (not self._out and not self._writer_busy and not self._requests
                and self._raw_socket is not None):
            # Nothing queued, nothing being sent, no other reply about to be queued
            # (with more in flight, the writer batches them): try the socket now (one
            # non-blocking syscall, no await, so nothing can cut the frame) and save
            # the hop to the writer task. What does not fit goes to the writer.
            try:
                sent = self._raw_socket.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the writer will meet the error and end the connection
            if sent == size:
                return
            buffers = _unsent(buffers, sent)
            size -= sent
        self._out += buffers
        self._out_bytes += size
        self._out_ready.set()

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            if not self._out:
                if self._closing:
                    return
                continue
            buffers, self._out = self._out, []
            size = sum(map(len, buffers))
            self._writer_busy = True
            try:
                await self._send(buffers)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("%s: send failed: %s", self.name, exc)
                connection_scope.cancel()
                return
            finally:
                self._writer_busy = False
            self._out_bytes -= size
            self._room.set()
            if self._closing and not self._out:
                return

    async def _send(self, buffers: list) -> None:
        """Straight non-blocking sendmsg on the stdlib socket, waiting only when the
        socket is full: trio's sendmsg adds two scheduler round trips per call (its
        checkpoints), which at 16 busy connections cost more than the send itself."""
        sock = self._raw_socket
        if sock is None:
            await self.stream.send_all(b"".join(buffers))
            return
        views = buffers
        while views:
            batch = views[:_IOV_MAX]
            try:
                sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                await trio.lowlevel.wait_writable(sock)
                continue
            views[:len(batch)] = _unsent(batch, sent)


def _unsent(buffers: list, sent: int) -> list:
    """What is left of ``buffers`` after ``sent`` bytes went out (a partly sent
    buffer keeps its unsent tail)."""
    index = 0
    while index < len(buffers) and sent >= len(buffers[index]):
        sent -= len(buffers[index])
        index += 1
    rest = buffers[index:]
    if rest and sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest
