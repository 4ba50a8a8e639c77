"""A tiny dict-based backend for the server's tests: enough of a filesystem to exercise
every handler, plus knobs to make requests slow (``slow``: name -> seconds)."""

from __future__ import annotations

import errno
import itertools
import stat
from typing import Sequence

import trio

from ninep.fs.backend import Attr, Credentials, File, Filesystem, SetAttr, StatFs, errno_error
from ninep.protocol.constants import DirentType, OpenFlags, QidType
from ninep.protocol.messages import Dirent, Qid


class Node:
    _inos = itertools.count(1)

    def __init__(self, mode: int, parent: "Node | None" = None) -> None:
        self.ino = next(Node._inos)
        self.mode = mode
        self.parent = parent or self
        self.children: dict[str, Node] = {}
        self.data = bytearray()
        self.target = ""
        self.xattrs: dict[str, bytes] = {}
        self.version = 0

    @property
    def qid(self) -> Qid:
        if stat.S_ISDIR(self.mode):
            kind = QidType.DIR
        elif stat.S_ISLNK(self.mode):
            kind = QidType.SYMLINK
        else:
            kind = QidType.FILE
        return Qid(int(kind), self.version, self.ino)


MAX_FILE_SIZE = 64 << 20  # found by fuzz/session.py: Twrite at offset 2^32 ate 4 GiB


class MemFilesystem(Filesystem):
    def __init__(self, slow: dict[str, float] | None = None) -> None:
        self.root = Node(stat.S_IFDIR | 0o755)
        self.slow = slow or {}
        self.attaches: list[Credentials] = []
        self.open_files = 0  # MemFile objects not yet closed: leak detector

    async def attach(self, aname: str, creds: Credentials) -> "MemFile":
        self.attaches.append(creds)
        return MemFile(self, self.root, "")

    # helpers for tests
    def add(self, path: str, data: bytes = b"", mode: int = stat.S_IFREG | 0o644) -> Node:
        parent = self.root
        *dirs, name = path.split("/")
        for d in dirs:
            parent = parent.children.setdefault(d, Node(stat.S_IFDIR | 0o755, parent))
        node = parent.children[name] = Node(mode, parent)
        node.data[:] = data
        return node


class MemFile(File):
    def __init__(self, fs: MemFilesystem, node: Node, name: str) -> None:
        self.fs = fs
        self.node = node
        self.name = name
        self.closed = False
        fs.open_files += 1

    @property
    def qid(self) -> Qid:
        return self.node.qid

    async def _maybe_slow(self) -> None:
        delay = self.fs.slow.get(self.name)
        if delay:
            await trio.sleep(delay)

    def _dir(self) -> Node:
        if not stat.S_ISDIR(self.node.mode):
            raise errno_error(errno.ENOTDIR)
        return self.node

    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], File | None]:
        await self._maybe_slow()
        node, qids, name = self.node, [], self.name
        for i, name in enumerate(names):
            if not stat.S_ISDIR(node.mode):
                nxt = None
            elif name == "..":
                nxt = node.parent
            else:
                nxt = node.children.get(name)
            if nxt is None:
                if i == 0:
                    raise errno_error(errno.ENOENT if stat.S_ISDIR(node.mode) else errno.ENOTDIR)
                return qids, None
            node = nxt
            qids.append(node.qid)
        return qids, MemFile(self.fs, node, name)

    async def clone(self) -> File:
        return MemFile(self.fs, self.node, self.name)

    async def open(self, flags: int) -> int:
        if flags & OpenFlags.TRUNC:
            self.node.data.clear()
        return 0

    async def create(self, name, flags, mode, gid):
        parent = self._dir()
        if name in parent.children:
            raise errno_error(errno.EEXIST)
        node = parent.children[name] = Node(stat.S_IFREG | (mode & 0o7777), parent)
        return MemFile(self.fs, node, name), 0

    async def read(self, offset: int, count: int) -> bytes:
        await self._maybe_slow()
        if stat.S_ISDIR(self.node.mode):
            raise errno_error(errno.EISDIR)
        return bytes(self.node.data[offset:offset + count])

    async def write(self, offset: int, data: memoryview) -> int:
        await self._maybe_slow()
        buf = self.node.data
        if offset + len(data) > MAX_FILE_SIZE:  # RAM is bounded: a 4 GiB offset is EFBIG
            raise errno_error(errno.EFBIG, "beyond the RAM file size limit")
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        self.node.version += 1
        return len(data)

    async def readdir(self, offset: int, count: int) -> Sequence[Dirent]:
        node = self._dir()
        entries = [(".", node), ("..", node.parent)] + list(node.children.items())
        out = []
        for index, (name, child) in enumerate(entries[offset:], start=offset + 1):
            kind = DirentType.DIR if stat.S_ISDIR(child.mode) else DirentType.REG
            out.append(Dirent(child.qid, index, int(kind), name))
        return out

    async def getattr(self, mask: int) -> Attr:
        await self._maybe_slow()
        n = self.node
        return Attr(qid=n.qid, mode=n.mode, size=len(n.data), nlink=1)

    async def setattr(self, attr: SetAttr) -> None:
        if attr.valid & 1:
            self.node.mode = (self.node.mode & ~0o7777) | (attr.mode & 0o7777)
        if attr.valid & 8:
            del self.node.data[attr.size:]

    async def statfs(self) -> StatFs:
        return StatFs(blocks=100, bfree=50)

    async def readlink(self) -> str:
        if not stat.S_ISLNK(self.node.mode):
            raise errno_error(errno.EINVAL)
        return self.node.target

    async def mkdir(self, name, mode, gid) -> Qid:
        parent = self._dir()
        if name in parent.children:
            raise errno_error(errno.EEXIST)
        node = parent.children[name] = Node(stat.S_IFDIR | mode, parent)
        return node.qid

    async def symlink(self, name, target, gid) -> Qid:
        parent = self._dir()
        node = parent.children[name] = Node(stat.S_IFLNK | 0o777, parent)
        node.target = target
        return node.qid

    async def unlinkat(self, name: str, flags: int) -> None:
        parent = self._dir()
        if name not in parent.children:
            raise errno_error(errno.ENOENT)
        del parent.children[name]

    async def renameat(self, oldname, newdir, newname) -> None:
        src, dst = self._dir(), newdir._dir()
        if oldname not in src.children:
            raise errno_error(errno.ENOENT)
        node = dst.children[newname] = src.children.pop(oldname)
        node.parent = dst

    async def rename(self, newdir, newname) -> None:
        for name, child in list(self.node.parent.children.items()):
            if child is self.node:
                del self.node.parent.children[name]
        newdir._dir().children[newname] = self.node
        self.node.parent = newdir.node

    async def remove(self) -> None:
        for name, child in list(self.node.parent.children.items()):
            if child is self.node:
                del self.node.parent.children[name]
                return
        raise errno_error(errno.ENOENT)

    async def xattr_get(self, name: str) -> bytes:
        try:
            return self.node.xattrs[name]
        except KeyError:
            raise errno_error(errno.ENODATA) from None

    async def xattr_list(self) -> list[str]:
        return sorted(self.node.xattrs)

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        if name.startswith("forbidden."):
            raise errno_error(errno.EPERM)
        self.node.xattrs[name] = value

    async def xattr_remove(self, name: str) -> None:
        self.node.xattrs.pop(name, None)

    async def close(self) -> None:
        assert not self.closed, "File.close called twice"
        self.closed = True
        self.fs.open_files -= 1
