"""A tar archive served read-only in place: the base layer of a copy-on-write root.

The archive is indexed once (one pass over the headers into a tree of ``TarNode``),
and each read is one pread at the member's offset in the archive: nothing is ever
unpacked. A compressed archive (.tar.gz, .tar.xz, .tar.zst, .tar.bz2) is first
decompressed, once, into a cache file next to the other ninep caches
(``$NINEP_CACHE``, else ``$XDG_CACHE_HOME/ninep`` or ~/.cache/ninep; ``tar/<key>.tar``,
keyed by the archive's path, size and mtime); the numbers and why not seek points
are in docs/cow.md.

An OCI image layout (a directory with ``oci-layout`` and ``index.json``) is its
image's layers applied in order into one tree (``oci_layers``): each layer blob is an
archive as above, and its OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``) delete what
lower layers had. Each file is read from the layer that last wrote it.

What the headers say is what the guest sees: modes, owners (numeric uid/gid), times,
symlinks, hard links (one node, same qid, nlink counts the names), device nodes and
FIFOs, and xattrs from PAX ``SCHILY.xattr.*`` records. Members with ".." in their
path, names that are not UTF-8, or hard links to nothing, are skipped (and listed in
``skipped``).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
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
                 "rdev", "offset", "member", "children", "parent", "nlink", "xattrs", "layer")

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
        self.layer = 0  # which archive of a layered (OCI) base holds the bytes

    @property
    def qid(self) -> Qid:
        qtype = (QidType.DIR if self.kind == stat.S_IFDIR else
                 QidType.SYMLINK if self.kind == stat.S_IFLNK else QidType.FILE)
        return Qid(int(qtype), HOST_QID_VERSION, self.index)


def cache_dir() -> str:
    if os.environ.get("NINEP_CACHE"):
        return os.environ["NINEP_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ninep")


_MAGIC = ((b"\x1f\x8b", "gz"), (b"\x28\xb5\x2f\xfd", "zst"), (b"\xfd7zXZ\x00", "xz"),
          (b"BZh", "bz2"))


def compression_of(path: str) -> str | None:
    """"gz", "zst", "xz", "bz2" by the file's magic number (OCI blobs have no
    suffix), None for a plain tar."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def uncompressed(path: str) -> str:
    """``path`` itself for a plain tar; else the decompressed copy in the cache,
    made now if missing (to a temporary name, then renamed: never half a file)."""
    kind = compression_of(path)
    if kind is None:
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
        _decompress(path, tmp, kind)
        os.rename(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    log.info("tar: decompressed %s into %s in %.1fs", path, out, time.monotonic() - started)
    return out


def _decompress(path: str, out: str, kind: str) -> None:
    if kind == "zst":
        try:
            import zstandard  # optional; the zstd command otherwise
        except ImportError:
            with open(out, "wb") as dst:
                subprocess.run(["zstd", "-dcq", "--", path], stdout=dst, check=True)
            return
        with open(path, "rb") as src, open(out, "wb") as dst:
            # 1 MiB writes, as below: the page cache keeps the copy in folios as
            # large as the writes, and big folios make every later read cheaper.
            zstandard.ZstdDecompressor().copy_stream(src, dst, write_size=1 << 20)
        return
    opener = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}[kind]
    with opener(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


class TarIndex:
    """The tree of one archive, or of OCI image layers applied in order (``layers``:
    later archives override earlier ones, and their ``.wh.NAME`` / ``.wh..wh..opq``
    entries delete a name / the lower layers' contents of a directory)."""

    def __init__(self, path: str | Sequence[str]) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        self.path = paths[0] if isinstance(path, str) else f"{len(paths)} layers"
        started = time.monotonic()
        self.tar_paths = [uncompressed(p) for p in paths]
        self.fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in self.tar_paths]
        self.whiteouts = not isinstance(path, str)
        self.root = TarNode(0, stat.S_IFDIR)
        self.count = 1
        self.skipped: list[str] = []
        self._nlinks: dict[int, int] = {}
        self._layer = 0
        for self._layer, tar_path in enumerate(self.tar_paths):
            with tarfile.open(tar_path, "r:") as tar:
                for member in tar:
                    self._add(member)
        self.index_seconds = time.monotonic() - started
        log.info("tar: %s: %d entries indexed in %.2fs", self.path, self.count, self.index_seconds)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def _new(self, kind: int, member: tarfile.TarInfo | None = None) -> TarNode:
        node = TarNode(self.count, kind)
        node.layer = self._layer
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
        try:
            member.name.encode()
        except UnicodeEncodeError:  # not UTF-8 in the archive: no 9P string carries it
            self.skipped.append(member.name.encode("utf-8", "surrogateescape").decode("latin-1"))
            return
        if ".." in parts:
            self.skipped.append(member.name)
            return
        if not parts:
            if member.isdir():
                self._meta(self.root, member)
            return
        if self.whiteouts and parts[-1].startswith(".wh."):
            self._whiteout(parts)
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

    def _whiteout(self, parts: list[str]) -> None:
        """OCI: ``.wh..wh..opq`` hides what lower layers put in its directory,
        ``.wh.NAME`` deletes NAME of the lower layers."""
        parent = self.lookup(parts[:-1])
        if parent is None or parent.children is None:
            return
        if parts[-1] == ".wh..wh..opq":
            doomed = [n for n, c in parent.children.items() if c.layer < self._layer]
        else:
            doomed = [parts[-1][len(".wh."):]]
        for name in doomed:
            gone = parent.children.pop(name, None)
            if gone is not None:
                gone.nlink -= 1

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
            return os.pread(self.fds[node.layer], count, node.offset + offset)
        with tarfile.open(self.tar_paths[node.layer], "r:") as tar:  # sparse: rare, slow and simple
            extracted = tar.extractfile(node.member)
            assert extracted is not None
            extracted.seek(offset)
            return extracted.read(count)


def is_oci_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "oci-layout")) and \
        os.path.isfile(os.path.join(path, "index.json"))


_DIGEST = re.compile(r"([a-z0-9]+):([a-f0-9]{32,128})")


def oci_layers(layout: str) -> list[str]:
    """The layer blobs of an OCI image layout's image, bottom first: the first
    manifest of index.json (through nested indexes, preferring linux/amd64 or the
    host's architecture)."""
    def blob(digest: str) -> str:
        found = _DIGEST.fullmatch(digest)
        if not found:
            raise ValueError(f"{layout}: bad digest {digest!r}")
        return os.path.join(layout, "blobs", found.group(1), found.group(2))

    def load(path: str) -> dict:
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    document = load(os.path.join(layout, "index.json"))
    for _ in range(8):
        if "layers" in document:
            return [blob(layer["digest"]) for layer in document["layers"]]
        manifests = document.get("manifests") or []
        if not manifests:
            break
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        chosen = next((m for m in manifests if m.get("platform", {}).get("architecture") == arch),
                      manifests[0])
        document = load(blob(chosen["digest"]))
    raise ValueError(f"{layout}: no image manifest with layers")


class TarFilesystem(Filesystem):
    """Serve the archive at ``path`` (or OCI ``layers``, bottom first) read-only
    (every change: EROFS)."""

    prompt = True

    def __init__(self, path: str | Sequence[str]) -> None:
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
        return self._index.fds[self._node.layer], self._node.offset

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
