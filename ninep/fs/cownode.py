"""The merged tree of one copy-on-write upper (a ``Session``): qids, lookups,
copy-up, and the changes that need more than the host export (mkdir over a deleted
directory, remove, rename). The Node objects themselves: ``cowtree``.

Crash safety rests on one rule: an upper entry always wins over a whiteout of the
same name. So a whiteout is written *before* the upper entry goes (a crash between
leaves the old state), a new upper entry is made *before* its name's whiteout is
dropped, and whole objects appear by rename(2) from the work directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import Awaitable, Callable

import trio

from ..protocol.constants import AT_REMOVEDIR, GetattrMask, OpenFlags, QidType
from ..protocol.messages import Qid
from . import cowupper as up
from . import hostmodel, hostsys
from .backend import File, errno_error
from .host import HostFile, HostFilesystem
from .hostpath import proc_path
from .hostqid import HOST_QID_VERSION
from .cowlist import merged_names
from .cowtree import Node, NodeCache, TreeLock, kind_of_qid

_BASE_TAG = 1 << 63
_WIDE_UPPER = 0x7FFE << 48  # upper paths with bit 63 set (never in practice)
_WIDE_BASE = 0x7FFF << 48
_INLINE_COPY_MAX = 1 << 20


class Session:
    """One upper directory and its merged tree (one aname and identity)."""

    def __init__(self, fs, name: str, path: str, upper_fs: HostFilesystem, work_fd: int,
                 index_fd: int, throwaway: bool) -> None:
        self.fs = fs
        self.name = name
        self.path = path
        self.upper_fs = upper_fs
        self.work_fd = work_fd
        self.index_fd = index_fd
        # Whether any hard-linked base file was copied up: only then does a lookup
        # that ends in the base look in the index.
        self.index_used = bool(os.listdir(proc_path(index_fd)))
        self.throwaway = throwaway
        self.root: Node = None  # type: ignore[assignment]  # set by the filesystem
        self.lock = TreeLock()  # one copy-up or tree change at a time
        self.fids = 0
        self.on_idle: Callable[[], Awaitable[None]] = None  # type: ignore[assignment]
        self.nodes = NodeCache()
        self.caching = True  # keep merged listings on Nodes (off when an upper is shared)
        self._wide: dict[tuple[int, int], int] = {}

    def locked(self) -> TreeLock:
        """The tree lock: no checkpoint when it is free (an uncontended ``async with
        trio.Lock`` still switches tasks, ~15 us, on every unlink)."""
        return self.lock

    async def stop_caching(self) -> None:
        self.caching = False
        self.nodes.size = 0
        await self.nodes.clear()

    async def close(self) -> None:
        await self.nodes.clear()
        if self.root is not None:
            await self.root.drop_layers()
            self.root = None  # type: ignore[assignment]
        for fd in (self.work_fd, self.index_fd):
            if fd >= 0:
                os.close(fd)
        self.work_fd = self.index_fd = -1
        await self.upper_fs.aclose()
        if self.throwaway:
            shutil.rmtree(self.path, ignore_errors=True)

    # --- qids ----------------------------------------------------------------------
    def _path(self, tag: int, raw: int, wide: int) -> int:
        if raw < _BASE_TAG:
            return raw | tag
        return self._wide.setdefault((wide, raw), wide | len(self._wide))

    def base_qid(self, qid: Qid) -> Qid:
        return Qid(qid.type, HOST_QID_VERSION, self._path(_BASE_TAG, qid.path, _WIDE_BASE))

    def origin_qid(self, qtype: int, origin: int) -> Qid:
        return Qid(qtype, HOST_QID_VERSION, self._path(_BASE_TAG, origin, _WIDE_BASE))

    def upper_qid(self, qtype: int, raw: int) -> Qid:
        return Qid(qtype, HOST_QID_VERSION, self._path(0, raw, _WIDE_UPPER))

    def qid_of_upper(self, upper: HostFile) -> Qid:
        origin = None
        qtype = upper.qid.type
        if upper._fmt in (stat.S_IFREG, stat.S_IFDIR):
            origin = up.read_origin(proc_path(upper._node.fd), follow=True)
            if upper._fmt == stat.S_IFREG and self.upper_fs.mapped:
                mode = hostmodel.read_mapped_mode(upper._node.fd, stat.S_IFREG)
                if mode is not None and stat.S_ISLNK(mode):  # a mapped symlink is a host file
                    qtype = int(QidType.SYMLINK)
        if origin is not None:
            return self.origin_qid(qtype, origin)
        return self.upper_qid(qtype, upper.qid.path)

    # --- lookups -------------------------------------------------------------------
    async def lookup(self, d: Node, name: str) -> Node:
        """The child ``name`` of directory ``d`` (acquired), or FileNotFoundError."""
        child = d.children.get(name)
        if child is not None:
            child.acquire()
            if (self.index_used and child.upper is None and child.base is not None
                    and child.kind != stat.S_IFDIR):
                # Another name of this base file may have been copied up since.
                try:
                    child.upper = await self._link_from_index(d, name, child.base.qid.path)
                except BaseException:
                    await child.release()
                    raise
                if child.upper is not None:
                    await child.drop_base()
            return child
        if d.removed or up.is_reserved(name, d.parent is None):
            raise errno_error(errno.ENOENT, name)
        upper: HostFile | None = None
        if d.upper is not None:
            try:
                _, upper = await d.upper.walk([name])
            except FileNotFoundError:
                pass
        base: File | None = None
        try:
            if upper is not None:
                kind = upper._fmt
                if kind == stat.S_IFDIR:
                    base = await self._dir_base(d, name, upper)
                qid = self.qid_of_upper(upper)
            else:
                base = await self._base_child(d, name)
                if base is None or (d.upper is not None
                                    and up.has_whiteout(d.upper._node.fd, name)):
                    raise errno_error(errno.ENOENT, name)
                kind = kind_of_qid(base.qid)
                qid = self.base_qid(base.qid)
                if self.index_used and kind != stat.S_IFDIR:
                    upper = await self._link_from_index(d, name, base.qid.path)
                    if upper is not None:
                        await base.close()
                        base = None
        except BaseException:
            for layer in (upper, base):
                if layer is not None:
                    await layer.close()
            raise
        node = Node(d.acquire(), name, kind, qid, upper, base)
        d.children[name] = node
        return node

    async def _link_from_index(self, d: Node, name: str, base_path: int) -> HostFile | None:
        """Another name of this base file was copied up: this name becomes one more
        link to that copy (overlayfs's index=on), so the names stay one file."""
        indexed = up.index_name(base_path)
        if not up.exists(self.index_fd, indexed):
            return None
        parent = await self.ensure_dir_upper(d)
        async with self.locked():
            if not up.exists(parent._node.fd, name):
                os.link(indexed, name, src_dir_fd=self.index_fd, dst_dir_fd=parent._node.fd,
                        follow_symlinks=False)
                up.sync_dir(parent._node.fd)
        _, upper = await parent.walk([name])
        return upper

    def index_links(self, node: Node) -> int:
        """1 if the index holds one of this upper file's names (hidden from nlink)."""
        if not self.index_used or node.upper is None or node.kind == stat.S_IFDIR:
            return 0
        if not node.qid.path & _BASE_TAG or node.qid.path >> 48 == _WIDE_BASE >> 48:
            return 0
        try:
            st = os.stat(up.index_name(node.qid.path & ~_BASE_TAG), dir_fd=self.index_fd,
                         follow_symlinks=False)
        except FileNotFoundError:
            return 0
        mine = os.stat(node.upper._node.fd)
        return int((st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino))

    async def _dir_base(self, d: Node, name: str, upper: HostFile) -> File | None:
        """The base directory an upper directory merges with: none if it is opaque,
        the one its redirect names if it was renamed, else the one of its name."""
        fd = upper._node.fd
        redirect = up.read_redirect(proc_path(fd))
        if (redirect is None and d.base is None) or up.is_opaque(fd):
            return None
        if redirect is None:
            return await self._base_child(d, name, dirs_only=True)
        try:
            _, found = await self.root.base.walk(redirect)
        except OSError:
            return None  # a different base under this upper: nothing there now
        if found is not None and not found.qid.type & QidType.DIR:
            await found.close()
            return None
        return found

    def base_path(self, node: Node) -> list[str]:
        """Where ``node``'s base directory is, from the base's root: its nearest
        redirected ancestor's redirect (or the root), then the names below it."""
        names: list[str] = []
        while node.parent is not None:
            if node.upper is not None and node.kind == stat.S_IFDIR:
                redirect = up.read_redirect(proc_path(node.upper._node.fd))
                if redirect is not None:
                    return redirect + names[::-1]
            names.append(node.name)
            node = node.parent
        return names[::-1]

    async def _base_child(self, d: Node, name: str, dirs_only: bool = False) -> File | None:
        if d.base is None:
            return None
        try:
            _, found = await d.base.walk([name])
        except OSError:
            return None
        if found is not None and dirs_only and not found.qid.type & QidType.DIR:
            await found.close()
            return None
        return found

    async def base_has(self, d: Node, name: str) -> bool:
        found = await self._base_child(d, name)
        if found is None:
            return False
        await found.close()
        return True

    def surely_absent(self, d: Node, name: str) -> bool:
        """A cheap "no such name" for directories with no base below them (the
        usual place of a guest's own files): one fstatat, no exception machinery
        of a walk. False means "ask ``lookup``"."""
        if d.base is not None or d.removed or name in d.children:
            return False
        if d.upper is None or up.exists(d.upper._node.fd, name):
            return False
        return not up.is_reserved(name, d.parent is None)

    async def exists(self, d: Node, name: str) -> bool:
        if self.surely_absent(d, name):
            return False
        try:
            node = await self.lookup(d, name)
        except FileNotFoundError:
            return False
        await node.release()
        return True

    # --- copy-up -------------------------------------------------------------------
    async def copy_up(self, node: Node, data: bool = True) -> None:
        if node.upper is not None:
            return
        if not node.removed:
            await self.copy_up(node.parent)  # type: ignore[arg-type]
        async with self.locked():
            if node.upper is None:
                await self._copy_up_locked(node, data)

    async def copied_up(self, node: Node, data: bool = True) -> HostFile:
        await self.copy_up(node, data)
        assert node.upper is not None
        return node.upper

    async def ensure_dir_upper(self, d: Node) -> HostFile:
        return await self.copied_up(d)

    async def _copy_up_locked(self, node: Node, data: bool) -> None:
        base = node.base
        assert base is not None, "a node without an upper has a base"
        if self.index_used and node.kind != stat.S_IFDIR and not node.removed:
            indexed = up.index_name(base.qid.path)
            if up.exists(self.index_fd, indexed):  # another name of it was copied up
                parent = node.parent.upper  # type: ignore[union-attr]
                os.link(indexed, node.name, src_dir_fd=self.index_fd,
                        dst_dir_fd=parent._node.fd, follow_symlinks=False)
                up.sync_dir(parent._node.fd)
                _, node.upper = await parent.walk([node.name])
                await node.drop_base()
                return
        attr = await base.getattr(GetattrMask.ALL)
        xattrs: dict[str, bytes] = {}
        try:
            for xname in await base.xattr_list():
                try:
                    xattrs[xname] = bytes(await base.xattr_get(xname))
                except OSError:
                    pass
        except OSError:
            pass
        work = self.work_fd
        tmp = up.new_temp_name()
        kind = stat.S_IFMT(attr.mode)
        if kind == stat.S_IFREG:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600, dir_fd=work)
            try:
                if data and attr.size:
                    await self._copy_data(base, fd, attr.size)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                up.remove_tree(work, tmp)
                raise
            os.close(fd)
        elif kind == stat.S_IFDIR:
            os.mkdir(tmp, 0o700, dir_fd=work)
        elif self.upper_fs.mapped:
            # A mapped upper keeps symlinks and special files as plain host files, as
            # QEMU's mapped-xattr does: no privilege needed, no host device ever made.
            target = await base.readlink() if kind == stat.S_IFLNK else None
            hostmodel.make_mapped_entry(work, tmp, attr.mode, target)
        elif kind == stat.S_IFLNK:
            os.symlink(await base.readlink(), tmp, dir_fd=work)
        else:
            os.mknod(tmp, kind | 0o600, attr.rdev, dir_fd=work)
        try:
            up.finish_copy(work, tmp, attr.mode, attr.uid, attr.gid,
                           ((attr.atime_sec, attr.atime_nsec), (attr.mtime_sec, attr.mtime_nsec)),
                           xattrs, base.qid.path, mapped=self.upper_fs.mapped, rdev=attr.rdev)
            if kind != stat.S_IFDIR and attr.nlink > 1:
                os.link(tmp, up.index_name(base.qid.path), src_dir_fd=work,
                        dst_dir_fd=self.index_fd, follow_symlinks=False)
                self.index_used = True
            if node.removed:
                # Open-unlinked and changed now: the copy lives on, nameless, in work/.
                _, made = await self.root.upper.walk([up.META_DIR, "work", tmp])
                os.unlink(tmp, dir_fd=work)
            else:
                parent = node.parent.upper  # type: ignore[union-attr]
                up.move_into_place(work, tmp, parent._node.fd, node.name)
                _, made = await parent.walk([node.name])
        except BaseException:
            if up.exists(work, tmp):
                up.remove_tree(work, tmp)
            raise
        node.upper = made
        if kind != stat.S_IFDIR:
            await node.drop_base()  # a directory keeps its base: listings still merge

    async def _copy_data(self, base: File, dst: int, size: int) -> None:
        if isinstance(base, HostFile):
            src = os.open(proc_path(base._node.fd), os.O_RDONLY | os.O_CLOEXEC)
            offset = 0
        elif hasattr(base, "copy_source"):
            src, offset = base.copy_source()
            src = os.dup(src)
        else:
            await self._copy_through_reads(base, dst)
            return
        try:
            if size <= _INLINE_COPY_MAX:
                up.copy_bytes(src, dst, offset, size)
            else:
                await trio.to_thread.run_sync(up.copy_bytes, src, dst, offset, size)
        finally:
            os.close(src)

    @staticmethod
    async def _copy_through_reads(base: File, dst: int) -> None:
        reader = await base.clone()
        try:
            await reader.open(int(OpenFlags.RDONLY))
            offset = 0
            while chunk := await reader.read(offset, 1 << 20):
                os.pwrite(dst, chunk, offset)
                offset += len(chunk)
        finally:
            await reader.close()

    # --- making entries ------------------------------------------------------------
    def adopt(self, d: Node, name: str, made: HostFile) -> Node:
        """A file just created in ``d``'s upper by the host export: ``made`` becomes
        the Node's upper (the creating fid shares it while open: ``CowFile.close``)."""
        if d.base is not None:  # only where a base shows through can a whiteout matter
            up.drop_marker(d.upper._node.fd, up.WHITEOUT_PREFIX + name)  # type: ignore[union-attr]
        node = Node(d.acquire(), name, made._fmt, self.upper_qid(made.qid.type, made.qid.path),
                    made, None)
        d.children[name] = node
        d.listing = None
        return node

    async def made(self, d: Node, name: str) -> Qid:
        """After an entry was made in ``d``'s upper: drop its whiteout, give its qid."""
        if d.base is not None:
            up.drop_marker(d.upper._node.fd, up.WHITEOUT_PREFIX + name)  # type: ignore[union-attr]
        d.listing = None
        node = await self.lookup(d, name)
        qid = node.qid
        await node.release()
        return qid

    async def mkdir(self, d: Node, name: str, mode: int, gid: int) -> Qid:
        parent = await self.ensure_dir_upper(d)
        if not await self.base_has(d, name):
            await parent.mkdir(name, mode, gid)
            return await self.made(d, name)
        # Over a deleted base directory: the new one must hide the old contents from
        # its first moment, so it is completed (opaque) in work/ and renamed in.
        work, tmp = self.work_fd, up.new_temp_name()
        os.mkdir(tmp, 0o700, dir_fd=work)
        try:
            fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=work)
            try:
                up.make_marker(fd, up.OPAQUE_MARKER, durable=False)
                if self.upper_fs.mapped:
                    hostmodel.own_new(hostmodel.MAPPED, fd, os.stat(fd),
                                      stat.S_IFDIR | (mode & 0o7777), parent._creds.uid, gid,
                                      self.upper_fs.mapped_owner, None)
                else:
                    os.chmod(proc_path(fd), mode & 0o7777)
                    uid = parent._creds.uid if parent._creds.uid is not None else -1
                    try:
                        hostsys.fchown_empty(fd, uid, gid if gid not in (0xFFFFFFFF, -1) else -1)
                    except PermissionError:
                        pass
            finally:
                os.close(fd)
            up.move_into_place(work, tmp, parent._node.fd, name)
        except BaseException:
            if up.exists(work, tmp):
                up.remove_tree(work, tmp)
            raise
        return await self.made(d, name)

    # --- removing and renaming -----------------------------------------------------
    async def remove(self, node: Node) -> None:
        d = node.parent
        assert d is not None
        if node.removed:
            raise errno_error(errno.ENOENT, node.name)
        if node.kind == stat.S_IFDIR and await merged_names(self, node):
            raise errno_error(errno.ENOTEMPTY, node.name)
        base_has = await self.base_has(d, node.name)
        if base_has:
            await self.ensure_dir_upper(d)
        async with self.locked():
            if node.removed:
                raise errno_error(errno.ENOENT, node.name)
            if base_has:
                up.make_marker(d.upper._node.fd, up.WHITEOUT_PREFIX + node.name)  # type: ignore[union-attr]
            if node.upper is not None:
                await self._unlink_upper(d, node)
            self.detach(node)

    async def _unlink_upper(self, d: Node, node: Node) -> None:
        assert d.upper is not None and node.upper is not None
        if node.kind != stat.S_IFDIR:
            await d.upper.unlinkat(node.name, 0)
        elif os.listdir(proc_path(node.upper._node.fd)):
            self._discard_upper_dir(d.upper._node.fd, node.name)  # only markers left
        else:
            await d.upper.unlinkat(node.name, AT_REMOVEDIR)

    def _discard_upper_dir(self, dir_fd: int, name: str) -> None:
        """Atomically gone (moved into work/), then emptied at leisure."""
        tmp = up.new_temp_name()
        os.rename(name, tmp, src_dir_fd=dir_fd, dst_dir_fd=self.work_fd)
        up.remove_tree(self.work_fd, tmp)

    def detach(self, node: Node) -> None:
        node.removed = True
        node.listing = None
        if node.parent is not None:
            node.parent.listing = None
            if node.parent.children.get(node.name) is node:
                del node.parent.children[node.name]

    async def rename(self, node: Node, newdir: Node, newname: str) -> None:
        olddir = node.parent
        if olddir is None:
            raise errno_error(errno.EBUSY, "the root cannot move")
        if node.removed:
            raise errno_error(errno.ENOENT, node.name)
        ancestor: Node | None = newdir
        while ancestor is not None:
            if ancestor is node:
                raise errno_error(errno.EINVAL, "rename into itself")
            ancestor = ancestor.parent
        try:
            dst: Node | None = await self.lookup(newdir, newname)
        except FileNotFoundError:
            dst = None
        try:
            if dst is node:
                return
            if dst is not None:
                if node.kind == stat.S_IFDIR and dst.kind != stat.S_IFDIR:
                    raise errno_error(errno.ENOTDIR, newname)
                if node.kind != stat.S_IFDIR and dst.kind == stat.S_IFDIR:
                    raise errno_error(errno.EISDIR, newname)
                if dst.kind == stat.S_IFDIR and await merged_names(self, dst):
                    raise errno_error(errno.ENOTEMPTY, newname)
            target = await self.ensure_dir_upper(newdir)
            # A directory: only itself (its metadata); what is below stays in the base,
            # found through the redirect _rename_locked leaves on it.
            await self.copy_up(node)
            async with self.locked():
                await self._rename_locked(node, olddir, newdir, target, newname, dst)
        finally:
            if dst is not None:
                await dst.release()

    async def _rename_locked(self, node: Node, olddir: Node, newdir: Node, target: HostFile,
                             newname: str, dst: Node | None) -> None:
        assert node.upper is not None and olddir.upper is not None
        is_dir = node.kind == stat.S_IFDIR
        if is_dir and node.base is not None:
            # Its base is found by this path, not by its new name (overlayfs's
            # redirect_dir): equivalent where it stands now, so safe to write first.
            up.write_redirect(proc_path(node.upper._node.fd), self.base_path(node))
        elif is_dir and await self.base_has(newdir, newname):
            up.make_marker(node.upper._node.fd, up.OPAQUE_MARKER)
        if dst is not None and dst.upper is not None and dst.kind == stat.S_IFDIR:
            if os.listdir(proc_path(dst.upper._node.fd)):
                self._discard_upper_dir(target._node.fd, newname)
        if await self.base_has(olddir, node.name):
            up.make_marker(olddir.upper._node.fd, up.WHITEOUT_PREFIX + node.name)
        await node.upper.rename(target, newname)
        up.drop_marker(target._node.fd, up.WHITEOUT_PREFIX + newname)
        if dst is not None:
            self.detach(dst)
        if olddir.children.get(node.name) is node:
            del olddir.children[node.name]
        node.parent, node.name = newdir.acquire(), newname
        newdir.children[newname] = node
        olddir.listing = newdir.listing = node.listing = None
        await olddir.release()
