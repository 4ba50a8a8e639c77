"""One client connection on trio: the thin pump around ``rules.RequestRules``.

One reader, one writer, and a task per request that may wait:

* The **reader** tries the socket first (a non-blocking ``recv_into``) and waits for it
  (``trio.lowlevel.wait_readable``) only when it has nothing: a request that finds
  data already there costs no trip through the scheduler. Framing is the codec's
  ``FrameReader``; each message goes to the rules, which say where it runs. Requests
  of a prompt filesystem (the host export: each one is a few direct syscalls) are
  answered right there, in the reader, and their replies are batched: they go out in
  one ``sendmsg`` when the reader finds nothing more to read. Requests that may wait
  (a blocking Tlock that was refused, anything of a synthetic tree) get a task and a
  ``CancelScope`` registered under their tag, so a Tflush is a cancellation.
* **Replies** join one queue of buffers. Whoever queues may send from its front with
  one non-blocking ``sendmsg`` (no await, so nothing can cut a frame in two); only the
  **writer** task ever waits for the socket, when the queue does not drain at once.
  The reader sends its batch before it waits; a task's reply goes out at once when
  nothing else is in flight, else the writer batches it with the others.
* Streams without a socket (an fd pair, the vhost-user vsock device, memory streams)
  go through the same reader and writer with ``receive_some``/``send_all`` underneath.
* Graceful stop reads no more requests and lets those in flight finish and be
  answered; disconnect cancels what is in flight, closes every fid and drops the
  connection's locks.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import select
import termios
import threading
import time
from typing import Mapping

import trio

from ..fs.identity import credentials_for
from ..protocol import messages as m
from ..protocol.codec import FrameReader, ProtocolError, decode, pack_dirents
from .dispatch import Dispatcher
from .lockservice import LockManager  # noqa: F401  (also imported from here)
from .polling import MAX_WINDOW as MAX_POLL_WINDOW
from .polling import PollWindow
from .ratelimit import LogLimiter
from .rules import (FLUSH, INLINE, REPLY, TASK, TRY, VERSION, ByteBudget, RequestRules,
                    bad_frame_reply)
from .session import Export, Limits, Session
from .trace import describe

log = logging.getLogger("ninep.server")
trace_log = logging.getLogger("ninep.trace")

_IOV_MAX = 1024  # Linux UIO_MAXIOV: buffers per sendmsg
_RECEIVE_SIZE = 256 * 1024
_PEEK_SIZE = 4096
_DRAIN_SECONDS = 5.0  # how long a closing connection may take to send what is queued
_READS_BEFORE_YIELD = 8  # reads that found data without waiting, then let others run
_INLINE_BEFORE_YIELD = 32  # requests answered in the reader, then let others run
_connection_numbers = itertools.count(1)
_live_connections = 0  # Connections running in this process
_LONE_WAIT = 0.0005  # seconds a lone connection may wait outside the scheduler
_LONE_STREAK = 64  # requests served so in a row, then one wait through trio
_LONE_BACKOFF_MAX = 4096  # requests without lone waits after timeouts in a row
_LONE_CHECK_MASK = 7  # look at trio's other tasks every 8 lone waits
_clock = time.perf_counter
_yield_cpu = os.sched_yield
# One receive buffer for every connection of a thread (of a trio loop): the
# FrameReader copies out what it keeps before anything can await, so an idle
# connection holds no buffer. Per thread, as two loops in two threads would
# otherwise receive into it at once.
_per_thread = threading.local()


def _receive_buffer() -> memoryview:
    scratch = getattr(_per_thread, "scratch", None)
    if scratch is None:
        scratch = _per_thread.scratch = memoryview(bytearray(_RECEIVE_SIZE))
    return scratch


class SocketTransport:
    """The stdlib socket under a trio SocketStream (already non-blocking)."""

    nonblocking = True

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = stream.socket._sock

    def queued(self) -> int:
        """Bytes received by the kernel and not read yet."""
        try:
            return int.from_bytes(fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0" * 4),
                                  "little", signed=True)
        except OSError:
            return 0

    def try_recv_into(self, view: memoryview) -> int | None:
        """Bytes received (0: the peer is gone), or None if none are there yet."""
        try:
            return self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return 0

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    def try_send(self, buffers: list) -> int:
        try:
            return self.sock.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return 0

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)


class StreamTransport:
    """Any trio Stream, through ``receive_some`` and ``send_all``."""

    nonblocking = False

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._pending = memoryview(b"")
        self._eof = False

    def queued(self) -> int:
        return len(self._pending)

    def try_recv_into(self, view: memoryview) -> int | None:
        if self._pending:
            count = min(len(view), len(self._pending))
            view[:count] = self._pending[:count]
            self._pending = self._pending[count:]
            return count
        return 0 if self._eof else None

    async def wait_readable(self) -> None:
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self._eof = not data
        self._pending = memoryview(data)

    async def send_all(self, buffers: list) -> None:
        await self.stream.send_all(b"".join(buffers))


def transport_for(stream: trio.abc.Stream):
    if isinstance(stream, trio.SocketStream):
        return SocketTransport(stream)
    return StreamTransport(stream)


class Connection:
    """Serve 9P on one stream until the client goes, errs, or the server stops."""

    def __init__(self, stream: trio.abc.Stream, exports: Mapping[str, Export],
                 locks: LockManager, *, limits: Limits = Limits(), trace: bool = False,
                 name: str = "", budget: ByteBudget | None = None,
                 poll_window: float = MAX_POLL_WINDOW) -> None:
        """``budget``: the bulk bytes of the process (``Server.bulk``), else this
        connection's own. ``poll_window``: see polling.py."""
        self.stream = stream
        self.transport = transport_for(stream)
        self.number = next(_connection_numbers)
        self.name = name or f"connection {self.number}"
        self.limits = limits
        self.trace = trace
        self.session = Session(exports, limits, connection_id=locks.connection_id(self.number))
        self.locks = locks
        self.dispatcher = Dispatcher(self.session, locks, pack_dirents, credentials_for)
        self.rules = RequestRules(limits, self._prompt, budget, prompt_locks=locks.prompt)
        self.frames = FrameReader(limits.max_msize)
        self._scopes: dict[int, trio.CancelScope] = {}  # tag -> its task's scope
        self._nursery: trio.Nursery | None = None
        self._read_scope = trio.CancelScope()
        self._reader_waiting = False  # in a wait that stop_reading may cancel
        self._reader_busy = False  # between a read and sending its batch of replies
        self._stopping = False
        self._budget = _INLINE_BEFORE_YIELD
        # See _lone_wait; select() takes descriptors below FD_SETSIZE only.
        sock = getattr(self.transport, "sock", None)
        self._lone_fd = [sock] if sock is not None and sock.fileno() < 1024 else None
        self._poll = PollWindow(poll_window)
        self._poller = select.poll()
        if self._lone_fd is not None:
            self._poller.register(sock, select.POLLIN)
        self._lone_streak = 0
        self._lone_skip = 0
        self._lone_backoff = 1
        self._out: list = []  # reply buffers not yet sent, in order
        self._writer_wake = trio.Event()
        self._room = trio.Event()
        self._closing = False
        self.requests_served = 0
        self.requests_inline = 0  # of those, answered in the reader
        self.lone_waits = 0  # requests waited for outside the scheduler (_lone_wait)
        self.lone_polls = 0  # of those, found by polling (no sleep)
        self._log_limit = LogLimiter()  # a client must not write our log at line rate

    def _prompt(self, number: int) -> bool:
        fid = self.session.fids.get(number)
        return fid is not None and fid.export.filesystem.prompt

    # --- lifetime ------------------------------------------------------------------------
    async def run(self) -> None:
        global _live_connections
        _live_connections += 1
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._write_loop, outer.cancel_scope)
                try:
                    async with trio.open_nursery() as requests:
                        self._nursery = requests
                        with self._read_scope:
                            await self._read_loop()
                        self._send_now()
                        if self._stopping:
                            # Graceful stop: let what is in flight finish and be answered.
                            while not self.rules.idle:
                                await self._wait_for_room()
                        # The client is gone, or all is answered: cancel the rest.
                        requests.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._forget_everything()
                    self._closing = True
                    self._writer_wake.set()
                    outer.cancel_scope.deadline = trio.current_time() + _DRAIN_SECONDS
        finally:
            _live_connections -= 1
            self._out.clear()
            self.rules.forget_buffered()  # what was never sent is the process's again
            self._budget_freed()
            for cause, count in self._log_limit.pending().items():
                log.warning("%s: %d more %ss, not logged", self.name, count, cause)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    def stop_reading(self) -> None:
        """Graceful shutdown: read no more requests, let those in flight finish."""
        self._stopping = True
        if self._reader_waiting:
            self._read_scope.cancel()

    async def _forget_everything(self) -> None:
        for fid in self.session.clear():
            await self.dispatcher.close_fid(fid)
        try:
            released = await self.locks.release_connection(self.session.connection_id)
        except OSError as exc:  # a worker's supervisor gone: it drops them itself
            log.warning("%s: dropping its locks failed: %s", self.name, exc)
            return
        self.locks.released(released)

    def _warn(self, cause: str, text: str, *args) -> None:
        """log.warning for what a client causes: the first few of each cause verbatim,
        then one line a minute saying how many more there were."""
        write, dropped = self._log_limit.admit(cause, trio.current_time())
        if dropped:
            log.warning("%s: %d more %ss in the last minute, not logged",
                        self.name, dropped, cause)
        if write:
            log.warning("%s: " + text, self.name, *args)

    # --- reading -------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        transport = self.transport
        frames = self.frames
        scratch = _receive_buffer()
        peek = False  # after a big frame, read just the head of the next one
        drained = False  # the last read took less than it could: likely nothing more yet
        reads = _READS_BEFORE_YIELD
        while not self._stopping:
            target = frames.receive_buffer()
            if target is None and frames.big_wanting and transport.queued() >= frames.big_wanting:
                # The start of a big frame is held until a quarter of it has come (codec):
                # it has, in the socket. Its buffer now, and the rest straight into it.
                frames.allot()
                target = frames.receive_buffer()
            big = target is not None
            if not big:
                target = scratch[:_PEEK_SIZE] if peek else scratch
            # After a read that drained the socket, a lone client (a VM's root: one
            # request at a time) has sent nothing more until it has our reply: skip
            # the read that would fail (a syscall and an exception), send, and wait.
            received = None if drained else transport.try_recv_into(target)
            if received is None:  # nothing there: send the batch, then wait
                drained = False
                self._reader_busy = False
                self._send_now()
                if self._lone_wait():
                    # A wait it was, if outside trio: the lone wait looks after the
                    # loop's other tasks itself (see there), so no checkpoint is owed.
                    reads = _READS_BEFORE_YIELD
                    self._budget = _INLINE_BEFORE_YIELD
                    continue
                self._reader_waiting = True
                await transport.wait_readable()
                self._reader_waiting = False
                reads = _READS_BEFORE_YIELD
                self._budget = _INLINE_BEFORE_YIELD
                continue
            if received == 0:
                return
            drained = received < len(target)
            self._reader_busy = True
            if big:
                frames.received(received)
            else:
                frames.feed(target[:received])
            target = None
            peek = big
            if not await self._take_frames():
                return
            reads -= 1
            if not reads:  # a client that never lets us wait must not starve the others
                self._reader_busy = False
                self._send_now()
                await trio.lowlevel.checkpoint()
                reads = _READS_BEFORE_YIELD

    def _lone_wait(self) -> bool:
        """Wait for the next request without the scheduler when nothing else could use
        it: this is the process's only connection, no task is runnable, no deadline is
        near. Then a ping-pong client (a VM's root: one request in flight) costs no trip
        through trio per request. True if data came.

        First the reader polls the socket for the window ``PollWindow`` keeps (see
        polling.py: a client that answers within microseconds is not made to wake us
        up), then it sleeps in ``select`` for at most ``_LONE_WAIT``. After every
        ``_LONE_STREAK`` requests served so, trio waits instead, so that listeners,
        signals and timers are served within milliseconds. A wait that times out (the
        client is idle, or is a task of this very loop that cannot run while we block)
        turns lone waits off for a number of requests that doubles with each timeout
        in a row."""
        if _live_connections != 1 or self._lone_fd is None or not self.rules.idle:
            return False  # (a task in flight may be waiting on another fd: a lock call)
        if self._lone_skip:
            self._lone_skip -= 1
            return False
        self._lone_streak += 1
        if self._lone_streak >= _LONE_STREAK:
            self._lone_streak = 0
            return False
        if not self._lone_streak & _LONE_CHECK_MASK:
            # Other tasks of this loop (listeners, timers, the workers' supervisor
            # link): checked every few requests, as the check costs ~2 µs.
            statistics = trio.lowlevel.current_statistics()
            if (statistics.tasks_runnable
                    or statistics.seconds_to_next_deadline < 2 * _LONE_WAIT):
                return False
        start = _clock()
        poll = self._poll
        if poll.window:
            ready = self._poller.poll
            deadline = start + poll.window
            while not ready(0):
                if _clock() >= deadline:
                    break
                _yield_cpu()
            else:
                poll.polled()
                self.lone_waits += 1
                self.lone_polls += 1
                return True
        if select.select(self._lone_fd, (), (), _LONE_WAIT)[0]:
            poll.slept(_clock() - start)
            self._lone_backoff = 1
            self.lone_waits += 1
            return True
        poll.slept(None)
        self._lone_backoff = min(self._lone_backoff * 2, _LONE_BACKOFF_MAX)
        self._lone_skip = self._lone_backoff
        return False

    async def _wait_for_room(self) -> None:
        self._room = trio.Event()
        self._reader_waiting = True
        waiting = self.rules.budget.waiting
        if self.rules.held_back_by_budget():  # other connections' sends make room
            waiting.add(self)
        try:
            await self._room.wait()
        finally:
            self._reader_waiting = False
            waiting.discard(self)

    def _budget_freed(self) -> None:
        """Bytes of the process's budget came back: wake the connections it stopped."""
        budget = self.rules.budget
        if budget.waiting and not budget.spent:
            for connection in budget.waiting:
                connection._room.set()

    async def _take_frames(self) -> bool:
        """Act on every whole frame read; False to hang up."""
        frames = self.frames
        rules = self.rules
        while True:
            if not rules.may_read():  # backpressure: the rest stays in the FrameReader
                self._reader_busy = False
                self._send_now()
                while not rules.may_read():
                    await self._wait_for_room()
                self._reader_busy = True
            try:
                frame = frames.next_frame()
            except ProtocolError as exc:  # a size field out of range: out of step for good
                log.warning("%s: malformed frame, closing: %s", self.name, exc)
                return False
            if frame is None:
                return True
            try:
                msg = decode(frame)
            except ProtocolError as exc:
                reply = bad_frame_reply(exc)
                if reply is None:
                    log.warning("%s: malformed frame, closing: %s", self.name, exc)
                    return False
                self._warn("malformed request", "malformed request, answering Rlerror(%s): %s",
                           errno.errorcode.get(reply.ecode, reply.ecode), exc)
                self._queue(reply)
                continue
            frame = None
            if self.trace:
                trace_log.info("%s <- %s", self.name, describe(msg))
            kind, detail = rules.receive(msg)
            reply = None
            if kind is INLINE:
                reply = await self.dispatcher.handle(msg)
            elif kind is TRY:  # a blocking Tlock: answered now, unless it must wait
                reply = await self.dispatcher.handle(msg, at_once=True)
                if reply is None:
                    kind, detail = rules.start_task(msg)
            if reply is not None:
                msg = None
                self.requests_inline += 1
                self.requests_served += 1
                self._queue(reply)
                self._budget -= 1
                if not self._budget:  # a client that never lets us wait must not starve others
                    self._reader_busy = False
                    self._send_now()
                    await trio.lowlevel.checkpoint()
                    self._reader_busy = True
                    self._budget = _INLINE_BEFORE_YIELD
            elif kind is TASK:
                scope = self._scopes[msg.tag] = trio.CancelScope()
                self._nursery.start_soon(self._run_task, msg, scope)
                msg = None
            elif kind is REPLY:
                self._queue(detail)
            elif kind is FLUSH:
                scope = self._scopes.get(detail)
                if scope is not None:  # else it is a Tflush itself: it ends with its target
                    scope.cancel()
            elif kind is VERSION:
                await self._version(msg, detail)

    async def _run_task(self, msg: m.Message, scope: trio.CancelScope) -> None:
        tag = msg.tag
        reply = None
        try:
            with scope:
                reply = await self.dispatcher.handle(msg)
        finally:
            msg = None  # the message may hold a big frame's buffer
            del self._scopes[tag]
            replies = self.rules.finished(tag, reply)
            self._budget_freed()
            self.requests_served += 1
            if not self._closing:
                for each in replies:
                    self._queue(each)
                if self.rules.idle and not self._reader_busy:
                    self._send_now()  # nothing else to batch it with
                if self._out:
                    self._writer_wake.set()
            self._room.set()

    async def _version(self, msg: m.Tversion, in_flight: list[int]) -> None:
        """Tversion resets the session: abort what is in flight, clunk every fid."""
        for tag in in_flight:
            scope = self._scopes.get(tag)
            if scope is not None:
                scope.cancel()
        self._send_now()
        while not self.rules.idle:
            await self._wait_for_room()
        for fid in self.session.clear():
            await self.dispatcher.close_fid(fid)
        msize, version = self.session.negotiate(msg.msize, msg.version)
        self.frames.msize = msize
        self._queue(self.rules.versioned(msg, msize, version))

    # --- writing -------------------------------------------------------------------------
    def _queue(self, reply: m.Message) -> None:
        if self.trace:
            trace_log.info("%s -> %s", self.name, describe(reply))
        buffers, _ = self.rules.encode_reply(reply, self.name)
        self._out += buffers

    def _send_now(self) -> None:
        """Send what the socket takes of the queue now, without waiting; the writer
        is woken for the rest."""
        out = self._out
        if not out:
            return
        if self.transport.nonblocking:
            try:
                sent = self.transport.try_send(out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
            except OSError:
                sent = 0  # the writer meets the error again and ends the connection
            if sent:
                self._drop_sent(sent)
        if out:
            self._writer_wake.set()

    def _drop_sent(self, sent: int) -> None:
        self.rules.sent(sent)
        out = self._out
        index = 0
        while index < len(out) and sent >= len(out[index]):
            sent -= len(out[index])
            index += 1
        del out[:index]
        if sent:
            out[0] = memoryview(out[0])[sent:]
        if self._reader_waiting:
            self._room.set()
        if self.rules.budget.waiting:
            self._budget_freed()

    async def _write_loop(self, connection_scope: trio.CancelScope) -> None:
        transport = self.transport
        while True:
            await self._writer_wake.wait()
            self._writer_wake = trio.Event()
            try:
                while self._out:
                    if transport.nonblocking:
                        out = self._out
                        sent = transport.try_send(out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
                        if sent:
                            self._drop_sent(sent)
                        else:
                            await transport.wait_writable()
                    else:
                        buffers, self._out = self._out, []
                        await transport.send_all(buffers)
                        self.rules.sent(sum(map(len, buffers)))
                        self._room.set()
                        self._budget_freed()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("%s: send failed: %s", self.name, exc)
                connection_scope.cancel()
                return
            if self._closing:
                return
