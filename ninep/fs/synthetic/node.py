"""The base of every synthetic node, and the context objects callbacks receive.

A *node* is one file in a synthetic tree (a directory, a static file, a control file...).
It is not a fid: many fids (``ninep.fs.synthetic.adapter.SyntheticFile``) may point at
one node. A node owns its metadata (mode, owner, times, qid path); an *open* of a node
is a ``Handle``, which owns the per-open state (a content snapshot, a stream
subscription, a control file's reply).

Callbacks written by users may take the context or not: ``fn()`` or ``fn(ctx)`` for
content, ``fn(data)`` or ``fn(data, ctx)`` for writes. ``callback`` decides once, from
the signature (required positional parameters: ones with defaults bind values, they
do not receive the context), and awaits the result when the function is async.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar

from ...protocol.constants import DirentType, GetattrMask, OpenFlags, QidType, SetattrMask, ACCMODE
from ...protocol.messages import Qid
from ..backend import Attr, Credentials, SetAttr, errno_error

# One counter for the whole process: every node gets a qid path no other node has, and
# keeps it for life (hard links are one node under two names, so they share it).
_qid_paths = itertools.count(1)

QID_VERSION_MASK = 0xFFFFFFFF


def now_ns() -> int:
    return time.time_ns()


def callback(fn: Callable[..., Any], n_args: int) -> Callable[..., Awaitable[Any]]:
    """Adapt a user function taking ``n_args`` or ``n_args + 1`` (the context last)
    positional arguments, sync or async, to ``async f(*args, ctx)``."""
    try:
        params = inspect.signature(fn).parameters.values()
        # Parameters with defaults do not count: ``lambda s=session: ...`` binds a value.
        required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                    and p.default is p.empty]
        takes_ctx = len(required) > n_args or any(p.kind == p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):  # builtins without a signature: never pass a context
        takes_ctx = False

    async def call(*args: Any) -> Any:
        result = fn(*args) if takes_ctx else fn(*args[:n_args])
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


def as_bytes(content: Any) -> bytes:
    """What a content function may return: bytes-like, str (UTF-8), or None (empty)."""
    if content is None:
        return b""
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    raise TypeError(f"file content must be bytes or str, not {type(content).__name__}")


def opens_for_reading(flags: int) -> bool:
    return (flags & ACCMODE) in (OpenFlags.RDONLY, OpenFlags.RDWR)


def opens_for_writing(flags: int) -> bool:
    return (flags & ACCMODE) in (OpenFlags.WRONLY, OpenFlags.RDWR) or bool(flags & OpenFlags.TRUNC)


@dataclass(eq=False)
class Session:
    """One attach: everything its fids share. Nodes keep per-connection state in
    ``data``; ``stats`` counts what the session did (the ctl example shows them).

    A session ends when its last fid is closed (clunk or disconnect); then the
    functions in ``on_close`` run (sync, so they cannot block teardown)."""

    filesystem: Any
    aname: str
    creds: Credentials
    id: int
    started: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("walks", "opens", "reads", "writes", "bytes_read", "bytes_written"), 0
        )
    )
    on_close: list[Callable[["Session"], None]] = field(default_factory=list)
    fids: int = 0


@dataclass(eq=False)
class OpenContext:
    """One open of one node: what a content/write/stream callback is told.
    ``state`` is free for the node's handler to keep per-open data in."""

    session: Session
    node: "Node"
    flags: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def reading(self) -> bool:
        return opens_for_reading(self.flags)

    @property
    def writing(self) -> bool:
        return opens_for_writing(self.flags)


class Handle:
    """One open of a node (per-open state). Default: nothing to read, writes refused."""

    def __init__(self, ctx: OpenContext):
        self.ctx = ctx

    async def read(self, offset: int, count: int) -> bytes:
        return b""

    async def write(self, offset: int, data: memoryview) -> int:
        raise errno_error(errno.EBADF, "not open for writing")

    async def close(self) -> None:
        return None


class DirectoryHandle(Handle):
    """An open directory: the listing snapshotted at open, so readdir offsets
    stay meaningful while the directory changes."""

    def __init__(self, ctx: OpenContext, children: list[tuple[str, "Node"]]):
        super().__init__(ctx)
        self.children = children


class Node:
    """Metadata shared by every node. Subclasses set ``FILE_TYPE`` and say whether they
    can be read or written; ``open`` returns a ``Handle``.

    Keyword arguments every node takes: ``mode`` (permission bits), ``uid``/``gid``
    (default: the server process's), ``mtime`` (seconds since the epoch, default now).
    """

    FILE_TYPE: ClassVar[int] = stat.S_IFREG
    DEFAULT_MODE: ClassVar[int] = 0o444
    readable: bool = True
    writable: bool = False

    def __init__(self, *, mode: int | None = None, uid: int | None = None,
                 gid: int | None = None, mtime: float | None = None):
        self.qid_path = next(_qid_paths)
        self.mode = self.DEFAULT_MODE if mode is None else mode & 0o7777
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        stamp = now_ns() if mtime is None else int(mtime * 1_000_000_000)
        self.atime_ns = self.mtime_ns = self.ctime_ns = stamp
        self.links = 0  # directory entries naming this node (kept by Directory)
        self.xattrs: dict[str, bytes] | None = None  # None: extended attributes unsupported

    # --- identity -------------------------------------------------------------------
    @property
    def version(self) -> int:
        """qid.version: 0 for content that never changes; subclasses with changing
        content bump it so clients do not trust cached data."""
        return 0

    @property
    def qid_type(self) -> int:
        return {stat.S_IFDIR: QidType.DIR, stat.S_IFLNK: QidType.SYMLINK}.get(
            self.FILE_TYPE, QidType.FILE)

    @property
    def dirent_type(self) -> int:
        return {stat.S_IFDIR: DirentType.DIR, stat.S_IFLNK: DirentType.LNK,
                stat.S_IFCHR: DirentType.CHR, stat.S_IFBLK: DirentType.BLK,
                stat.S_IFIFO: DirentType.FIFO, stat.S_IFSOCK: DirentType.SOCK}.get(
            self.FILE_TYPE, DirentType.REG)

    @property
    def qid(self) -> Qid:
        return Qid(self.qid_type, self.version & QID_VERSION_MASK, self.qid_path)

    @property
    def is_dir(self) -> bool:
        return self.FILE_TYPE == stat.S_IFDIR

    # --- metadata -------------------------------------------------------------------
    def size(self) -> int:
        """Reported st_size. Generated and streaming files say 0, as procfs does."""
        return 0

    def nlink(self) -> int:
        return max(self.links, 1)

    def rdev(self) -> int:
        return 0

    def attr(self) -> Attr:
        size = self.size()
        return Attr(
            qid=self.qid, mode=self.FILE_TYPE | self.mode, uid=self.uid, gid=self.gid,
            nlink=self.nlink(), rdev=self.rdev(), size=size, blocks=(size + 511) // 512,
            atime_sec=self.atime_ns // 10**9, atime_nsec=self.atime_ns % 10**9,
            mtime_sec=self.mtime_ns // 10**9, mtime_nsec=self.mtime_ns % 10**9,
            ctime_sec=self.ctime_ns // 10**9, ctime_nsec=self.ctime_ns % 10**9,
            data_version=self.version, valid=GetattrMask.BASIC | GetattrMask.DATA_VERSION,
        )

    def touch(self, *, modified: bool = True) -> None:
        """Record a change: content (mtime and ctime) or metadata only (ctime)."""
        stamp = now_ns()
        if modified:
            self.mtime_ns = stamp
        self.ctime_ns = stamp

    def can_chown(self) -> bool:
        """Whether a client may change mode/owner (only the RAM filesystem allows it)."""
        return False

    async def setattr(self, attr: SetAttr) -> None:
        """Times always; truncation only on writable files (a shell's ``echo x > ctl``
        truncates before writing: the truncation is accepted and means nothing);
        mode and owner only where ``can_chown``."""
        if attr.valid & (SetattrMask.MODE | SetattrMask.UID | SetattrMask.GID) and not self.can_chown():
            raise errno_error(errno.EPERM, "mode and owner of synthetic files are fixed")
        if attr.valid & SetattrMask.SIZE:
            if self.is_dir:
                raise errno_error(errno.EISDIR)
            if not self.writable:
                raise errno_error(errno.EROFS, "read-only file")
            await self.truncate(attr.size)
        if attr.valid & SetattrMask.MODE:
            self.mode = attr.mode & 0o7777
        if attr.valid & SetattrMask.UID:
            self.uid = attr.uid
        if attr.valid & SetattrMask.GID:
            self.gid = attr.gid
        stamp = now_ns()
        if attr.valid & SetattrMask.ATIME:
            self.atime_ns = (attr.atime_sec * 10**9 + attr.atime_nsec
                             if attr.valid & SetattrMask.ATIME_SET else stamp)
        if attr.valid & SetattrMask.MTIME:
            self.mtime_ns = (attr.mtime_sec * 10**9 + attr.mtime_nsec
                             if attr.valid & SetattrMask.MTIME_SET else stamp)
        self.ctime_ns = stamp

    async def truncate(self, size: int) -> None:
        """Writable synthetic files have no stored content: truncation is a no-op."""

    # --- I/O --------------------------------------------------------------------------
    def check_open(self, flags: int) -> None:
        """Refuse opens the node cannot serve (the mode bits are advice to the client;
        what the node can do is the rule here, since the server usually runs as root)."""
        if opens_for_writing(flags) and not self.writable:
            raise errno_error(errno.EROFS, "read-only file")
        if opens_for_reading(flags) and not self.readable:
            raise errno_error(errno.EACCES, "not readable")

    async def open(self, ctx: OpenContext) -> Handle:
        self.check_open(ctx.flags)
        return await self.make_handle(ctx)

    async def make_handle(self, ctx: OpenContext) -> Handle:
        return Handle(ctx)

    async def readlink(self) -> str:
        raise errno_error(errno.EINVAL, "not a symlink")
