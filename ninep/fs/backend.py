"""The backend contract: what a filesystem must provide for ninep to serve it.

The server (``ninep.server``) checks the protocol -- fid known? opened? mode allows the
operation? count within msize? -- then calls one async method here, then keeps the
books (fid tables, open state, locks). A backend only says what is special about it.

Two objects make a backend, as in hugelgupf/p9:

* ``Filesystem``: one per export; ``attach`` hands out the root ``File``.
* ``File``: one per fid. ``walk`` makes new ``File`` objects; the server owns them and
  calls ``close`` exactly once when the fid is clunked, removed or its connection ends.

Errors are errno values only: raise ``OSError(errno.X, ...)`` (``errno_error`` helps).
Every method has a default that refuses: ENOSYS for operations a backend may not
support, EROFS for mutations, ENOTDIR for directory operations. A read-only backend
overrides only walk/open/read/readdir/getattr (and readlink for symlinks).

Names handed to methods that make a *new* entry (create, mkdir, symlink, mknod, link,
rename targets) have already been checked by the server: non-empty, not "." or "..",
no "/" and no NUL. Names handed to ``walk`` may be "..", which at the root must stay at
the root; the backend must still refuse anything that contains "/".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Sequence

from ..protocol.constants import GetattrMask, V9FS_MAGIC
from ..protocol.messages import Dirent, Qid


def errno_error(code: int, detail: str = "") -> OSError:
    """An OSError carrying ``code``; the server turns it into Rlerror(code)."""
    return OSError(code, detail or os.strerror(code))


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a request acts as. ``uid is None`` means the server's own identity
    (the attach named no numeric user, e.g. the kernel's ``access=client``)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...] = ()


@dataclass(slots=True)
class Attr:
    """What Rgetattr carries, without the tag. ``valid`` says which fields are real."""

    qid: Qid
    mode: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    rdev: int = 0
    size: int = 0
    blksize: int = 4096
    blocks: int = 0
    atime_sec: int = 0
    atime_nsec: int = 0
    mtime_sec: int = 0
    mtime_nsec: int = 0
    ctime_sec: int = 0
    ctime_nsec: int = 0
    btime_sec: int = 0
    btime_nsec: int = 0
    gen: int = 0
    data_version: int = 0
    valid: int = GetattrMask.BASIC


@dataclass(frozen=True, slots=True)
class SetAttr:
    """What Tsetattr asks for. ``valid`` is a ``SetattrMask``; other fields matter only
    where their bit is set (ATIME/MTIME without *_SET mean "now")."""

    valid: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_sec: int = 0
    atime_nsec: int = 0
    mtime_sec: int = 0
    mtime_nsec: int = 0


@dataclass(frozen=True, slots=True)
class StatFs:
    type: int = V9FS_MAGIC
    bsize: int = 4096
    blocks: int = 0
    bfree: int = 0
    bavail: int = 0
    files: int = 0
    ffree: int = 0
    fsid: int = 0
    namelen: int = 255


class Filesystem:
    """One export. Subclasses override ``attach``.

    ``prompt``: True when no operation of this filesystem ever waits for anything but
    the host itself (no other client, no event, no data that may never come). The
    server then answers its requests (all but Tlock and Tfsync) in the connection's
    reader task, which reads nothing else meanwhile: no task, no task switch. A backend
    whose reads can wait (streams, pipes, anything fed by another client) must leave
    it False.
    """

    prompt: bool = False
    #: True when ``attach``'s aname means something (copy-on-write: one upper per
    #: aname): the server then hands over what follows "EXPORT/" in Tattach's aname.
    #: Otherwise the backend always gets "".
    sub_anames: bool = False

    async def attach(self, aname: str, creds: Credentials) -> "File":
        raise errno_error(errno.ENOSYS, "attach")

    async def aclose(self) -> None:
        """Called once when the server stops serving this filesystem."""


class File:
    """One fid's view of a file. ``qid`` must be stable for the same underlying file
    (``qid.path`` unique within the export) and change ``version`` when content does.

    ``lock_key`` identifies the underlying file for the server's POSIX lock table;
    the default (qid.path) is right for most backends.
    """

    qid: Qid

    @property
    def lock_key(self) -> object:
        return self.qid.path

    # --- navigation ------------------------------------------------------------
    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], "File | None"]:
        """Walk ``names`` (1..16 of them) from this file.

        Return ``(qids, new_file)``: all names walked -> one qid each and the new File;
        stopped early at name i > 0 -> the i qids walked so far and None. If the very
        first name fails, raise its errno (ENOENT, ENOTDIR, EACCES...).
        """
        raise errno_error(errno.ENOTDIR, "walk")

    async def clone(self) -> "File":
        """A new File for the same file (Twalk with no names)."""
        raise errno_error(errno.ENOSYS, "clone")

    # --- open files ----------------------------------------------------------------
    async def open(self, flags: int) -> int:
        """Open for I/O with P9_DOTL ``flags``; return the iounit (0 = use msize)."""
        raise errno_error(errno.ENOSYS, "open")

    async def create(self, name: str, flags: int, mode: int, gid: int) -> tuple["File", int]:
        """Tlcreate in this directory: make ``name``, open it, and return the opened
        new File and iounit. The server then rebinds the fid to the new File."""
        raise errno_error(errno.EROFS, "create")

    async def read(self, offset: int, count: int) -> bytes | memoryview:
        raise errno_error(errno.ENOSYS, "read")

    async def write(self, offset: int, data: memoryview) -> int:
        raise errno_error(errno.EROFS, "write")

    async def readdir(self, offset: int, count: int) -> Sequence[Dirent]:
        """Entries after directory offset ``offset`` (0 = start), "." and ".." included.
        Each entry's ``offset`` is the cookie for the *next* call. Returning more than
        ``count`` bytes' worth is fine: the server packs what fits."""
        raise errno_error(errno.ENOTDIR, "readdir")

    #: Optional fast path for Treaddir. A backend that can build the wire records
    #: itself defines ``async def readdir_packed(self, offset, count) -> bytes``
    #: returning at most ``count`` bytes of packed Rreaddir records (use
    #: ``ninep.protocol.codec`` to pack them); the server then skips ``readdir`` and
    #: the per-entry Dirent objects. The host export does (about 10x cheaper per entry).
    readdir_packed = None

    async def fsync(self, datasync: bool) -> None:
        return None

    # --- metadata -------------------------------------------------------------
    async def getattr(self, mask: int) -> Attr:
        raise errno_error(errno.ENOSYS, "getattr")

    async def setattr(self, attr: SetAttr) -> None:
        raise errno_error(errno.EROFS, "setattr")

    async def statfs(self) -> StatFs:
        return StatFs()

    async def readlink(self) -> str:
        raise errno_error(errno.EINVAL, "readlink")

    # --- directory mutations (self is the directory) --------------------------
    async def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        raise errno_error(errno.EROFS, "mkdir")

    async def symlink(self, name: str, target: str, gid: int) -> Qid:
        raise errno_error(errno.EROFS, "symlink")

    async def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        raise errno_error(errno.EROFS, "mknod")

    async def link(self, target: "File", name: str) -> None:
        """Tlink: make ``name`` in this directory a hard link to ``target``."""
        raise errno_error(errno.EROFS, "link")

    async def renameat(self, oldname: str, newdir: "File", newname: str) -> None:
        raise errno_error(errno.EROFS, "renameat")

    async def unlinkat(self, name: str, flags: int) -> None:
        """flags may carry AT_REMOVEDIR (0x200)."""
        raise errno_error(errno.EROFS, "unlinkat")

    # --- operations on this file itself ---------------------------------------
    async def rename(self, newdir: "File", newname: str) -> None:
        """Trename: move this file to ``newdir/newname``."""
        raise errno_error(errno.EROFS, "rename")

    async def remove(self) -> None:
        """Tremove: unlink this file (the server clunks the fid either way)."""
        raise errno_error(errno.EROFS, "remove")

    # --- extended attributes ---------------------------------------------------
    async def xattr_get(self, name: str) -> bytes:
        raise errno_error(errno.EOPNOTSUPP, "xattr_get")

    async def xattr_list(self) -> list[str]:
        raise errno_error(errno.EOPNOTSUPP, "xattr_list")

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        raise errno_error(errno.EOPNOTSUPP, "xattr_set")

    async def xattr_remove(self, name: str) -> None:
        raise errno_error(errno.EOPNOTSUPP, "xattr_remove")

    # --- lifetime ----------------------------------------------------------------
    async def close(self) -> None:
        """The fid is gone (clunk, remove, or disconnect). Release fds and state."""
