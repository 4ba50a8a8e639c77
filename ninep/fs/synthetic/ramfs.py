"""A writable in-memory filesystem (lib9p's ramfs): clients create, write, rename and
remove; content lives in bytearrays. Also the proof that the node API carries a full
read-write backend (the conformance suite's mutation half runs on it).

``RamFilesystem()`` is an empty export; ``RamDirectory`` can also be mounted inside a
program's tree as a scratch area (``tree["scratch"] = RamDirectory(mode=0o777)``).
"""

from __future__ import annotations

import errno
import stat
from typing import Any

from ..backend import errno_error
from .adapter import SyntheticFilesystem
from .directories import Directory
from .files import SpecialFile, Symlink
from .node import Handle, Node, OpenContext, Session, now_ns
from ...protocol.constants import OpenFlags

MAX_FILE_SIZE = 1 << 32  # a RAM file bigger than this is a runaway client, not a use


def _creator_meta(mode: int, gid: int, session: Session) -> dict[str, Any]:
    """Owner of a node a client creates: the attach's uid (the server's when the
    attach named none) and the gid the client asked for."""
    meta: dict[str, Any] = {"mode": mode & 0o7777, "gid": gid}
    if session.creds.uid is not None:
        meta["uid"] = session.creds.uid
    return meta


class RamFile(Node):
    DEFAULT_MODE = 0o644
    writable = True

    def __init__(self, data: bytes = b"", **meta: Any):
        super().__init__(**meta)
        self.data = bytearray(data)
        self.xattrs = {}
        self._replacements = 0

    @property
    def version(self) -> int:
        """Changes only when the program replaces the content behind the clients'
        backs (``replace``), never with a client's own writes: the Linux client takes
        a new qid.version for a new inode, and a second inode for a file whose first
        still holds dirty pages loses the guest's writes (issue 15). Never 0, which
        Linux 6.4+ reads as "do not cache"."""
        return 1 + self._replacements

    def replace(self, data: bytes) -> None:
        """New content from the program: clients that look the file up again see a
        new qid.version and drop what they cached."""
        self.data = bytearray(data)
        self._replacements += 1
        self.touch()

    def size(self) -> int:
        return len(self.data)

    def can_chown(self) -> bool:
        return True

    async def truncate(self, size: int) -> None:
        if size > MAX_FILE_SIZE:
            raise errno_error(errno.EFBIG)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))
        self._modified()

    def _modified(self) -> None:
        self.touch()

    async def make_handle(self, ctx: OpenContext) -> Handle:
        if ctx.flags & OpenFlags.TRUNC and ctx.writing:
            await self.truncate(0)
        return _RamFileHandle(ctx, self)


class _RamFileHandle(Handle):
    def __init__(self, ctx: OpenContext, node: RamFile):
        super().__init__(ctx)
        self.node = node

    async def read(self, offset: int, count: int) -> bytes:
        self.node.atime_ns = now_ns()
        return bytes(self.node.data[offset:offset + count])

    async def write(self, offset: int, data: memoryview) -> int:
        node = self.node
        if self.ctx.flags & OpenFlags.APPEND:
            offset = len(node.data)
        end = offset + len(data)
        if end > MAX_FILE_SIZE:
            raise errno_error(errno.EFBIG)
        if offset > len(node.data):
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset:end] = data
        node._modified()
        return len(data)


class RamDirectory(Directory):
    DEFAULT_MODE = 0o755

    def __init__(self, entries: Any = None, **meta: Any):
        super().__init__(entries, **meta)
        self.xattrs = {}

    @property
    def version(self) -> int:
        # Constant, as for RamFile: entries that clients add and remove are their own
        # changes, and a new version would make the kernel build a second inode.
        return 1

    def can_chown(self) -> bool:
        return True

    def _new_entry(self, name: str, node: Node) -> Node:
        if name in self:
            raise errno_error(errno.EEXIST, name)
        return self.add(name, node)

    async def create_file(self, name: str, flags: int, mode: int, gid: int,
                          session: Session) -> Node:
        existing = self._entries.get(name)
        if existing is not None and not flags & OpenFlags.EXCL:
            if existing.is_dir:
                raise errno_error(errno.EISDIR, name)
            return existing  # open(2) with O_CREAT and no O_EXCL opens what is there
        return self._new_entry(name, RamFile(**_creator_meta(mode, gid, session)))

    async def make_directory(self, name: str, mode: int, gid: int, session: Session) -> Node:
        return self._new_entry(name, RamDirectory(**_creator_meta(mode, gid, session)))

    async def make_symlink(self, name: str, target: str, gid: int, session: Session) -> Node:
        return self._new_entry(name, Symlink(target, **_creator_meta(0o777, gid, session)))

    async def make_special(self, name: str, mode: int, rdev: int, gid: int, session: Session) -> Node:
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFREG, 0):
            return await self.create_file(name, OpenFlags.EXCL, mode, gid, session)
        try:
            node = SpecialFile(kind, rdev, **_creator_meta(mode, gid, session))
        except ValueError as error:
            raise errno_error(errno.EINVAL, str(error)) from error
        return self._new_entry(name, node)

    async def link(self, name: str, node: Node) -> None:
        self._new_entry(name, node)
        node.touch(modified=False)

    async def unlink(self, name: str, *, directory: bool | None) -> None:
        node = self._entries.get(name)
        if node is None:
            raise errno_error(errno.ENOENT, name)
        if directory is True and not node.is_dir:
            raise errno_error(errno.ENOTDIR, name)
        if directory is False and node.is_dir:
            raise errno_error(errno.EISDIR, name)
        if isinstance(node, Directory) and len(node):
            raise errno_error(errno.ENOTEMPTY, name)
        self.pop(name)
        node.touch(modified=False)

    async def rename(self, name: str, new_parent: Directory, new_name: str) -> None:
        node = self._entries.get(name)
        if node is None:
            raise errno_error(errno.ENOENT, name)
        if not isinstance(new_parent, RamDirectory):
            raise errno_error(errno.EXDEV)
        if node is new_parent or (isinstance(node, Directory) and _contains(node, new_parent)):
            raise errno_error(errno.EINVAL, "cannot move a directory into itself")
        existing = new_parent._entries.get(new_name)
        if existing is node:
            return  # rename(2): two names of one file -- nothing to do
        if existing is not None:
            if node.is_dir and not existing.is_dir:
                raise errno_error(errno.ENOTDIR, new_name)
            if existing.is_dir and not node.is_dir:
                raise errno_error(errno.EISDIR, new_name)
            if isinstance(existing, Directory) and len(existing):
                raise errno_error(errno.ENOTEMPTY, new_name)
            new_parent.pop(new_name)
        self.pop(name)
        new_parent.add(new_name, node)
        node.touch(modified=False)


def _contains(ancestor: Directory, candidate: Directory) -> bool:
    """Whether ``candidate`` is ``ancestor`` or lies anywhere below it."""
    pending = [ancestor]
    while pending:
        directory = pending.pop()
        if directory is candidate:
            return True
        pending.extend(n for n in directory._entries.values() if isinstance(n, Directory))
    return False


class RamFilesystem(SyntheticFilesystem):
    """An empty writable export (root mode 0755 unless ``mode`` says otherwise)."""

    def __init__(self, root: RamDirectory | None = None, **meta: Any):
        super().__init__(root if root is not None else RamDirectory(**meta))
