"""Every 9P2000.L message (and the classic 9P2000 ones) as a frozen, slotted class.

Field names follow the Linux kernel's ``net/9p/protocol.c`` / diod's ``protocol.md``.
``tag`` is always the first field. ``TYPE`` names the wire type byte. Sizes of fields
are in the construct schema (``schema.py``), the single source of truth for the wire;
these classes only say what a message *is*.

Bulk payloads (``Tread``'s reply ``Rread.data``, ``Twrite.data``, ``Rreaddir.data``)
are ``bytes`` or a ``memoryview`` so they can travel without copies.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Union

from .constants import MessageType as MT

Buffer = Union[bytes, bytearray, memoryview]

#: Marks an ``__init__`` made by ``_frozen``: it builds exactly what the dataclass's own
#: would (fastpath.py relies on that to build messages without calling it).
PLAIN_INIT_FILE = "<ninep.protocol.messages init>"


def _frozen(cls):
    """``dataclass(frozen=True, slots=True)``, with an ``__init__`` that stores each
    field through its slot descriptor. The dataclass's own goes through
    ``object.__setattr__`` per field (a frozen class may not use plain stores): 5 us
    for Rgetattr's 21 fields on a slow machine, ~2.5x the descriptor stores. Every
    reply the server builds pays it, so it is worth the dozen lines. Classes with
    defaults or ``__post_init__`` keep the dataclass's."""
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            or not f.init for f in fields):
        return cls
    names = [f.name for f in fields]
    namespace = {f"_set_{name}": cls.__dict__[name].__set__ for name in names}
    source = (f"def __init__(self, {', '.join(names)}):\n"
              + "".join(f"    _set_{name}(self, {name})\n" for name in names))
    exec(compile(source, PLAIN_INIT_FILE, "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


@_frozen
class Qid:
    """qid[13]: type[1] version[4] path[8] -- the server's identity for a file."""

    type: int
    version: int
    path: int


@_frozen
class Dirent:
    """One Rreaddir entry: qid[13] offset[8] type[1] name[s]."""

    qid: Qid
    offset: int
    type: int
    name: str


@_frozen
class Stat:
    """Classic 9P2000 stat[n] (only so that Rstat/Twstat can be parsed and refused)."""

    type: int
    dev: int
    qid: Qid
    mode: int
    atime: int
    mtime: int
    length: int
    name: str
    uid: str
    gid: str
    muid: str


class Message:
    """Base of all messages. ``TYPE`` is the wire type; every subclass has ``tag``."""

    __slots__ = ()
    TYPE: ClassVar[MT]
    tag: int


def _message(cls):
    return _frozen(cls)


# --- 9P2000.L --------------------------------------------------------------------

@_message
class Tlerror(Message):
    """Never sent by a correct peer; named so the codec can refuse it."""
    TYPE: ClassVar[MT] = MT.Tlerror
    tag: int


@_message
class Rlerror(Message):
    """size[4] Rlerror tag[2] ecode[4] -- ecode is a Linux errno."""
    TYPE: ClassVar[MT] = MT.Rlerror
    tag: int
    ecode: int


@_message
class Tstatfs(Message):
    TYPE: ClassVar[MT] = MT.Tstatfs
    tag: int
    fid: int


@_message
class Rstatfs(Message):
    TYPE: ClassVar[MT] = MT.Rstatfs
    tag: int
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


@_message
class Tlopen(Message):
    TYPE: ClassVar[MT] = MT.Tlopen
    tag: int
    fid: int
    flags: int


@_message
class Rlopen(Message):
    TYPE: ClassVar[MT] = MT.Rlopen
    tag: int
    qid: Qid
    iounit: int


@_message
class Tlcreate(Message):
    TYPE: ClassVar[MT] = MT.Tlcreate
    tag: int
    fid: int
    name: str
    flags: int
    mode: int
    gid: int


@_message
class Rlcreate(Message):
    TYPE: ClassVar[MT] = MT.Rlcreate
    tag: int
    qid: Qid
    iounit: int


@_message
class Tsymlink(Message):
    TYPE: ClassVar[MT] = MT.Tsymlink
    tag: int
    fid: int
    name: str
    symtgt: str
    gid: int


@_message
class Rsymlink(Message):
    TYPE: ClassVar[MT] = MT.Rsymlink
    tag: int
    qid: Qid


@_message
class Tmknod(Message):
    TYPE: ClassVar[MT] = MT.Tmknod
    tag: int
    dfid: int
    name: str
    mode: int
    major: int
    minor: int
    gid: int


@_message
class Rmknod(Message):
    TYPE: ClassVar[MT] = MT.Rmknod
    tag: int
    qid: Qid


@_message
class Trename(Message):
    TYPE: ClassVar[MT] = MT.Trename
    tag: int
    fid: int
    dfid: int
    name: str


@_message
class Rrename(Message):
    TYPE: ClassVar[MT] = MT.Rrename
    tag: int


@_message
class Treadlink(Message):
    TYPE: ClassVar[MT] = MT.Treadlink
    tag: int
    fid: int


@_message
class Rreadlink(Message):
    TYPE: ClassVar[MT] = MT.Rreadlink
    tag: int
    target: str


@_message
class Tgetattr(Message):
    TYPE: ClassVar[MT] = MT.Tgetattr
    tag: int
    fid: int
    request_mask: int


@_message
class Rgetattr(Message):
    TYPE: ClassVar[MT] = MT.Rgetattr
    tag: int
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int


@_message
class Tsetattr(Message):
    TYPE: ClassVar[MT] = MT.Tsetattr
    tag: int
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@_message
class Rsetattr(Message):
    TYPE: ClassVar[MT] = MT.Rsetattr
    tag: int


@_message
class Txattrwalk(Message):
    TYPE: ClassVar[MT] = MT.Txattrwalk
    tag: int
    fid: int
    newfid: int
    name: str


@_message
class Rxattrwalk(Message):
    TYPE: ClassVar[MT] = MT.Rxattrwalk
    tag: int
    size: int


@_message
class Txattrcreate(Message):
    TYPE: ClassVar[MT] = MT.Txattrcreate
    tag: int
    fid: int
    name: str
    attr_size: int
    flags: int


@_message
class Rxattrcreate(Message):
    TYPE: ClassVar[MT] = MT.Rxattrcreate
    tag: int


@_message
class Treaddir(Message):
    TYPE: ClassVar[MT] = MT.Treaddir
    tag: int
    fid: int
    offset: int
    count: int


@_message
class Rreaddir(Message):
    """count[4] data[count]: packed Dirent records (see ``codec.pack_dirents``)."""
    TYPE: ClassVar[MT] = MT.Rreaddir
    tag: int
    data: Buffer


@_message
class Tfsync(Message):
    TYPE: ClassVar[MT] = MT.Tfsync
    tag: int
    fid: int
    datasync: int


@_message
class Rfsync(Message):
    TYPE: ClassVar[MT] = MT.Rfsync
    tag: int


@_message
class Tlock(Message):
    TYPE: ClassVar[MT] = MT.Tlock
    tag: int
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: str


@_message
class Rlock(Message):
    TYPE: ClassVar[MT] = MT.Rlock
    tag: int
    status: int


@_message
class Tgetlock(Message):
    TYPE: ClassVar[MT] = MT.Tgetlock
    tag: int
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str


@_message
class Rgetlock(Message):
    TYPE: ClassVar[MT] = MT.Rgetlock
    tag: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str


@_message
class Tlink(Message):
    TYPE: ClassVar[MT] = MT.Tlink
    tag: int
    dfid: int
    fid: int
    name: str


@_message
class Rlink(Message):
    TYPE: ClassVar[MT] = MT.Rlink
    tag: int


@_message
class Tmkdir(Message):
    TYPE: ClassVar[MT] = MT.Tmkdir
    tag: int
    dfid: int
    name: str
    mode: int
    gid: int


@_message
class Rmkdir(Message):
    TYPE: ClassVar[MT] = MT.Rmkdir
    tag: int
    qid: Qid


@_message
class Trenameat(Message):
    TYPE: ClassVar[MT] = MT.Trenameat
    tag: int
    olddirfid: int
    oldname: str
    newdirfid: int
    newname: str


@_message
class Rrenameat(Message):
    TYPE: ClassVar[MT] = MT.Rrenameat
    tag: int


@_message
class Tunlinkat(Message):
    TYPE: ClassVar[MT] = MT.Tunlinkat
    tag: int
    dirfid: int
    name: str
    flags: int


@_message
class Runlinkat(Message):
    TYPE: ClassVar[MT] = MT.Runlinkat
    tag: int


# --- shared with classic 9P2000 ------------------------------------------------------

@_message
class Tversion(Message):
    TYPE: ClassVar[MT] = MT.Tversion
    tag: int
    msize: int
    version: str


@_message
class Rversion(Message):
    TYPE: ClassVar[MT] = MT.Rversion
    tag: int
    msize: int
    version: str


@_message
class Tauth(Message):
    TYPE: ClassVar[MT] = MT.Tauth
    tag: int
    afid: int
    uname: str
    aname: str
    n_uname: int


@_message
class Rauth(Message):
    TYPE: ClassVar[MT] = MT.Rauth
    tag: int
    aqid: Qid


@_message
class Tattach(Message):
    TYPE: ClassVar[MT] = MT.Tattach
    tag: int
    fid: int
    afid: int
    uname: str
    aname: str
    n_uname: int


@_message
class Rattach(Message):
    TYPE: ClassVar[MT] = MT.Rattach
    tag: int
    qid: Qid


@_message
class Terror(Message):
    """Never valid on the wire; named so the codec can refuse it."""
    TYPE: ClassVar[MT] = MT.Terror
    tag: int


@_message
class Rerror(Message):
    """Classic 9P2000 error: ename[s] (no errno; that is 9P2000.u's extension)."""
    TYPE: ClassVar[MT] = MT.Rerror
    tag: int
    ename: str


@_message
class Tflush(Message):
    TYPE: ClassVar[MT] = MT.Tflush
    tag: int
    oldtag: int


@_message
class Rflush(Message):
    TYPE: ClassVar[MT] = MT.Rflush
    tag: int


@_message
class Twalk(Message):
    TYPE: ClassVar[MT] = MT.Twalk
    tag: int
    fid: int
    newfid: int
    wnames: tuple[str, ...]


@_message
class Rwalk(Message):
    TYPE: ClassVar[MT] = MT.Rwalk
    tag: int
    qids: tuple[Qid, ...]


@_message
class Topen(Message):
    TYPE: ClassVar[MT] = MT.Topen
    tag: int
    fid: int
    mode: int


@_message
class Ropen(Message):
    TYPE: ClassVar[MT] = MT.Ropen
    tag: int
    qid: Qid
    iounit: int


@_message
class Tcreate(Message):
    TYPE: ClassVar[MT] = MT.Tcreate
    tag: int
    fid: int
    name: str
    perm: int
    mode: int


@_message
class Rcreate(Message):
    TYPE: ClassVar[MT] = MT.Rcreate
    tag: int
    qid: Qid
    iounit: int


@_message
class Tread(Message):
    TYPE: ClassVar[MT] = MT.Tread
    tag: int
    fid: int
    offset: int
    count: int


@_message
class Rread(Message):
    TYPE: ClassVar[MT] = MT.Rread
    tag: int
    data: Buffer


@_message
class Twrite(Message):
    TYPE: ClassVar[MT] = MT.Twrite
    tag: int
    fid: int
    offset: int
    data: Buffer


@_message
class Rwrite(Message):
    TYPE: ClassVar[MT] = MT.Rwrite
    tag: int
    count: int


@_message
class Tclunk(Message):
    TYPE: ClassVar[MT] = MT.Tclunk
    tag: int
    fid: int


@_message
class Rclunk(Message):
    TYPE: ClassVar[MT] = MT.Rclunk
    tag: int


@_message
class Tremove(Message):
    TYPE: ClassVar[MT] = MT.Tremove
    tag: int
    fid: int


@_message
class Rremove(Message):
    TYPE: ClassVar[MT] = MT.Rremove
    tag: int


@_message
class Tstat(Message):
    TYPE: ClassVar[MT] = MT.Tstat
    tag: int
    fid: int


@_message
class Rstat(Message):
    TYPE: ClassVar[MT] = MT.Rstat
    tag: int
    stat: Stat


@_message
class Twstat(Message):
    TYPE: ClassVar[MT] = MT.Twstat
    tag: int
    fid: int
    stat: Stat


@_message
class Rwstat(Message):
    TYPE: ClassVar[MT] = MT.Rwstat
    tag: int


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, Message) and cls is not Message
}
