"""A tar archive served read-only in place: the base layer of a copy-on-write root.

The archive is indexed once (one pass over the headers into a tree of ``TarNode``),
and each read is one pread at the member's offset in the archive: nothing is ever
unpacked. A compressed archive (.tar.gz, .tar.xz, .tar.zst, .tar.bz2) is first
decompressed, once, into a cache file next to the other ninep caches
(``$NINEP_CACHE`` or ~/.cache/ninep, ``tar/<key>.tar``, keyed by the archive's path,
size and mtime); the numbers and why not seek points are in docs/cow.md.

What the headers say is what the guest sees: modes, owners (numeric uid/gid), times,
symlinks, hard links (one node, same qid, nlink counts the names), device nodes and
FIFOs, and xattrs from PAX ``SCHILY.xattr.*`` records. Members with ".." in their
path, or hard links to nothing, are skipped (and counted in ``skipped``).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import logging
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import time
from typing import Sequence

from ..protocol.constants import ACCMODE, OpenFlags, QidType
from ..protocol.messages import Dirent, Qid
from .backend import Attr, Credentials, File, Filesystem, StatFs, errno_error
from .hostqid import HOST_QID_VERSION

log = logging.getLogger("ninep.tar")

COMPRESSED_SUFFIXES = (".gz", ".tgz", ".xz", ".txz", ".zst", ".tzst", ".bz2", ".tbz2")
_WRITES = (int(OpenFlags.WRONLY), int(OpenFlags.RDWR))
_KINDS = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
          tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}
_XATTR_PAX = "SCHILY.xattr."


def is_tarball(path: str) -> bool:
    name = path.lower()
    return name.endswith(".tar") or any(name.endswith(s) for s in COMPRESSED_SUFFIXES)


class TarNode:
    __slots__ = ("index", "kind", "mode", "uid", "gid", "size", "mtime", "target",
                 "rdev", "offset", "member", "children", "parent", "nlink", "xattrs")

    def __init__(self, index: int, kind: int, mode: int = 0o755, uid: int = 0, gid: int = 0,
                 mtime: int = 0) -> None:
        self.index = index
        self.kind = kind
        self.mode = mode
        self.uid, self.gid, self.mtime = uid, gid, mtime
        self.size = 0
        self.target = ""
        self.rdev = 0
        self.offset = -1
        self.member: tarfile.TarInfo | None = None  # kept only for sparse members
        self.children: dict[str, TarNode] | None = {} if kind == stat.S_IFDIR else None
        self.parent: TarNode | None = None
        self.nlink = 1
        self.xattrs: dict[str, bytes] = {}

    @property
    def qid(self) -> Qid:
        qtype = (QidType.DIR if self.kind == stat.S_IFDIR else
                 QidType.SYMLINK if self.kind == stat.S_IFLNK else QidType.FILE)
        return Qid(int(qtype), HOST_QID_VERSION, self.index)


def cache_dir() -> str:
    return os.environ.get("NINEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ninep")


def uncompressed(path: str) -> str:
    """``path`` itself for a plain tar; else the decompressed copy in the cache,
    made now if missing (to a temporary name, then renamed: never half a file)."""
    if path.lower().endswith(".tar"):
        return path
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    directory = os.path.join(cache_dir(), "tar")
    os.makedirs(directory, exist_ok=True)
    out = os.path.join(directory, key + ".tar")
    if os.path.exists(out):
        return out
    tmp = f"{out}.{os.getpid()}.tmp"
    started = time.monotonic()
    try:
        _decompress(path, tmp)
        os.rename(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.info("tar: decompressed %s into %s in %.1fs", path, out, time.monotonic() - started)
    return out


def _decompress(path: str, out: str) -> None:
    name = path.lower()
    if name.endswith((".zst", ".tzst")):
        try:
            import zstandard  # optional; the zstd command otherwise
        except ImportError:
            with open(out, "wb") as dst:
                subprocess.run(["zstd", "-dcq", "--", path], stdout=dst, check=True)
            return
        with open(path, "rb") as src, open(out, "wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        return
    opener = (gzip.open if name.endswith((".gz", ".tgz")) else
              lzma.open if name.endswith((".xz", ".txz")) else bz2.open)
    with opener(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


class TarIndex:
    """The tree of one (uncompressed) archive."""

    def __init__(self, path: str) -> None:
        self.path = path
        started = time.monotonic()
        self.tar_path = uncompressed(path)
        self.fd = os.open(self.tar_path, os.O_RDONLY | os.O_CLOEXEC)
        self.root = TarNode(0, stat.S_IFDIR)
        self.count = 1
        self.skipped: list[str] = []
        self._nlinks: dict[int, int] = {}
        with tarfile.open(self.tar_path, "r:") as tar:
            for member in tar:
                self._add(member)
        self.index_seconds = time.monotonic() - started
        log.info("tar: %s: %d entries indexed in %.2fs", path, self.count, self.index_seconds)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _new(self, kind: int, member: tarfile.TarInfo | None = None) -> TarNode:
        node = TarNode(self.count, kind)
        self.count += 1
        if member is not None:
            self._meta(node, member)
        return node

    @staticmethod
    def _meta(node: TarNode, member: tarfile.TarInfo) -> None:
        node.mode, node.uid, node.gid = member.mode & 0o7777, member.uid, member.gid
        node.mtime = int(member.mtime)
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX):
                node.xattrs[key[len(_XATTR_PAX):]] = value.encode("utf-8", "surrogateescape")

    def _dir(self, parts: list[str]) -> TarNode:
        node = self.root
        for part in parts:
            child = node.children.get(part)  # type: ignore[union-attr]
            if child is None or child.kind != stat.S_IFDIR:
                child = self._new(stat.S_IFDIR)
                self._place(node, part, child)
            node = child
        return node

    @staticmethod
    def _place(parent: TarNode, name: str, node: TarNode) -> None:
        old = parent.children.get(name)  # type: ignore[union-attr]
        if old is not None:
            old.nlink -= 1  # replaced, as a later member replaces an earlier on extraction
        parent.children[name] = node  # type: ignore[index]
        if node.kind == stat.S_IFDIR:
            node.parent = parent

    def lookup(self, parts: list[str]) -> TarNode | None:
        node: TarNode | None = self.root
        for part in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def _add(self, member: tarfile.TarInfo) -> None:
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self.skipped.append(member.name)
            return
        if not parts:
            if member.isdir():
                self._meta(self.root, member)
            return
        if member.isdir():
            node = self._dir(parts)
            self._meta(node, member)
            return
        if member.islnk():
            target = self.lookup([p for p in member.linkname.split("/") if p not in ("", ".")])
            if target is None or target.kind == stat.S_IFDIR:
                self.skipped.append(member.name)
                return
            target.nlink += 1
            self._place(self._dir(parts[:-1]), parts[-1], target)
            return
        if member.isreg():
            node = self._new(stat.S_IFREG, member)
            node.size, node.offset = member.size, member.offset_data
            if member.issparse():
                node.member = member
        elif member.type in _KINDS:
            node = self._new(_KINDS[member.type], member)
            if member.issym():
                node.target = member.linkname
                node.size = len(member.linkname.encode())
            elif member.ischr() or member.isblk():
                node.rdev = os.makedev(member.devmajor, member.devminor)
        else:
            self.skipped.append(member.name)
            return
        self._place(self._dir(parts[:-1]), parts[-1], node)

    def dir_nlink(self, node: TarNode) -> int:
        """2 + subdirectories, counted once per directory (the tree never changes)."""
        found = self._nlinks.get(node.index)
        if found is None:
            found = self._nlinks[node.index] = 2 + sum(
                1 for c in node.children.values() if c.kind == stat.S_IFDIR)  # type: ignore[union-attr]
        return found

    def read(self, node: TarNode, offset: int, count: int) -> bytes:
        count = max(0, min(count, node.size - offset))
        if count == 0:
            return b""
        if node.member is None:
            return os.pread(self.fd, count, node.offset + offset)
        with tarfile.open(self.tar_path, "r:") as tar:  # sparse: rare, slow and simple
            extracted = tar.extractfile(node.member)
            assert extracted is not None
            extracted.seek(offset)
            return extracted.read(count)


class TarFilesystem(Filesystem):
    """Serve the archive at ``path`` read-only (every change: EROFS)."""

    prompt = True

    def __init__(self, path: str) -> None:
        self.index = TarIndex(path)

    async def attach(self, aname: str, creds: Credentials) -> "TarFile":
        return TarFile(self.index, self.index.root)

    async def aclose(self) -> None:
        self.index.close()


class TarFile(File):
    def __init__(self, index: TarIndex, node: TarNode) -> None:
        self._index = index
        self._node = node
        self._opened = False
        self._parents: list[TarNode] = []
        self.qid = node.qid

    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], "TarFile | None"]:
        node = self._node
        qids: list[Qid] = []
        for name in names:
            try:
                if not name or "/" in name or "\0" in name:
                    raise errno_error(errno.EINVAL, f"bad name {name!r}")
                if node.kind != stat.S_IFDIR:
                    raise errno_error(errno.ENOTDIR, name)
                if name == "..":
                    node = node.parent or node
                elif name != ".":
                    child = node.children.get(name)  # type: ignore[union-attr]
                    if child is None:
                        raise errno_error(errno.ENOENT, name)
                    node = child
            except OSError:
                if not qids:
                    raise
                return qids, None
            qids.append(node.qid)
        return qids, TarFile(self._index, node)

    async def clone(self) -> "TarFile":
        return TarFile(self._index, self._node)

    async def open(self, flags: int) -> int:
        if (flags & int(ACCMODE)) in _WRITES or flags & int(OpenFlags.TRUNC):
            raise errno_error(errno.EISDIR if self._node.kind == stat.S_IFDIR else errno.EROFS)
        if self._node.kind == stat.S_IFLNK:
            raise errno_error(errno.ELOOP, "open of a symlink")
        if self._node.kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise errno_error(errno.ENXIO, "device nodes and FIFOs are not opened")
        self._opened = True
        return 0

    async def read(self, offset: int, count: int) -> bytes:
        if not self._opened or self._node.kind != stat.S_IFREG:
            raise errno_error(errno.EBADF if not self._opened else errno.EISDIR)
        return self._index.read(self._node, offset, count)

    def copy_source(self) -> tuple[int, int]:
        """(fd, offset) where this regular file's bytes lie, for copy_file_range."""
        if self._node.member is not None:
            raise errno_error(errno.EOPNOTSUPP, "sparse member")
        return self._index.fd, self._node.offset

    async def readdir(self, offset: int, count: int) -> list[Dirent]:
        node = self._node
        if node.children is None:
            raise errno_error(errno.ENOTDIR)
        entries = [(".", node), ("..", node.parent or node), *node.children.items()]
        out = []
        for i in range(offset, len(entries)):
            name, child = entries[i]
            out.append(Dirent(child.qid, i + 1, child.kind >> 12, name))
            if len(out) * 32 > count:
                break
        return out

    async def getattr(self, mask: int) -> Attr:
        n = self._node
        is_dir = n.kind == stat.S_IFDIR
        nlink = self._index.dir_nlink(n) if is_dir else n.nlink
        size = 4096 if is_dir else n.size
        return Attr(qid=n.qid, mode=n.kind | n.mode, uid=n.uid, gid=n.gid, nlink=nlink,
                    rdev=n.rdev, size=size, blocks=(size + 511) // 512,
                    atime_sec=n.mtime, mtime_sec=n.mtime, ctime_sec=n.mtime)

    async def statfs(self) -> StatFs:
        return StatFs(files=self._index.count, namelen=255)

    async def readlink(self) -> str:
        if self._node.kind != stat.S_IFLNK:
            raise errno_error(errno.EINVAL, "not a symlink")
        return self._node.target

    async def xattr_get(self, name: str) -> bytes:
        try:
            return self._node.xattrs[name]
        except KeyError:
            raise errno_error(errno.ENODATA, name) from None

    async def xattr_list(self) -> list[str]:
        return list(self._node.xattrs)

    async def close(self) -> None:
        self._opened = False
