"""A union of trees under one root: a base export with other filesystems mounted on
some of its directories, e.g. a host root directory with a synthetic /run/host:

    UnionFilesystem(base=HostFilesystem("/srv/guest-root"),
                    mounts={"run/host": Directory({"hostname": b"build-7\\n"})})

Walks cross into a mounted tree at its mount point and ".." from a mounted root comes
back to the parent in the tree below; the parent's readdir shows the mount point
(replacing a base entry of that name, or adding one: the base need not have the
directory, only its parent). Mount points cannot be removed, renamed or created over
(EBUSY/EEXIST); renames and links across trees fail with EXDEV, as across mounts.

Each union attach attaches every layer at most once, lazily, with the same aname and
credentials, and closes those roots when its last fid goes: a mounted synthetic tree
sees one ``Session`` per client attach, as if served on its own.

qid paths: the base's are passed through; mount number i (1, 2...) puts 0xFF00 + i in
the top 16 bits over the mounted tree's 48 low bits (host exports use the top bits
for a device index counted from 0, synthetic trees count from 1), and a table
numbers the rare wider paths, so no two files of the union share a qid path.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from ..protocol.constants import DirentType
from ..protocol.messages import Dirent, Qid
from .backend import Attr, Credentials, File, Filesystem, SetAttr, StatFs, errno_error

UnionPath = tuple[str, ...]

_LOW_BITS = 48
_LOW_MASK = (1 << _LOW_BITS) - 1
_MOUNT_TAG_BASE = 0xFF00
_WIDE_TAG = 0xFE00  # paths of mounted trees that do not fit the low 48 bits
_READDIR_BATCH = 1 << 16


def split_mount_point(path: str) -> UnionPath:
    parts = tuple(p for p in path.split("/") if p)
    if not parts or any(p in (".", "..") or "\0" in p for p in parts):
        raise ValueError(f"bad mount point {path!r}: need a path below the root, without . or ..")
    return parts


def _step(path: UnionPath, name: str) -> UnionPath:
    if name == "..":
        return path[:-1]
    if name == ".":
        return path
    return path + (name,)


class _QidSpace:
    def __init__(self) -> None:
        self._wide: dict[tuple[int, int], int] = {}

    def map(self, layer: int, qid: Qid) -> Qid:
        if layer == 0:
            return qid
        if qid.path <= _LOW_MASK:
            path = ((_MOUNT_TAG_BASE + layer) << _LOW_BITS) | qid.path
        else:
            path = self._wide.setdefault((layer, qid.path), (_WIDE_TAG << _LOW_BITS) | len(self._wide))
        return Qid(qid.type, qid.version, path)


class UnionFilesystem(Filesystem):
    """``base`` with ``mounts`` ({"run/host": tree}) laid over it. A mount may be any
    Filesystem, or anything ``ninep.fs.synthetic.as_filesystem`` accepts."""

    def __init__(self, base: Filesystem, mounts: Mapping[str, Any]):
        from .synthetic import as_filesystem  # synthetic trees are the usual mounts

        self.layers: list[Filesystem] = [base]
        self.mount_points: dict[UnionPath, int] = {}
        for path, tree in mounts.items():
            point = split_mount_point(path)
            if point in self.mount_points:
                raise ValueError(f"{path!r} is mounted twice")
            self.layers.append(as_filesystem(tree))
            self.mount_points[point] = len(self.layers) - 1
        # parent path -> {name: layer} for the directories whose listing gains entries
        self.mounted_children: dict[UnionPath, dict[str, int]] = {}
        for point, layer in self.mount_points.items():
            self.mounted_children.setdefault(point[:-1], {})[point[-1]] = layer
        self.qids = _QidSpace()

    async def attach(self, aname: str, creds: Credentials) -> "UnionFile":
        attachment = _Attachment(self, aname, creds)
        root = await attachment.root(0)
        return UnionFile(attachment, 0, await root.clone(), ())

    async def aclose(self) -> None:
        for layer in self.layers:
            await layer.aclose()

    def crosses(self, path: UnionPath, name: str) -> bool:
        """Whether walking ``name`` from ``path`` leaves the current tree."""
        if name == ".":
            return False
        if name == "..":
            return path in self.mount_points
        return path + (name,) in self.mount_points

    def layer_of(self, path: UnionPath) -> tuple[int, UnionPath]:
        """The tree holding ``path`` (the deepest mount above it) and the path inside."""
        for depth in range(len(path), 0, -1):
            layer = self.mount_points.get(path[:depth])
            if layer is not None:
                return layer, path[depth:]
        return 0, path


@dataclass(eq=False)
class _Attachment:
    """One client attach: the root File of each layer (attached on first use) and a
    count of the union fids alive, so the roots are closed with the last of them."""

    union: UnionFilesystem
    aname: str
    creds: Credentials
    roots: dict[int, File] = field(default_factory=dict)
    fids: int = 0

    async def root(self, layer: int) -> File:
        root = self.roots.get(layer)
        if root is None:
            root = await self.union.layers[layer].attach(self.aname, self.creds)
            if layer in self.roots:  # another request attached it while we waited
                await root.close()
            else:
                self.roots[layer] = root
        return self.roots[layer]

    async def resolve(self, path: UnionPath) -> tuple[int, File]:
        """A new File for the union path ``path``, walked from its tree's root."""
        layer, inside = self.union.layer_of(path)
        root = await self.root(layer)
        if not inside:
            return layer, await root.clone()
        qids, file = await root.walk(list(inside))
        if file is None:
            raise errno_error(errno.ENOENT, "/".join(path))
        return layer, file

    async def release(self) -> None:
        self.fids -= 1
        if self.fids == 0:
            roots, self.roots = self.roots, {}
            for root in roots.values():
                await root.close()


class UnionFile(File):
    def __init__(self, attachment: _Attachment, layer: int, inner: File, path: UnionPath):
        self.attachment = attachment
        self.union = attachment.union
        self.layer = layer
        self.inner = inner
        self.path = path
        self._listing: list[Dirent] | None = None
        attachment.fids += 1

    @property
    def qid(self) -> Qid:  # type: ignore[override]
        return self.union.qids.map(self.layer, self.inner.qid)

    @property
    def lock_key(self) -> object:
        return (self.layer, self.inner.lock_key)

    def _wrap(self, layer: int, inner: File, path: UnionPath) -> "UnionFile":
        return UnionFile(self.attachment, layer, inner, path)

    # --- navigation ------------------------------------------------------------------
    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], File | None]:
        layer, inner, path = self.layer, self.inner, self.path
        owned: File | None = None  # a File we walked to and must close unless handed out
        qids: list[Qid] = []
        i = 0
        try:
            while i < len(names):
                # Walk as many names as stay inside the current tree in one inner walk.
                end, target = i, path
                while end < len(names) and not self.union.crosses(target, names[end]):
                    target = _step(target, names[end])
                    end += 1
                try:
                    if end > i:
                        inner_qids, walked = await inner.walk(list(names[i:end]))
                        qids.extend(self.union.qids.map(layer, q) for q in inner_qids)
                        if walked is None:
                            return qids, None
                    else:  # names[i] crosses a mount boundary
                        end, target = i + 1, _step(path, names[i])
                        layer, walked = await self.attachment.resolve(target)
                        qids.append(self.union.qids.map(layer, walked.qid))
                except OSError:
                    if not qids:
                        raise
                    return qids, None
                if owned is not None:
                    await owned.close()
                owned = inner = walked
                path, i = target, end
            assert owned is not None  # names is never empty: the server clones for that
            result, owned = self._wrap(layer, owned, path), None
            return qids, result
        finally:
            if owned is not None:
                await owned.close()

    async def clone(self) -> File:
        return self._wrap(self.layer, await self.inner.clone(), self.path)

    # --- I/O, delegated ------------------------------------------------------------------
    async def open(self, flags: int) -> int:
        return await self.inner.open(flags)

    async def read(self, offset: int, count: int) -> bytes | memoryview:
        return await self.inner.read(offset, count)

    async def write(self, offset: int, data: memoryview) -> int:
        return await self.inner.write(offset, data)

    async def fsync(self, datasync: bool) -> None:
        await self.inner.fsync(datasync)

    async def readdir(self, offset: int, count: int) -> Sequence[Dirent]:
        mounted = self.union.mounted_children.get(self.path)
        if mounted is None:
            return [replace(d, qid=self.union.qids.map(self.layer, d.qid))
                    for d in await self.inner.readdir(offset, count)]
        # A directory with mount points in it: merge the whole listing once per pass
        # and number it ourselves (the base's cookies cannot describe added entries).
        if offset == 0 or self._listing is None:
            self._listing = await self._merged_listing(mounted)
        return self._listing[offset:]

    async def _merged_listing(self, mounted: dict[str, int]) -> list[Dirent]:
        merged: list[tuple[Qid, int, str]] = []
        cookie = 0
        while True:
            batch = await self.inner.readdir(cookie, _READDIR_BATCH)
            if not batch:
                break
            for d in batch:
                if d.name not in mounted:
                    merged.append((self.union.qids.map(self.layer, d.qid), d.type, d.name))
            cookie = batch[-1].offset
        for name, layer in mounted.items():
            root = await self.attachment.root(layer)
            merged.append((self.union.qids.map(layer, root.qid), DirentType.DIR, name))
        return [Dirent(qid, index + 1, dtype, name)
                for index, (qid, dtype, name) in enumerate(merged)]

    # --- metadata ----------------------------------------------------------------------
    async def getattr(self, mask: int) -> Attr:
        attr = await self.inner.getattr(mask)
        return replace(attr, qid=self.union.qids.map(self.layer, attr.qid))

    async def setattr(self, attr: SetAttr) -> None:
        await self.inner.setattr(attr)

    async def statfs(self) -> StatFs:
        return await self.inner.statfs()

    async def readlink(self) -> str:
        return await self.inner.readlink()

    async def xattr_get(self, name: str) -> bytes:
        return await self.inner.xattr_get(name)

    async def xattr_list(self) -> list[str]:
        return await self.inner.xattr_list()

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        await self.inner.xattr_set(name, value, flags)

    async def xattr_remove(self, name: str) -> None:
        await self.inner.xattr_remove(name)

    # --- mutations: inside one tree, never over a mount point -------------------------
    def _refuse_mount_point(self, path: UnionPath, code: int) -> None:
        if path in self.union.mount_points:
            raise errno_error(code, "/".join(path) + " is a mount point")

    def _same_tree(self, other: File) -> "UnionFile":
        if not isinstance(other, UnionFile) or other.union is not self.union or other.layer != self.layer:
            raise errno_error(errno.EXDEV)
        return other

    async def create(self, name: str, flags: int, mode: int, gid: int) -> tuple[File, int]:
        self._refuse_mount_point(self.path + (name,), errno.EEXIST)
        new, iounit = await self.inner.create(name, flags, mode, gid)
        return self._wrap(self.layer, new, self.path + (name,)), iounit

    async def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        self._refuse_mount_point(self.path + (name,), errno.EEXIST)
        return self.union.qids.map(self.layer, await self.inner.mkdir(name, mode, gid))

    async def symlink(self, name: str, target: str, gid: int) -> Qid:
        self._refuse_mount_point(self.path + (name,), errno.EEXIST)
        return self.union.qids.map(self.layer, await self.inner.symlink(name, target, gid))

    async def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        self._refuse_mount_point(self.path + (name,), errno.EEXIST)
        return self.union.qids.map(self.layer, await self.inner.mknod(name, mode, major, minor, gid))

    async def link(self, target: File, name: str) -> None:
        self._refuse_mount_point(self.path + (name,), errno.EEXIST)
        await self.inner.link(self._same_tree(target).inner, name)

    async def renameat(self, oldname: str, newdir: File, newname: str) -> None:
        other = self._same_tree(newdir)
        self._refuse_mount_point(self.path + (oldname,), errno.EBUSY)
        self._refuse_mount_point(other.path + (newname,), errno.EBUSY)
        await self.inner.renameat(oldname, other.inner, newname)

    async def unlinkat(self, name: str, flags: int) -> None:
        self._refuse_mount_point(self.path + (name,), errno.EBUSY)
        await self.inner.unlinkat(name, flags)

    async def rename(self, newdir: File, newname: str) -> None:
        other = self._same_tree(newdir)
        self._refuse_mount_point(self.path, errno.EBUSY)
        self._refuse_mount_point(other.path + (newname,), errno.EBUSY)
        await self.inner.rename(other.inner, newname)
        self.path = other.path + (newname,)

    async def remove(self) -> None:
        self._refuse_mount_point(self.path, errno.EBUSY)
        await self.inner.remove()

    # --- lifetime ------------------------------------------------------------------------
    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            await self.attachment.release()
