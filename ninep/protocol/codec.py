"""The 9P codec: frames <-> message objects, shared by the server and the client.

Sans-I/O: bytes in, messages out, and back; no trio, no sockets, no os calls.

* ``decode(frame)``: one whole frame (size[4] included) -> a frozen message from
  ``messages.py``. Every length is checked; anything malformed raises ``ProtocolError``
  naming the message, the field and the problem. Bulk data (``Rread.data``,
  ``Twrite.data``, ``Rreaddir.data``) comes back as a memoryview slice of ``frame``.
* ``encode(msg)``: a list of buffers for ``socket.sendmsg``: the header and fixed part
  first, then -- for Rread/Twrite/Rreaddir -- the caller's payload object itself,
  uncopied. ``encode_bytes`` joins them. Messages that cannot be encoded raise ValueError.
* ``FrameReader``: reassembles frames from a byte stream, bounded by msize.
* ``pack_dirents`` / ``unpack_dirents``: the records inside Rreaddir.data.

``decode``/``encode`` run the code ``fastpath`` generated from ``schema``;
``decode_interpreted``/``encode_interpreted`` run the construct schema itself and are the
reference the fast path is tested against.
"""

from __future__ import annotations

import io
import struct
from collections import deque
from typing import Iterable

from construct import ConstructError, ExplicitError, StreamError, TerminatedError

from . import errors, fastpath, schema
from .constants import MessageType
from .errors import ProtocolError
from .messages import MESSAGE_CLASSES, Dirent, Message, Qid

__all__ = [
    "ProtocolError", "decode", "encode", "encode_bytes", "decode_interpreted",
    "encode_interpreted", "FrameReader", "pack_dirents", "unpack_dirents",
    "unpack_dirents_interpreted", "dirent_size", "check_header", "pack_dirent_fields",
    "DIRENT_HEAD",
]

_SIZE = struct.Struct("<I")
HEADER_SIZE = schema.HEADER_SIZE
check_header = schema.check_header


def _type_name(type_byte: int) -> str:
    try:
        return MessageType(type_byte).name
    except ValueError:
        return f"type {type_byte}"


def unknown_type(type_byte: int) -> ProtocolError:
    if type_byte in MESSAGE_CLASSES:
        return ProtocolError(f"unknown message type {type_byte} "
                             f"({MESSAGE_CLASSES[type_byte].__name__} is never valid on the wire)")
    return ProtocolError(f"unknown message type {type_byte}")


# --- the interpreted reference ---------------------------------------------------------

def _field_of(path: str | None, skip: int = 2) -> str:
    """construct's error path "(parsing) -> body -> qid -> type" -> "qid.type"."""
    parts = (path or "").split(" -> ")
    return ".".join(parts[skip:])


def decode_interpreted(frame) -> Message:
    """``decode`` done by construct's interpreter over ``schema.FRAME`` (slow, reference)."""
    try:
        return _decode_interpreted(frame)
    except ProtocolError as e:
        raise errors.attach_header(e, frame)


def _decode_interpreted(frame) -> Message:
    check_header(frame)
    type_byte = frame[4]
    name = _type_name(type_byte)
    try:
        parsed = schema.FRAME.parse(frame)
    except ExplicitError:
        raise unknown_type(type_byte) from None
    except schema.WireError as e:
        raise errors.in_message(name, _field_of(e.path), e.problem) from None
    except StreamError as e:
        raise errors.in_message(name, _field_of(e.path), errors.TRUNCATED) from None
    except TerminatedError:
        raise errors.in_message(name, "", errors.TRAILING) from None
    except ConstructError as e:  # pragma: no cover - the schema raises only the above
        raise errors.in_message(name, _field_of(e.path), str(e)) from None
    cls = MESSAGE_CLASSES[type_byte]
    body = parsed.body
    return cls(parsed.tag, *(body[field] for field in schema.body_field_names(type_byte)))


def encode_interpreted(msg: Message) -> list[bytes]:
    """``encode`` done by construct's builder over ``schema.BODIES`` (slow, reference)."""
    body_schema = schema.BODIES.get(getattr(msg, "TYPE", None))
    if body_schema is None:
        raise ValueError(f"{type(msg).__name__} cannot be encoded")
    fields = {name: getattr(msg, name) for name in schema.body_field_names(msg.TYPE)}
    try:
        body = body_schema.build(fields)
        header = schema.HEADER.build(
            {"size": HEADER_SIZE + len(body), "type": msg.TYPE, "tag": msg.tag})
    except ConstructError as e:
        raise ValueError(f"cannot encode {type(msg).__name__}: {e}") from None
    frame = header + body
    last_field = body_schema.subcons[-1] if body_schema.subcons else None
    if last_field is not None and isinstance(last_field.subcon, schema.Payload):
        cut = len(frame) - schema.payload_length(getattr(msg, last_field.name))
        return [frame[:cut], frame[cut:]]
    return [frame]


# --- the public API (fast path) --------------------------------------------------------

_DECODERS = fastpath.DECODERS
_ENCODERS = fastpath.ENCODERS


def decode(frame) -> Message:
    """One whole frame -> message. Raises ProtocolError for anything malformed."""
    try:
        decoder = _DECODERS[frame[4]]
    except (IndexError, KeyError):
        check_header(frame)
        raise errors.attach_header(unknown_type(frame[4]), frame) from None
    try:
        return decoder(frame)
    except ProtocolError as e:
        raise errors.attach_header(e, frame)


def encode(msg: Message) -> list:
    """Message -> buffers for sendmsg: [header + fixed part] or [that, payload]."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise ValueError(f"{type(msg).__name__} cannot be encoded")
    return encoder(msg)


def encode_bytes(msg: Message) -> bytes:
    """Message -> one bytes object (copies the payload; for tests and small messages)."""
    return b"".join(encode(msg))


# --- framing -------------------------------------------------------------------------------

class FrameReader:
    """Reassemble whole frames from bytes as they arrive.

    ``feed(data)`` takes bytes (it copies what it keeps, so ``data`` may be a view of
    a buffer the caller reuses at once); ``next_frame()`` returns one whole frame
    (size field included) or None if more bytes are needed. A size field below 7 or
    above ``msize`` raises ProtocolError as soon as its 4 bytes are in, without waiting
    for the body (a hostile peer must not make us buffer 4 GiB); frames before it are
    still returned first. After an error the stream is out of step for good, so every
    later call raises the same error.

    A frame of ``big_frame`` bytes or more (a 1 MiB Twrite) gets a buffer of its own,
    sized to it, and is returned as a memoryview of that buffer, which becomes the
    message's payload without another copy. While such a frame is incomplete,
    ``receive_buffer()`` names the part of it still missing, so that a reader can
    ``recv_into`` it directly and report with ``received(n)``; otherwise it is None and
    bytes come through ``feed``. Smaller frames are returned as ``bytes``.

    Memory held is what is in flight: the tail of a frame begun, nothing when idle. A
    big frame gets its buffer once a quarter of it has come (until then its start is
    kept with the small bytes), so what a peer makes us hold is at most four times what
    it sent. A frame trickling in is not re-split on each arrival, only once enough is
    there for it.
    """

    def __init__(self, msize: int, big_frame: int = 128 * 1024):
        self.msize = msize
        self.big_frame = big_frame
        self._buffer = bytearray()  # the start of a frame that is not complete yet
        self._ready: deque = deque()  # whole frames not yet returned, oldest first
        self._big: bytearray | None = None  # a big frame being filled ...
        self._big_filled = 0  # ... with this many bytes so far
        self._error: ProtocolError | None = None
        self._need = 0  # length ``_buffer`` must reach before splitting it can progress
        self._held_big = False  # _buffer starts with a big frame not given its buffer yet
        self._allot = False

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        ready = sum(map(len, self._ready))
        return len(self._buffer) + ready + (self._big_filled if self._big is not None else 0)

    @property
    def big_wanting(self) -> int:
        """Bytes a big frame whose start is held still lacks before it gets its own
        buffer (0: none is held). A reader that sees that many already queued on its
        socket may ``allot`` the buffer now and receive straight into it."""
        return self._need - len(self._buffer) if self._held_big else 0

    def allot(self) -> None:
        """Give the big frame whose start is held its own buffer now."""
        if not self._held_big or self._error is not None:
            return
        self._allot = True
        try:
            with memoryview(self._buffer) as view:
                rest = self._split(view)
                tail = bytes(rest)
                rest.release()
        finally:
            self._allot = False
        self._buffer = bytearray(tail)

    def receive_buffer(self) -> memoryview | None:
        """Where the rest of a big frame begun should go (for ``recv_into``), or None."""
        if self._big is None:
            return None
        return memoryview(self._big)[self._big_filled:]

    def received(self, count: int) -> None:
        """``count`` bytes were written into ``receive_buffer()``."""
        self._big_filled += count
        if self._big_filled == len(self._big):
            self._ready.append(memoryview(self._big))
            self._big = None

    def feed(self, data) -> None:
        if self._error is not None:
            return
        if not self._buffer and self._big is None and len(data) >= 4:
            # Exactly one small frame and nothing pending: what a one-at-a-time client
            # (a VM's root) sends each time. Half the cost of the general split.
            size = int.from_bytes(data[:4], "little")
            if size == len(data) and HEADER_SIZE <= size <= self.msize and size < self.big_frame:
                self._ready.append(bytes(data))
                return
        if self._big is not None:
            target = self.receive_buffer()
            take = min(len(target), len(data))
            target[:take] = data[:take]
            self.received(take)
            if take == len(data):
                return
            data = memoryview(data)[take:]
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return  # still short of the frame begun: no split, no copy (a trickle)
            with memoryview(self._buffer) as view:
                rest = self._split(view)
                tail = bytes(rest)
                rest.release()
            self._buffer = bytearray(tail)
        else:
            with memoryview(data) as view:
                rest = self._split(view)
                if len(rest):
                    self._buffer = bytearray(rest)
                rest.release()

    def _split(self, view: memoryview) -> memoryview:
        """Take the whole frames at the start of ``view``; return what is left (the
        start of a big frame goes to a buffer of its own)."""
        ready = self._ready
        start, end = 0, len(view)
        self._need = 0
        self._held_big = False
        while end - start >= 4:
            size = int.from_bytes(view[start:start + 4], "little")
            if size < HEADER_SIZE or size > self.msize:
                self._error = ProtocolError(
                    f"size field {size} outside 7..msize ({self.msize})")
                return view[end:]
            if size >= self.big_frame:
                if end - start < size >> 2 and not self._allot:
                    # Its own buffer, sized to it, only once a quarter of it is here: a
                    # peer that announces 1 MiB and sends ten bytes (on each of many
                    # connections) makes us hold ten bytes, not 1 MiB.
                    self._need = size >> 2
                    self._held_big = True
                    break
                self._big = bytearray(size)
                take = min(size, end - start)
                self._big[:take] = view[start:start + take]
                self._big_filled = take
                start += take
                if take < size:
                    return view[start:]
                ready.append(memoryview(self._big))
                self._big = None
                continue
            if end - start < size:
                self._need = size
                break
            ready.append(bytes(view[start:start + size]))
            start += size
        else:
            if end > start:
                self._need = 4  # a size field cut short
        return view[start:]

    def next_frame(self):
        if self._ready:
            frame = self._ready.popleft()
            if len(frame) > self.msize:  # msize went down (Tversion) after it came in
                self._error = ProtocolError(
                    f"size field {len(frame)} outside 7..msize ({self.msize})")
                raise self._error
            return frame
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) >= 4:  # a size field judged again under a changed msize
            size = int.from_bytes(buffer[:4], "little")
            if size > self.msize:
                self._error = ProtocolError(
                    f"size field {size} outside 7..msize ({self.msize})")
                raise self._error
        return None

    def __iter__(self):
        """Iterate over the whole frames available now."""
        while (frame := self.next_frame()) is not None:
            yield frame


# --- Rreaddir records ----------------------------------------------------------------------

# qid[13] offset[8] type[1] + the name's len[2], measured on the schema, not restated.
_DIRENT_FIXED_SIZE = len(fastpath.encode_dirent(Dirent(Qid(0, 0, 0), 0, 0, "")))

pack_dirent_fields = fastpath.pack_dirent_fields
"""``pack_dirent_fields(qid_type, qid_version, qid_path, offset, type, name) -> bytes``:
one record from plain values; ``name`` is UTF-8 bytes without NUL (the caller checks).
For backends that turn their own listings into records without Dirent objects."""

DIRENT_HEAD = fastpath.DIRENT_HEAD
"""struct.Struct of a record up to its name: qid.type qid.version qid.path offset type
and the name's length; the name's bytes follow. Generated from ``schema.DIRENT``."""


def dirent_size(name: str) -> int:
    """Wire size of one Rreaddir record: qid[13] offset[8] type[1] name[s]."""
    return _DIRENT_FIXED_SIZE + len(name.encode("utf-8"))


def pack_dirents(entries: Iterable[Dirent], count: int) -> tuple[bytes, int]:
    """Pack as many ``entries`` as fit in ``count`` bytes -> (data, number packed).

    Stops at the first entry that does not fit, so the caller resumes from that
    entry's predecessor's ``offset`` on the next Treaddir.
    """
    encode_dirent = fastpath.encode_dirent
    parts = []
    used = 0
    packed = 0
    for entry in entries:
        record = encode_dirent(entry)
        if used + len(record) > count:
            break
        parts.append(record)
        used += len(record)
        packed += 1
    return b"".join(parts), packed


def unpack_dirents(data) -> list[Dirent]:
    """Rreaddir.data -> Dirents. Raises ProtocolError on a malformed record."""
    end = schema.payload_length(data)
    if type(data) is not bytes:
        data = bytes(data)  # one copy; the decoder wants bytes for its fast UTF-8 path
    return fastpath.decode_dirents(data, end)


def unpack_dirents_interpreted(data) -> list[Dirent]:
    """``unpack_dirents`` by construct's interpreter (reference for the tests)."""
    raw = bytes(data)
    stream = io.BytesIO(raw)
    entries = []
    while stream.tell() < len(raw):
        try:
            entries.append(schema.DIRENT.parse_stream(stream))
        except schema.WireError as e:
            raise errors.in_message("Dirent", _field_of(e.path, 1), e.problem) from None
        except StreamError as e:
            raise errors.in_message("Dirent", _field_of(e.path, 1), errors.TRUNCATED) from None
    return entries
