"""The request rules of one connection: messages in, decisions and replies out.

Pure (no trio, no sockets), like h11: the trio pump (``connection.py``) reads frames,
asks ``receive`` what to do with each message, runs requests where it is told, and
hands every finished request back to ``finished``, which says what to send, in order.
Tested with tables of messages in and out (tests/server/test_server_rules.py).

The rules:

* **Tags.** A tag is in flight from its request until its reply is queued. A request
  reusing a tag in flight gets Rlerror(EINVAL) and is not run.
* **Inline or task.** A request on a fid of a ``prompt`` filesystem (one that never
  waits for anything but the host) is answered *inline*: by the reader, at once,
  before it reads the next frame; its reply joins the batch the reader sends when it
  has nothing more to read. Everything that may wait (a blocking Tlock, which waits
  until another client unlocks; any Tlock whose lock table is in another process, a
  ``--workers`` worker's; Tfsync; Tattach; any request of a synthetic tree) runs in a
  task of its own, so that the reader goes on reading and a Tflush can reach it. A
  Tlock on this process's table answers at once, so it is inline; a blocking one is
  *tried* inline (TRY) and becomes a task only when it is refused and must wait.
* **Tflush.** Flushing a tag not in flight is answered Rflush at once. Otherwise the
  target is cancelled, and Rflush is sent only when the target has finished: after the
  target's reply if it completed anyway (the client then learns the effect of an
  operation that did happen), alone if it was cancelled. Several flushes of one tag
  are answered in the order they came.
* **Tversion** aborts everything in flight: the reader stops reading, every request
  in flight is cancelled, and only when all have finished is the session reset and
  Rversion sent, after any reply they still produced.
* **Backpressure.** The reader stops reading while ``max_in_flight`` tags run or
  ``max_buffered`` bytes are held: replies queued, Tread/Treaddir counts promised (a
  count counts from the moment it is asked for: 64 pipelined 1 MiB Treads must not
  queue 64 MiB), and the frames of Twrites running in tasks. The same bytes of every
  connection of the process count against one ``ByteBudget`` (``max_buffered_process``):
  while it is spent, a connection holding ``SMALL_HOLDING`` (64 KiB) or more stops
  reading, and one holding less may still take requests (so each connection always
  progresses, a client that stops reading its replies cannot stall the others, and
  metadata replies still go out in batches). A process then holds at most the budget
  plus 64 KiB and one msize per connection, not connections x ``max_buffered``.
* **Reply size.** A reply of msize bytes or more becomes Rlerror(ERANGE) (Linux drops
  the whole mount on one), one that cannot be encoded Rlerror(EIO).
* **Bad frames.** A frame well delimited but with a bad body gets Rlerror (EILSEQ for a
  string that is not UTF-8, EINVAL otherwise) and the connection goes on; broken framing
  (no tag to answer) ends it.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable

from ..protocol import messages as m
from ..protocol.codec import ProtocolError, encode
from ..protocol.constants import Errno, LockFlags, host_errno_to_wire
from ..protocol.errors import NOT_UTF8
from .session import Limits

log = logging.getLogger("ninep.server")

# What ``receive`` decides (the first item of its answer).
REPLY = "reply"  # send this reply now; nothing runs
INLINE = "inline"  # run it in the reader, now
TASK = "task"  # run it in a task of its own
TRY = "try"  # run it in the reader if it need not wait, else as a task (``start_task``)
FLUSH = "flush"  # cancel the request with this tag; Rflush comes from ``finished``
VERSION = "version"  # cancel these tags; when ``idle``, reset and call ``versioned``

# Requests that may be answered inline, and the field naming the fid whose filesystem
# must be prompt. Not Tlock (a blocking one waits for another client: it must stay
# flushable, and only the reader can read the Tflush; ``receive`` decides it, INLINE or
# TRY when the lock table is prompt), nor Tfsync, Tattach, Tflush, Tversion.
INLINE_FID_FIELD = {
    m.Tgetattr: "fid", m.Twalk: "fid", m.Tclunk: "fid", m.Tlopen: "fid", m.Tread: "fid",
    m.Twrite: "fid", m.Treaddir: "fid", m.Tstatfs: "fid", m.Treadlink: "fid",
    m.Txattrwalk: "fid", m.Txattrcreate: "fid", m.Tlcreate: "fid", m.Tsetattr: "fid",
    m.Tunlinkat: "dirfid", m.Tmkdir: "dfid", m.Tsymlink: "fid", m.Trenameat: "olddirfid",
    m.Tremove: "fid", m.Tlink: "dfid", m.Tmknod: "dfid", m.Trename: "fid",
    m.Tgetlock: "fid",
}


SMALL_HOLDING = 64 * 1024  # a connection holding less reads on past the process budget


class ByteBudget:
    """Bulk bytes held by all connections of a process (see Backpressure): ``used``
    against ``limit``. ``waiting`` is for the I/O layer: the connections stopped by the
    budget, to wake when it has room again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting: set = set()

    @property
    def spent(self) -> bool:
        return self.used >= self.limit


class _InFlight:
    __slots__ = ("promised", "flushes")

    def __init__(self, promised: int) -> None:
        self.promised = promised  # reply bytes it may add to the output
        self.flushes: list[int] = []  # tags of Tflushes waiting for it, in order


class RequestRules:
    """The rules for one connection. ``prompt(fid_number)`` says whether that fid's
    filesystem is prompt (False for an unknown fid)."""

    def __init__(self, limits: Limits, prompt: Callable[[int], bool],
                 budget: ByteBudget | None = None, *, prompt_locks: bool = False) -> None:
        """``budget``: the process's (shared by its connections); None: one of this
        connection's own, of ``limits.max_buffered_process``. ``prompt_locks``: the
        lock table answers without waiting (it is in this process)."""
        self.limits = limits
        self.prompt_locks = prompt_locks
        self.msize = limits.max_msize
        self._prompt = prompt
        self.budget = budget if budget is not None else ByteBudget(limits.max_buffered_process)
        self.in_flight: dict[int, _InFlight] = {}
        self.promised = 0  # bulk reply bytes and Twrite frames of requests still running
        self.buffered = 0  # reply bytes queued and not yet sent
        self.versioning = False  # a Tversion waits for what is in flight

    # --- requests in ---------------------------------------------------------------
    def receive(self, msg: m.Message) -> tuple:
        """What to do with ``msg``: (REPLY, reply), (INLINE, None), (TASK, None),
        (TRY, None), (FLUSH, target tag) or (VERSION, tags to cancel)."""
        kind = type(msg)
        field = INLINE_FID_FIELD.get(kind)
        tag = msg.tag
        in_flight = self.in_flight
        if tag in in_flight:
            return REPLY, m.Rlerror(tag, Errno.EINVAL)  # a tag may not be reused while in flight
        if field is not None:
            if self._prompt(getattr(msg, field)):
                return INLINE, None
        elif kind is m.Tlock and self.prompt_locks and self._prompt(msg.fid):
            # This process's table answers at once; only a blocking Tlock that is
            # refused must wait, and that one becomes a task (``start_task``).
            return (TRY if msg.flags & LockFlags.BLOCK else INLINE), None
        if kind is m.Tversion:
            self.versioning = True
            return VERSION, list(in_flight)
        if kind is m.Tflush:
            target = in_flight.get(msg.oldtag)
            if target is None:
                return REPLY, m.Rflush(tag)
            target.flushes.append(tag)
            in_flight[tag] = _InFlight(0)
            return FLUSH, msg.oldtag
        if kind is m.Tread or kind is m.Treaddir:
            promised = min(msg.count, self.msize)
        elif kind is m.Twrite:
            promised = len(msg.data)  # its frame is held until the task is done
        else:
            promised = 0
        in_flight[tag] = _InFlight(promised)
        self.promised += promised
        self.budget.used += promised
        return TASK, None

    def start_task(self, msg: m.Message) -> tuple:
        """A TRY request that must wait after all: from now on it is in flight as a
        task (flushable), as if ``receive`` had said TASK."""
        self.in_flight[msg.tag] = _InFlight(0)
        return TASK, None

    def finished(self, tag: int, reply: m.Message | None) -> list[m.Message]:
        """The request ``tag`` (run as a task) is done, with ``reply`` or cancelled
        (None): the replies to send now, in this order."""
        out = [] if reply is None else [reply]
        pending = [tag]
        while pending:  # a flush waiting on a flush is answered after it
            request = self.in_flight.pop(pending.pop(0))
            self.promised -= request.promised
            self.budget.used -= request.promised
            for flush in request.flushes:
                out.append(m.Rflush(flush))
                pending.append(flush)
        return out

    @property
    def idle(self) -> bool:
        return not self.in_flight

    def may_read(self) -> bool:
        """Whether the reader may read the next request (see Backpressure)."""
        limits = self.limits
        if self.versioning:
            return False
        held = self.buffered + self.promised
        return (len(self.in_flight) < limits.max_in_flight and held < limits.max_buffered
                and not (held >= SMALL_HOLDING and self.budget.spent))

    def held_back_by_budget(self) -> bool:
        """Whether only the process's budget keeps ``may_read`` False (another
        connection's progress, not this one's, will let it read)."""
        held = self.buffered + self.promised
        return (not self.versioning and len(self.in_flight) < self.limits.max_in_flight
                and SMALL_HOLDING <= held < self.limits.max_buffered and self.budget.spent)

    def versioned(self, msg: m.Tversion, msize: int, version: str) -> m.Message:
        """The session was reset for ``msg``: its reply."""
        self.versioning = False
        self.msize = msize
        return m.Rversion(msg.tag, msize, version)

    # --- replies out ---------------------------------------------------------------
    def encode_reply(self, reply: m.Message, name: str = "") -> tuple[list, int]:
        """``reply`` as buffers for sendmsg, and their size, after the size rule;
        counted as buffered until ``sent``."""
        try:
            buffers = encode(reply)
        except (ValueError, TypeError, OverflowError) as exc:
            # A backend handed back something the wire cannot carry (a name with NUL,
            # a field out of range): that request fails, the connection goes on.
            log.error("%s: cannot encode %s: %s", name, type(reply).__name__, exc)
            buffers = encode(m.Rlerror(reply.tag, Errno.EIO))
        size = sum(map(len, buffers)) if len(buffers) > 1 else len(buffers[0])
        if size >= self.msize:
            # Linux's fd/tcp transport drops the whole mount (EIO) on a reply whose size
            # is >= msize, not only > msize. Only variable replies without a count (a
            # huge Rreadlink) can get here.
            log.warning("%s: %s of %d bytes exceeds msize", name, type(reply).__name__, size)
            buffers = encode(m.Rlerror(reply.tag, Errno.ERANGE))
            size = len(buffers[0])
        self.buffered += size
        self.budget.used += size
        return buffers, size

    def sent(self, size: int) -> None:
        self.buffered -= size
        self.budget.used -= size

    def forget_buffered(self) -> None:
        """The connection is gone with replies unsent: give their bytes back."""
        self.budget.used -= self.buffered
        self.buffered = 0


def bad_frame_reply(exc: ProtocolError) -> m.Message | None:
    """A frame that did not decode: the Rlerror that answers it, or None to hang up.

    The codec sets ``exc.tag`` when the frame was well delimited and only its body is
    bad (a name that is not UTF-8, a NUL in a name, 17 walk elements, a body cut short
    inside its frame): the stream is still in step, so that request alone fails --
    EILSEQ for bad UTF-8 (what Linux says for unencodable names), EINVAL otherwise.
    Without a tag the framing itself is broken."""
    if exc.tag is None:
        return None
    code = errno.EILSEQ if NOT_UTF8 in str(exc) else errno.EINVAL
    return m.Rlerror(exc.tag, host_errno_to_wire(code))
