"""The wire layout of every 9P2000.L (and classic 9P2000) message, as construct schemas.

This module is the single source of truth for byte layouts. ``codec.decode_interpreted``
and ``codec.encode_interpreted`` run these schemas through construct's interpreter;
``fastpath`` walks the very same objects and generates specialised Python from them.

Every frame is ``size[4] type[1] tag[2] body``, little-endian. ``BODIES`` maps the type
byte to one ``Struct`` describing the body; its field names are exactly the field names
of the frozen message class in ``messages.py`` (minus ``tag``), so a body converts to a
message without a per-message table. Layouts are from the Linux kernel's
``include/net/9p/9p.h`` / ``net/9p/protocol.c`` (format letters b=u8 w=u16 d=u32 q=u64
s=string Q=qid) and diod's ``protocol.md``.

The vocabulary is deliberately small, because ``fastpath`` has to understand all of it:

* ``Int8ul`` .. ``Int64ul`` (construct ``FormatField``)
* ``Record(Struct(...), cls)``: a nested structure that surfaces as ``cls`` (Qid, Dirent, Stat)
* ``String9P``: ``s`` = len[2] + UTF-8 bytes; invalid UTF-8 or an embedded NUL is refused
* ``BoundedArray(Int16ul, element, maximum)``: n[2] then n elements, n <= maximum
* ``Payload``: count[4] + data[count], bulk data; only ever the last field of a body
* ``Sized(Int16ul, subcon)``: n[2] then exactly n bytes holding ``subcon`` (classic stat)

NUL handling: 9P strings are counted, but every real consumer (the kernel, POSIX file
names, diod) treats them as C strings. A NUL would let ``"a\\0/../x"`` mean different
things to different layers, so a string containing NUL is refused at decode time with
``ProtocolError`` and at encode time with ``ValueError``: no NUL ever reaches the server.
"""

from __future__ import annotations

import io

from construct import (
    Adapter,
    Construct,
    ConstructError,
    Error,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    SizeofError,
    Struct,
    Switch,
    Terminated,
    stream_read,
    stream_size,
    stream_tell,
    stream_write,
    this,
)

from .constants import MAX_WALK_ELEMENTS
from .constants import MessageType as MT
from . import errors
from .errors import ProtocolError
from .messages import Dirent, Qid, Stat

MAX_STRING_BYTES = 0xFFFF
MAX_PAYLOAD_BYTES = 0xFFFFFFFF


# --- the primitive semantics, shared verbatim by the interpreter and the fast path ------

def decode_string(raw: bytes | memoryview) -> str:
    """Bytes of a 9P string -> str. Strict UTF-8, no NUL (see the module docstring)."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(errors.NOT_UTF8) from None
    if "\x00" in text:
        raise ProtocolError(errors.HAS_NUL)
    return text


def encode_string(text: str) -> bytes:
    """str -> bytes of a 9P string; ValueError if it cannot go on the wire."""
    if type(text) is not str:
        raise ValueError(f"9P string must be str, not {type(text).__name__}")
    if "\x00" in text:
        raise ValueError(f"9P string contains NUL: {text!r}")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"9P string is not encodable as UTF-8: {text!r}") from None
    if len(raw) > MAX_STRING_BYTES:
        raise ValueError(f"9P string is {len(raw)} bytes, at most {MAX_STRING_BYTES} fit")
    return raw


def payload_length(data) -> int:
    """Byte length of a bulk buffer (a memoryview's len() counts items, not bytes)."""
    kind = type(data)
    if kind is bytes or kind is bytearray:
        return len(data)
    if kind is memoryview:
        return data.nbytes
    raise ValueError(f"bulk data must be bytes, bytearray or memoryview, not {kind.__name__}")


# --- the vocabulary ------------------------------------------------------------------------

class WireError(ConstructError):
    """A malformed value met by the interpreter; ``problem`` is the errors.* wording and
    construct's ``path`` says where. The codec turns it into ProtocolError."""

    def __init__(self, problem: str, path: str):
        super().__init__(problem, path=path)
        self.problem = problem


class String9P(Construct):
    """s: len[2] then len bytes of UTF-8, no NUL."""

    length = Int16ul

    def _parse(self, stream, context, path):
        length = self.length._parsereport(stream, context, path)
        raw = stream_read(stream, length, path)
        try:
            return decode_string(raw)
        except ProtocolError as e:
            raise WireError(str(e), path) from None

    def _build(self, obj, stream, context, path):
        raw = encode_string(obj)
        self.length._build(len(raw), stream, context, path)
        stream_write(stream, raw, len(raw), path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("a 9P string has no fixed size", path=path)


class BoundedArray(Construct):
    """n[count] then n times ``element``; more than ``maximum`` is a protocol error."""

    def __init__(self, count: Construct, element: Construct, maximum: int):
        super().__init__()
        self.count = count
        self.element = element
        self.maximum = maximum

    def _parse(self, stream, context, path):
        n = self.count._parsereport(stream, context, path)
        if n > self.maximum:
            raise WireError(errors.too_many_elements(n, self.maximum), path)
        return tuple(self.element._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj, stream, context, path):
        if isinstance(obj, str):  # a str is a sequence too: "usr" must not walk u, s, r
            raise ValueError("a 9P array needs a sequence of elements, not a str")
        if len(obj) > self.maximum:
            raise ValueError(f"{len(obj)} elements, at most {self.maximum} allowed")
        self.count._build(len(obj), stream, context, path)
        for item in obj:
            self.element._build(item, stream, context, path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("a 9P array has no fixed size", path=path)


class Payload(Construct):
    """count[4] data[count]: Rread/Twrite/Rreaddir bulk data.

    The interpreter copies the data (it is the slow reference); ``fastpath`` hands out
    a memoryview slice of the frame instead.
    """

    count = Int32ul

    def _parse(self, stream, context, path):
        count = self.count._parsereport(stream, context, path)
        left = stream_size(stream) - stream_tell(stream, path)
        if count > left:
            raise WireError(errors.count_exceeds_data(count, left), path)
        return stream_read(stream, count, path)

    def _build(self, obj, stream, context, path):
        payload_length(obj)  # refuses what is not a buffer, exactly like the fast path
        raw = bytes(obj)
        self.count._build(len(raw), stream, context, path)
        stream_write(stream, raw, len(raw), path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("bulk data has no fixed size", path=path)


class Sized(Construct):
    """n[prefix] then exactly n bytes holding ``subcon`` (classic 9P2000 stat)."""

    def __init__(self, prefix: Construct, subcon: Construct):
        super().__init__()
        self.prefix = prefix
        self.subcon = subcon

    def _parse(self, stream, context, path):
        length = self.prefix._parsereport(stream, context, path)
        inner = io.BytesIO(stream_read(stream, length, path))
        obj = self.subcon._parsereport(inner, context, path)
        if inner.tell() != length:
            raise WireError(errors.size_disagrees(length, inner.tell()), path)
        return obj

    def _build(self, obj, stream, context, path):
        raw = self.subcon.build(obj)
        if len(raw) > MAX_STRING_BYTES:
            raise ValueError(f"sized block of {len(raw)} bytes does not fit its size field")
        self.prefix._build(len(raw), stream, context, path)
        stream_write(stream, raw, len(raw), path)
        return obj

    def _sizeof(self, context, path):
        raise SizeofError("a sized block has no fixed size", path=path)


class Record(Adapter):
    """A nested Struct that surfaces as the frozen class ``cls`` instead of a Container."""

    def __init__(self, struct: Struct, cls: type):
        super().__init__(struct)
        self.cls = cls
        self.field_names = tuple(sc.name for sc in struct.subcons)

    def _decode(self, obj, context, path):
        return self.cls(*(obj[name] for name in self.field_names))

    def _encode(self, obj, context, path):
        return {name: getattr(obj, name) for name in self.field_names}


# --- shared pieces ----------------------------------------------------------------------

u8, u16, u32, u64 = Int8ul, Int16ul, Int32ul, Int64ul
s = String9P()

QID = Record(Struct("type" / u8, "version" / u32, "path" / u64), Qid)

DIRENT = Record(Struct("qid" / QID, "offset" / u64, "type" / u8, "name" / s), Dirent)
"""One Rreaddir entry: qid[13] offset[8] type[1] name[s]."""

# Classic stat: size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
# name[s] uid[s] gid[s] muid[s]; the leading size[2] is the Sized prefix.
STAT = Sized(u16, Record(Struct(
    "type" / u16, "dev" / u32, "qid" / QID, "mode" / u32, "atime" / u32,
    "mtime" / u32, "length" / u64, "name" / s, "uid" / s, "gid" / s, "muid" / s,
), Stat))
# Rstat/Twstat carry stat[n]: one more n[2] in front of the stat's own size[2].
STAT_N = Sized(u16, STAT)

HEADER = Struct("size" / u32, "type" / u8, "tag" / u16)
HEADER_SIZE = 7


def check_header(frame) -> None:
    """Refuse a frame shorter than the header or whose size field is not its length.

    Both decoders do this before anything else, so a frame cut short in transit is
    reported as such and not as whichever field happened to be missing.
    """
    length = len(frame)
    if length < HEADER_SIZE:
        raise ProtocolError(f"frame of {length} bytes is shorter than the 7-byte header")
    size = int.from_bytes(frame[:4], "little")
    if size != length:
        raise ProtocolError(f"size field {size} disagrees with the frame length {length}")


def _body(*fields) -> Struct:
    return Struct(*fields)


BODIES: dict[int, Struct] = {
    # 9P2000.L
    MT.Rlerror: _body("ecode" / u32),
    MT.Tstatfs: _body("fid" / u32),
    MT.Rstatfs: _body("type" / u32, "bsize" / u32, "blocks" / u64, "bfree" / u64,
                      "bavail" / u64, "files" / u64, "ffree" / u64, "fsid" / u64,
                      "namelen" / u32),
    MT.Tlopen: _body("fid" / u32, "flags" / u32),
    MT.Rlopen: _body("qid" / QID, "iounit" / u32),
    MT.Tlcreate: _body("fid" / u32, "name" / s, "flags" / u32, "mode" / u32, "gid" / u32),
    MT.Rlcreate: _body("qid" / QID, "iounit" / u32),
    MT.Tsymlink: _body("fid" / u32, "name" / s, "symtgt" / s, "gid" / u32),
    MT.Rsymlink: _body("qid" / QID),
    MT.Tmknod: _body("dfid" / u32, "name" / s, "mode" / u32, "major" / u32,
                     "minor" / u32, "gid" / u32),
    MT.Rmknod: _body("qid" / QID),
    MT.Trename: _body("fid" / u32, "dfid" / u32, "name" / s),
    MT.Rrename: _body(),
    MT.Treadlink: _body("fid" / u32),
    MT.Rreadlink: _body("target" / s),
    MT.Tgetattr: _body("fid" / u32, "request_mask" / u64),
    MT.Rgetattr: _body("valid" / u64, "qid" / QID, "mode" / u32, "uid" / u32, "gid" / u32,
                       "nlink" / u64, "rdev" / u64, "size" / u64, "blksize" / u64,
                       "blocks" / u64, "atime_sec" / u64, "atime_nsec" / u64,
                       "mtime_sec" / u64, "mtime_nsec" / u64, "ctime_sec" / u64,
                       "ctime_nsec" / u64, "btime_sec" / u64, "btime_nsec" / u64,
                       "gen" / u64, "data_version" / u64),
    MT.Tsetattr: _body("fid" / u32, "valid" / u32, "mode" / u32, "uid" / u32, "gid" / u32,
                       "size" / u64, "atime_sec" / u64, "atime_nsec" / u64,
                       "mtime_sec" / u64, "mtime_nsec" / u64),
    MT.Rsetattr: _body(),
    MT.Txattrwalk: _body("fid" / u32, "newfid" / u32, "name" / s),
    MT.Rxattrwalk: _body("size" / u64),
    MT.Txattrcreate: _body("fid" / u32, "name" / s, "attr_size" / u64, "flags" / u32),
    MT.Rxattrcreate: _body(),
    MT.Treaddir: _body("fid" / u32, "offset" / u64, "count" / u32),
    MT.Rreaddir: _body("data" / Payload()),
    MT.Tfsync: _body("fid" / u32, "datasync" / u32),
    MT.Rfsync: _body(),
    MT.Tlock: _body("fid" / u32, "type" / u8, "flags" / u32, "start" / u64, "length" / u64,
                    "proc_id" / u32, "client_id" / s),
    MT.Rlock: _body("status" / u8),
    MT.Tgetlock: _body("fid" / u32, "type" / u8, "start" / u64, "length" / u64,
                       "proc_id" / u32, "client_id" / s),
    MT.Rgetlock: _body("type" / u8, "start" / u64, "length" / u64, "proc_id" / u32,
                       "client_id" / s),
    MT.Tlink: _body("dfid" / u32, "fid" / u32, "name" / s),
    MT.Rlink: _body(),
    MT.Tmkdir: _body("dfid" / u32, "name" / s, "mode" / u32, "gid" / u32),
    MT.Rmkdir: _body("qid" / QID),
    MT.Trenameat: _body("olddirfid" / u32, "oldname" / s, "newdirfid" / u32, "newname" / s),
    MT.Rrenameat: _body(),
    MT.Tunlinkat: _body("dirfid" / u32, "name" / s, "flags" / u32),
    MT.Runlinkat: _body(),
    # shared with classic 9P2000
    MT.Tversion: _body("msize" / u32, "version" / s),
    MT.Rversion: _body("msize" / u32, "version" / s),
    MT.Tauth: _body("afid" / u32, "uname" / s, "aname" / s, "n_uname" / u32),
    MT.Rauth: _body("aqid" / QID),
    MT.Tattach: _body("fid" / u32, "afid" / u32, "uname" / s, "aname" / s, "n_uname" / u32),
    MT.Rattach: _body("qid" / QID),
    MT.Rerror: _body("ename" / s),
    MT.Tflush: _body("oldtag" / u16),
    MT.Rflush: _body(),
    MT.Twalk: _body("fid" / u32, "newfid" / u32,
                    "wnames" / BoundedArray(u16, s, MAX_WALK_ELEMENTS)),
    MT.Rwalk: _body("qids" / BoundedArray(u16, QID, MAX_WALK_ELEMENTS)),
    MT.Topen: _body("fid" / u32, "mode" / u8),
    MT.Ropen: _body("qid" / QID, "iounit" / u32),
    MT.Tcreate: _body("fid" / u32, "name" / s, "perm" / u32, "mode" / u8),
    MT.Rcreate: _body("qid" / QID, "iounit" / u32),
    MT.Tread: _body("fid" / u32, "offset" / u64, "count" / u32),
    MT.Rread: _body("data" / Payload()),
    MT.Twrite: _body("fid" / u32, "offset" / u64, "data" / Payload()),
    MT.Rwrite: _body("count" / u32),
    MT.Tclunk: _body("fid" / u32),
    MT.Rclunk: _body(),
    MT.Tremove: _body("fid" / u32),
    MT.Rremove: _body(),
    MT.Tstat: _body("fid" / u32),
    MT.Rstat: _body("stat" / STAT_N),
    MT.Twstat: _body("fid" / u32, "stat" / STAT_N),
    MT.Rwstat: _body(),
}
"""Type byte -> body schema. Tlerror and Terror are absent on purpose: never valid."""

FRAME = Struct(
    "size" / u32,
    "type" / u8,
    "tag" / u16,
    "body" / Switch(this.type, BODIES, default=Error),
    Terminated,
)
"""A whole frame. An unknown type hits ``Error`` (construct's Switch would otherwise
"succeed" with an empty body); bytes after the body hit ``Terminated``."""


def body_field_names(type_byte: int) -> tuple[str, ...]:
    """Field names of a body, in wire order (== the message class fields after tag)."""
    return tuple(sc.name for sc in BODIES[type_byte].subcons)
