"""The backend contract over a node tree: ``SyntheticFilesystem`` and one
``SyntheticFile`` per fid.

A fid remembers the path of (name, node) pairs from the root that it walked, so ".."
needs no parent pointers (a node may sit in several directories: hard links) and
Trename/Tremove know which directory entry they are about. It also carries the
``Session`` of its attach and, once opened, the node's ``Handle`` (per-open state).
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, Sequence

from ...protocol.constants import AT_REMOVEDIR, XATTR_CREATE, XATTR_REPLACE
from ...protocol.messages import Dirent, Qid
from ..backend import Attr, Credentials, File, Filesystem, SetAttr, errno_error
from .node import DirectoryHandle, Handle, Node, OpenContext, Session

if TYPE_CHECKING:
    from .directories import Directory  # what a node whose is_dir is True is

Path = tuple[tuple[str, Node], ...]


def _is_directory(node: object) -> bool:
    return isinstance(node, Node) and node.is_dir


class SyntheticFilesystem(Filesystem):
    """Serves the tree under ``root``. ``sessions`` are the live attaches, by id.

    ``zero_versions=True`` reports qid.version 0 for every node instead of versions
    that follow the content. Linux 6.6 and later read a file whose qid.version is 0
    as synthetic and never cache it (fs/9p/fid.h, v9fs_fid_add_modes), so generated
    and streaming files read correctly even on ``cache=loose`` mounts; older kernels
    ignore the difference."""

    def __init__(self, root: "Directory", *, zero_versions: bool = False):
        if not _is_directory(root):
            raise TypeError("the root of a synthetic tree must be a Directory")
        self.root = root
        self.zero_versions = zero_versions
        if root._filesystem is None:  # serving the tree directly then uses these options
            root._filesystem = self
        self.sessions: dict[int, Session] = {}
        self._session_ids = itertools.count(1)

    async def attach(self, aname: str, creds: Credentials) -> "SyntheticFile":
        session = Session(self, aname, creds, next(self._session_ids))
        self.sessions[session.id] = session
        return SyntheticFile(session, (("", self.root),))

    def _end_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for hook in session.on_close:
            hook(session)


class SyntheticFile(File):
    def __init__(self, session: Session, path: Path):
        self.session = session
        self.path = path
        self.handle: Handle | None = None
        session.fids += 1

    @property
    def node(self) -> Node:
        return self.path[-1][1]

    @property
    def qid(self) -> Qid:  # type: ignore[override]  # computed: version follows content
        return self._qid(self.node)

    def _qid(self, node: Node) -> Qid:
        qid = node.qid
        if self.session.filesystem.zero_versions and qid.version:
            return Qid(qid.type, 0, qid.path)
        return qid

    def _directory(self) -> "Directory":
        node = self.node
        if not _is_directory(node):
            raise errno_error(errno.ENOTDIR)
        return node

    # --- navigation ------------------------------------------------------------------
    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], File | None]:
        path = self.path
        qids: list[Qid] = []
        for name in names:
            try:
                path = await self._step(path, name)
            except OSError:
                if not qids:
                    raise
                return qids, None
            qids.append(self._qid(path[-1][1]))
        self.session.stats["walks"] += 1
        return qids, SyntheticFile(self.session, path)

    async def _step(self, path: Path, name: str) -> Path:
        node = path[-1][1]
        if not _is_directory(node):
            raise errno_error(errno.ENOTDIR)
        if name == "..":
            return path[:-1] if len(path) > 1 else path
        if name == ".":
            return path
        if "/" in name or "\0" in name or not name:
            raise errno_error(errno.ENOENT, f"invalid name {name!r}")
        child = await node.lookup(name, self.session)
        if child is None:
            raise errno_error(errno.ENOENT, name)
        return path + ((name, child),)

    async def clone(self) -> File:
        return SyntheticFile(self.session, self.path)

    # --- I/O ------------------------------------------------------------------------------
    async def open(self, flags: int) -> int:
        if self.handle is not None:
            raise errno_error(errno.EBADF, "fid already open")
        self.handle = await self.node.open(OpenContext(self.session, self.node, flags))
        self.session.stats["opens"] += 1
        return 0

    def _open_handle(self) -> Handle:
        if self.handle is None:
            raise errno_error(errno.EBADF, "fid not open")
        return self.handle

    async def read(self, offset: int, count: int) -> bytes:
        handle = self._open_handle()
        if isinstance(handle, DirectoryHandle):
            raise errno_error(errno.EISDIR)
        data = await handle.read(offset, count)
        self.session.stats["reads"] += 1
        self.session.stats["bytes_read"] += len(data)
        return data

    async def write(self, offset: int, data: memoryview) -> int:
        written = await self._open_handle().write(offset, data)
        self.session.stats["writes"] += 1
        self.session.stats["bytes_written"] += written
        return written

    async def readdir(self, offset: int, count: int) -> Sequence[Dirent]:
        handle = self._open_handle()
        if not isinstance(handle, DirectoryHandle):
            raise errno_error(errno.ENOTDIR)
        parent = self.path[-2][1] if len(self.path) > 1 else self.node
        listing = [(".", self.node), ("..", parent), *handle.children]
        # The cookie of entry i is i + 1: the index of the entry after it.
        return [Dirent(self._qid(node), index + 1, node.dirent_type, name)
                for index, (name, node) in enumerate(listing[offset:], start=offset)]

    # --- metadata ---------------------------------------------------------------------------
    async def getattr(self, mask: int) -> Attr:
        attr = self.node.attr()
        if self.session.filesystem.zero_versions:
            attr.qid, attr.data_version = self._qid(self.node), 0
        return attr

    async def setattr(self, attr: SetAttr) -> None:
        await self.node.setattr(attr)

    async def readlink(self) -> str:
        return await self.node.readlink()

    async def xattr_get(self, name: str) -> bytes:
        xattrs = self._xattrs()
        if name not in xattrs:
            raise errno_error(errno.ENODATA, name)
        return xattrs[name]

    async def xattr_list(self) -> list[str]:
        return list(self._xattrs())

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        xattrs = self._xattrs(changing=True)
        if flags & XATTR_CREATE and name in xattrs:
            raise errno_error(errno.EEXIST, name)
        if flags & XATTR_REPLACE and name not in xattrs:
            raise errno_error(errno.ENODATA, name)
        xattrs[name] = bytes(value)
        self.node.touch(modified=False)

    async def xattr_remove(self, name: str) -> None:
        xattrs = self._xattrs(changing=True)
        if xattrs.pop(name, None) is None:
            raise errno_error(errno.ENODATA, name)
        self.node.touch(modified=False)

    def _xattrs(self, changing: bool = False) -> dict[str, bytes]:
        if self.node.xattrs is None:
            # A program's nodes have none, and a client cannot give them any.
            raise errno_error(errno.EROFS if changing else errno.EOPNOTSUPP)
        return self.node.xattrs

    # --- directory mutations (the node decides; program trees refuse with EROFS) -------
    async def create(self, name: str, flags: int, mode: int, gid: int) -> tuple[File, int]:
        directory = self._directory()
        node = await directory.create_file(name, flags, mode, gid, self.session)
        new = SyntheticFile(self.session, self.path + ((name, node),))
        try:
            await new.open(flags)
        except BaseException:
            await new.close()
            raise
        return new, 0

    async def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        return self._qid(await self._directory().make_directory(name, mode, gid, self.session))

    async def symlink(self, name: str, target: str, gid: int) -> Qid:
        return self._qid(await self._directory().make_symlink(name, target, gid, self.session))

    async def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        rdev = (major << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12)  # Linux makedev
        return self._qid(await self._directory().make_special(name, mode, rdev, gid, self.session))

    async def link(self, target: File, name: str) -> None:
        if not isinstance(target, SyntheticFile) or target.session.filesystem is not self.session.filesystem:
            raise errno_error(errno.EXDEV)
        if target.node.is_dir:
            raise errno_error(errno.EPERM, "hard links to directories")
        await self._directory().link(name, target.node)

    async def renameat(self, oldname: str, newdir: File, newname: str) -> None:
        await self._directory().rename(oldname, self._same_tree_directory(newdir), newname)

    async def unlinkat(self, name: str, flags: int) -> None:
        await self._directory().unlink(name, directory=bool(flags & AT_REMOVEDIR))

    async def rename(self, newdir: File, newname: str) -> None:
        if len(self.path) < 2:
            raise errno_error(errno.EBUSY, "cannot rename the root")
        (name, node), parent = self.path[-1], self.path[-2][1]
        if not _is_directory(parent) or await parent.lookup(name, self.session) is not node:
            raise errno_error(errno.ENOENT, "renamed or removed meanwhile")
        target = self._same_tree_directory(newdir)
        await parent.rename(name, target, newname)
        self.path = newdir.path + ((newname, node),)  # type: ignore[attr-defined]

    async def remove(self) -> None:
        if len(self.path) < 2:
            raise errno_error(errno.EBUSY, "cannot remove the root")
        (name, node), parent = self.path[-1], self.path[-2][1]
        if not _is_directory(parent) or await parent.lookup(name, self.session) is not node:
            raise errno_error(errno.ENOENT, "renamed or removed meanwhile")
        await parent.unlink(name, directory=None)

    def _same_tree_directory(self, other: File) -> "Directory":
        if not isinstance(other, SyntheticFile) or other.session.filesystem is not self.session.filesystem:
            raise errno_error(errno.EXDEV)
        node = other.node
        if not _is_directory(node):
            raise errno_error(errno.ENOTDIR)
        return node

    # --- lifetime -----------------------------------------------------------------------
    async def close(self) -> None:
        handle, self.handle = self.handle, None
        try:
            if handle is not None:
                await handle.close()
        finally:
            self.session.fids -= 1
            if self.session.fids == 0:
                self.session.filesystem._end_session(self.session)
