"""``RemoteFile``: a fid with path-taking helpers, the convenient face of the client.

Paths are relative to the file they start from and use "/" between names; any number
of names is fine (Twalk takes 16 at a time, so longer walks take several). Methods that
return a new ``RemoteFile`` (``walk``, ``open``, ``create``) can be awaited, or used
with ``async with`` to clunk the new fid at the end.

Errors are ``OSError`` with the server's errno and, where a path was given, that path
as ``filename``.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

import trio

from ..protocol.constants import (
    AT_REMOVEDIR,
    IOHDRSZ,
    MAX_WALK_ELEMENTS,
    READDIRHDRSZ,
    XATTR_REPLACE,
    GetattrMask,
    LockStatus,
    OpenFlags,
    QidType,
    SetattrMask,
)
from ..protocol.messages import Dirent, Qid, Rgetattr, Rgetlock, Rstatfs

if TYPE_CHECKING:
    from .operations import Client

# Servers that predate an operation answer EOPNOTSUPP (diod) or ENOSYS; the kernel then
# falls back to the older operation, and so do we.
_NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS)


def split_path(path: str) -> list[str]:
    """"a//b/./c/" -> ["a", "b", "c"]. ".." is kept: walking it is the server's business."""
    return [name for name in path.split("/") if name not in ("", ".")]


def split_parent(path: str) -> tuple[str, str]:
    """"a/b/c" -> ("a/b", "c"); refuses paths that name no entry ("", ".", "a/..")."""
    names = split_path(path)
    if not names or names[-1] == "..":
        raise OSError(errno.EINVAL, "path names no directory entry", path)
    return "/".join(names[:-1]), names[-1]


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """Put ``path`` into a server error that lacks a filename."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, path) from None
        raise


class FileOpening:
    """Await it for the ``RemoteFile``, or ``async with`` it to clunk the fid after."""

    def __init__(self, make: Callable[[], Awaitable["RemoteFile"]]) -> None:
        self._make = make
        self._file: RemoteFile | None = None

    def __await__(self):
        return self._make().__await__()

    async def __aenter__(self) -> "RemoteFile":
        self._file = await self._make()
        return self._file

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._file is not None
        await self._file.clunk()


class RemoteFile:
    """One fid on a ``Client``. ``async with`` clunks it; ``clunk`` is idempotent."""

    def __init__(self, client: "Client", fid: int, qid: Qid, iounit: int = 0) -> None:
        self.client = client
        self.fid = fid
        self.qid = qid
        self.iounit = iounit
        self.is_open = False
        self.clunked = False

    def __repr__(self) -> str:
        return f"<RemoteFile fid={self.fid} qid={self.qid}{' open' if self.is_open else ''}>"

    async def __aenter__(self) -> "RemoteFile":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.clunk()

    async def clunk(self) -> None:
        if not self.clunked:
            self.clunked = True
            await self.client.clunk(self.fid)

    @property
    def is_dir(self) -> bool:
        return bool(self.qid.type & QidType.DIR)

    # --- new fids ----------------------------------------------------------------------
    def walk(self, path: str = "") -> FileOpening:
        """A new fid for ``path`` ("" clones this one). A name that does not exist
        raises ENOENT (or whatever the server says for the first name)."""
        return FileOpening(lambda: self._walk(path))

    async def _walk(self, path: str) -> "RemoteFile":
        names = split_path(path)
        client = self.client
        newfid = client.fids.allocate()
        first, rest = names[:MAX_WALK_ELEMENTS], names[MAX_WALK_ELEMENTS:]
        with _naming(path):
            qids = await client.walk(self.fid, newfid, first)  # a failure frees newfid
            if len(qids) < len(first):
                raise OSError(errno.ENOENT, "No such file or directory", path)
            walked = RemoteFile(client, newfid, qids[-1] if qids else self.qid)
            try:
                while rest:
                    chunk, rest = rest[:MAX_WALK_ELEMENTS], rest[MAX_WALK_ELEMENTS:]
                    qids = await client.walk(newfid, newfid, chunk)
                    if len(qids) < len(chunk):
                        raise OSError(errno.ENOENT, "No such file or directory", path)
                    walked.qid = qids[-1]
            except BaseException:
                await walked.clunk()
                raise
        return walked

    def open(self, path: str = "", flags: int = OpenFlags.RDONLY) -> FileOpening:
        """Walk to ``path`` and Tlopen the new fid with P9_DOTL ``flags``."""
        return FileOpening(lambda: self._open(path, flags))

    async def _open(self, path: str, flags: int) -> "RemoteFile":
        opened = await self._walk(path)
        try:
            with _naming(path):
                await opened.lopen(flags)
        except BaseException:
            await opened.clunk()
            raise
        return opened

    def create(self, path: str, flags: int = OpenFlags.RDWR, mode: int = 0o644,
               gid: int | None = None) -> FileOpening:
        """Tlcreate ``path`` (its directory must exist); returns the new, open file."""
        return FileOpening(lambda: self._create(path, flags, mode, gid))

    async def _create(self, path: str, flags: int, mode: int, gid: int | None) -> "RemoteFile":
        parent, name = split_parent(path)
        created = await self._walk(parent)
        try:
            with _naming(path):
                created.qid, created.iounit = await self.client.lcreate(
                    created.fid, name, flags, mode, gid)
        except BaseException:
            await created.clunk()
            raise
        created.is_open = True
        return created

    # --- this fid ----------------------------------------------------------------------
    async def lopen(self, flags: int = OpenFlags.RDONLY) -> None:
        """Open this fid in place (it can no longer be walked from)."""
        self.qid, self.iounit = await self.client.lopen(self.fid, flags)
        self.is_open = True

    @property
    def io_size(self) -> int:
        """Bytes per Tread/Twrite: the iounit, or what fits in msize if that is less."""
        fits = self.client.msize - IOHDRSZ
        return min(self.iounit, fits) if self.iounit else fits

    async def read(self, count: int, offset: int = 0) -> bytes:
        """One Tread of at most ``count`` bytes (fewer at the end of the file)."""
        return bytes(await self.client.read(self.fid, offset, min(count, self.io_size)))

    async def read_all(self, offset: int = 0, *, window: int = 1) -> bytes:
        """Tread from ``offset`` until the server returns nothing.

        ``window`` > 1 keeps that many Treads in flight at consecutive offsets, which
        hides the round trip on big files. Only for files whose offsets are byte
        offsets (not streams that ignore them); after the first short read the rest
        is read one Tread at a time, so a server's short reads lose nothing.
        """
        data = await self._read_ahead(offset, window) if window > 1 else bytearray()
        while True:
            chunk = await self.client.read(self.fid, offset + len(data), self.io_size)
            if not chunk:
                return bytes(data)
            data += chunk

    async def _read_ahead(self, offset: int, window: int) -> bytearray:
        """Read full io_size pieces, ``window`` at a time, up to the first short one."""
        size = self.io_size
        pieces: dict[int, bytes] = {}
        arrived: dict[int, trio.Event] = {}
        failure: list[BaseException] = []
        data = bytearray()

        async with trio.open_nursery() as nursery:
            async def read_piece(index: int) -> None:
                try:
                    pieces[index] = bytes(await self.client.read(self.fid, offset + index * size, size))
                except Exception as exc:  # re-raised below, outside the nursery
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
                arrived[index].set()

            def launch(index: int) -> None:
                arrived[index] = trio.Event()
                nursery.start_soon(read_piece, index)

            for index in range(window):
                launch(index)
            index = 0
            while True:
                await arrived[index].wait()
                if failure:
                    break
                piece = pieces.pop(index)
                data += piece
                if len(piece) < size:
                    break  # end of file (or a short read): reads beyond it are dropped
                launch(index + window)
                index += 1
        if failure:
            raise failure[0]
        return data

    async def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Twrite all of ``data`` at ``offset`` in iounit-sized pieces; returns len(data)."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            count = await self.client.write(self.fid, offset + done, view[done:done + self.io_size])
            if count <= 0:
                raise OSError(errno.EIO, f"server accepted no bytes at offset {offset + done}")
            done += count
        return done

    async def readdir(self) -> list[Dirent]:
        """Every entry of this open directory (Treaddir until an empty reply)."""
        entries: list[Dirent] = []
        offset = 0
        count = self.client.msize - READDIRHDRSZ
        while True:
            batch = await self.client.readdir(self.fid, offset, count)
            if not batch:
                return entries
            entries.extend(batch)
            offset = batch[-1].offset

    async def getattr(self, request_mask: int = GetattrMask.ALL) -> Rgetattr:
        return await self.client.getattr(self.fid, request_mask)

    async def chmod(self, mode: int) -> None:
        await self.client.setattr(self.fid, SetattrMask.MODE, mode=mode)

    async def chown(self, uid: int, gid: int) -> None:
        await self.client.setattr(self.fid, SetattrMask.UID | SetattrMask.GID, uid=uid, gid=gid)

    async def truncate(self, size: int) -> None:
        await self.client.setattr(self.fid, SetattrMask.SIZE, size=size)

    async def utime(self, atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        """Set access and modification times; a time left out becomes "now" (server clock)."""
        valid = SetattrMask.ATIME | SetattrMask.MTIME
        fields = {}
        if atime_ns is not None:
            valid |= SetattrMask.ATIME_SET
            fields.update(atime_sec=atime_ns // 10**9, atime_nsec=atime_ns % 10**9)
        if mtime_ns is not None:
            valid |= SetattrMask.MTIME_SET
            fields.update(mtime_sec=mtime_ns // 10**9, mtime_nsec=mtime_ns % 10**9)
        await self.client.setattr(self.fid, valid, **fields)

    async def statfs(self) -> Rstatfs:
        return await self.client.statfs(self.fid)

    async def fsync(self, datasync: bool = False) -> None:
        await self.client.fsync(self.fid, datasync)

    async def remove(self) -> None:
        """Tremove this file; the fid is clunked whether or not that succeeds."""
        if self.clunked:
            raise ValueError("fid already clunked")
        self.clunked = True
        await self.client.remove(self.fid)

    async def lock(self, type: int, start: int = 0, length: int = 0, *, flags: int = 0,
                   proc_id: int = 0, client_id: str = "") -> LockStatus:
        return await self.client.lock(self.fid, type, start, length, flags=flags,
                                      proc_id=proc_id, client_id=client_id)

    async def getlock(self, type: int, start: int = 0, length: int = 0, *, proc_id: int = 0,
                      client_id: str = "") -> Rgetlock:
        return await self.client.getlock(self.fid, type, start, length, proc_id=proc_id,
                                         client_id=client_id)

    # --- paths below this directory ------------------------------------------------------
    async def stat(self, path: str = "") -> Rgetattr:
        async with self.walk(path) as target:
            with _naming(path):
                return await target.getattr()

    async def read_file(self, path: str, *, window: int = 1) -> bytes:
        """The whole file; ``window`` as for ``read_all``."""
        async with self.open(path) as opened:
            with _naming(path):
                return await opened.read_all(window=window)

    async def write_file(self, path: str, data: bytes | bytearray | memoryview,
                         mode: int = 0o644) -> None:
        """Truncate and write ``path``, creating it if it does not exist.

        An existing file is opened (Tlopen O_WRONLY|O_TRUNC), not re-created, as the
        Linux kernel does for ``echo x > file``: control files in synthetic trees
        accept writes but refuse Tlcreate."""
        try:
            opening = await self._open(path, OpenFlags.WRONLY | OpenFlags.TRUNC)
        except FileNotFoundError:
            flags = OpenFlags.WRONLY | OpenFlags.CREATE | OpenFlags.TRUNC
            opening = await self._create(path, flags, mode, None)
        async with opening as opened:
            with _naming(path):
                await opened.write(data)

    async def listdir(self, path: str = "") -> list[Dirent]:
        """The entries of directory ``path`` as the server lists them ("." and ".." too)."""
        async with self.open(path, OpenFlags.RDONLY | OpenFlags.DIRECTORY) as opened:
            with _naming(path):
                return await opened.readdir()

    async def readlink(self, path: str = "") -> str:
        async with self.walk(path) as link:
            with _naming(path):
                return await self.client.readlink(link.fid)

    async def mkdir(self, path: str, mode: int = 0o755, gid: int | None = None) -> Qid:
        parent, name = split_parent(path)
        async with self.walk(parent) as directory:
            with _naming(path):
                return await self.client.mkdir(directory.fid, name, mode, gid)

    async def symlink(self, path: str, target: str, gid: int | None = None) -> Qid:
        """Make ``path`` a symbolic link pointing at ``target``."""
        parent, name = split_parent(path)
        async with self.walk(parent) as directory:
            with _naming(path):
                return await self.client.symlink(directory.fid, name, target, gid)

    async def mknod(self, path: str, mode: int, major: int = 0, minor: int = 0,
                    gid: int | None = None) -> Qid:
        parent, name = split_parent(path)
        async with self.walk(parent) as directory:
            with _naming(path):
                return await self.client.mknod(directory.fid, name, mode, major, minor, gid)

    async def link(self, existing: str, path: str) -> None:
        """Make ``path`` a new hard link to ``existing``."""
        parent, name = split_parent(path)
        async with self.walk(existing) as target, self.walk(parent) as directory:
            with _naming(path):
                await self.client.link(directory.fid, target.fid, name)

    async def rename(self, old: str, new: str) -> None:
        """Trenameat, or Trename on a server without it."""
        old_parent, old_name = split_parent(old)
        new_parent, new_name = split_parent(new)
        async with self.walk(old_parent) as old_dir, self.walk(new_parent) as new_dir:
            try:
                with _naming(old):
                    await self.client.renameat(old_dir.fid, old_name, new_dir.fid, new_name)
                return
            except OSError as exc:
                if exc.errno not in _NOT_SUPPORTED:
                    raise
            async with old_dir.walk(old_name) as moving:
                with _naming(old):
                    await self.client.rename(moving.fid, new_dir.fid, new_name)

    async def unlink(self, path: str, *, directory: bool = False) -> None:
        """Tunlinkat (AT_REMOVEDIR if ``directory``), or walk + Tremove on a server
        without it, as the kernel does (diod 1.0.24 has no Tunlinkat)."""
        parent, name = split_parent(path)
        async with self.walk(parent) as parent_dir:
            try:
                with _naming(path):
                    await self.client.unlinkat(parent_dir.fid, name,
                                               AT_REMOVEDIR if directory else 0)
                return
            except OSError as exc:
                if exc.errno not in _NOT_SUPPORTED:
                    raise
            doomed = await parent_dir._walk(name)
            if directory != doomed.is_dir:
                await doomed.clunk()
                code = errno.ENOTDIR if directory else errno.EISDIR
                raise OSError(code, os.strerror(code), path)
            with _naming(path):
                await doomed.remove()

    async def rmdir(self, path: str) -> None:
        await self.unlink(path, directory=True)

    # --- extended attributes -------------------------------------------------------------
    async def get_xattr(self, name: str, path: str = "") -> bytes:
        """The value of attribute ``name`` (Txattrwalk, then Tread the new fid)."""
        async with self.walk(path) as target:
            with _naming(path):
                return await target._read_xattr(name)

    async def list_xattrs(self, path: str = "") -> list[str]:
        async with self.walk(path) as target:
            with _naming(path):
                names = await target._read_xattr("")
        return [name.decode() for name in names.split(b"\0") if name]

    async def _read_xattr(self, name: str) -> bytes:
        client = self.client
        value_fid = client.fids.allocate()
        size = await client.xattrwalk(self.fid, value_fid, name)
        async with RemoteFile(client, value_fid, self.qid) as value:
            data = await value.read_all() if size else b""
        if len(data) != size:
            raise OSError(errno.EIO, f"xattr {name!r}: server announced {size} bytes, sent {len(data)}")
        return data

    async def set_xattr(self, name: str, value: bytes, flags: int = 0, path: str = "") -> None:
        """Txattrcreate on a fresh fid, Twrite the value, Tclunk (which sets it).
        ``flags`` is 0, XATTR_CREATE or XATTR_REPLACE."""
        async with self.walk(path) as target:
            with _naming(path):
                await self.client.xattrcreate(target.fid, name, len(value), flags)
                if value:
                    await target.write(value)
                await target.clunk()  # the server sets the attribute now, and may refuse here

    async def remove_xattr(self, name: str, path: str = "") -> None:
        """What the kernel's removexattr sends: an empty XATTR_REPLACE Txattrcreate."""
        await self.set_xattr(name, b"", XATTR_REPLACE, path)
