"""What changes a host export's namespace (a mixin of ``host.HostFile``): creating
directories, symlinks and nodes in a directory, links, renames and removals. Every
name is one component, resolved from a directory's O_PATH fd; a file renamed or
removed by itself is first found again by its parent and name, checked to still be
the same inode (``_locate_sync``).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable

from ..protocol.constants import AT_REMOVEDIR
from ..protocol.messages import Qid
from . import hostmodel, hostsys
from .backend import File, errno_error
from .hostpath import (
    O_PATH_NOFOLLOW, FdRef, check_new_name, find_name, names_inode, proc_path, remove_at,
    rename_at)

_ALLOWED_MKNOD = (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


class HostMutations:
    """Needs ``_fs``, ``_node``, ``_parent``, ``_name``, ``_fmt``, ``_is_root``,
    ``_call`` and ``_own_new`` of HostFile."""

    # --- directory mutations (self is the directory) --------------------------------
    async def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        return await self._make(name, gid, stat.S_IFDIR | (mode & 0o7777), None,
                                os.mkdir, name, mode & 0o7777)

    async def symlink(self, name: str, target: str, gid: int) -> Qid:
        if not target or "\0" in target:
            raise errno_error(errno.EINVAL if target else errno.ENOENT, "symlink target")
        return await self._make(name, gid, stat.S_IFLNK | 0o777, None, os.symlink, target, name,
                                target=target)

    async def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        if stat.S_IFMT(mode) not in _ALLOWED_MKNOD:
            raise errno_error(errno.EINVAL, "mknod type")
        mode = stat.S_IFMT(mode) | (mode & 0o7777)
        rdev = os.makedev(major, minor)
        return await self._make(name, gid, mode, rdev, os.mknod, name, mode, rdev)

    async def _make(self, name: str, gid: int, guest_mode: int, rdev: int | None,
                    maker: Callable[..., None], *args, target: str | None = None) -> Qid:
        self._fs.check_writable()
        check_new_name(name)
        if self._fmt != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "not a directory")
        return await self._call(self._make_sync, name, gid, guest_mode, rdev, maker, args,
                                target)

    def _make_sync(self, name: str, gid: int, guest_mode: int, rdev: int | None,
                   maker: Callable[..., None], args: tuple, target: str | None) -> Qid:
        if self._fs.mapped:
            hostmodel.make_mapped_entry(self._node.fd, name, guest_mode, target)
        else:
            maker(*args, dir_fd=self._node.fd)
        fd = os.open(name, O_PATH_NOFOLLOW, dir_fd=self._node.fd)
        try:
            try:
                st = self._own_new(fd, os.stat(fd), guest_mode, gid, rdev)
            except BaseException:
                remove_at(os.rmdir if stat.S_ISDIR(guest_mode) else os.unlink,
                          self._node.fd, name)
                raise
            return self._fs.qids.qid(guest_mode if self._fs.mapped else st.st_mode,
                                     st.st_dev, st.st_ino)
        finally:
            os.close(fd)

    async def link(self, target: File, name: str) -> None:
        self._fs.check_writable()
        check_new_name(name)
        if not isinstance(target, type(self)) or target._fs is not self._fs:
            raise errno_error(errno.EXDEV, "link across exports")
        await self._call(self._link_sync, target._node.fd, name)

    def _link_sync(self, target_fd: int, name: str) -> None:
        try:
            hostsys.link_empty(target_fd, self._node.fd, name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # Without CAP_DAC_READ_SEARCH (a guest user's identity, or a non-root
            # server) AT_EMPTY_PATH says ENOENT; the magic link reaches the same inode.
            os.link(proc_path(target_fd), name, dst_dir_fd=self._node.fd, follow_symlinks=True)

    async def renameat(self, oldname: str, newdir: File, newname: str) -> None:
        self._fs.check_writable()
        check_new_name(oldname)
        check_new_name(newname)
        new_fd = self._same_export_dir(newdir)
        await self._call(rename_at, self._node.fd, oldname, new_fd, newname)

    async def unlinkat(self, name: str, flags: int) -> None:
        self._fs.check_writable()
        check_new_name(name)
        remover = os.rmdir if flags & AT_REMOVEDIR else os.unlink
        await self._call(remove_at, remover, self._node.fd, name)

    def _same_export_dir(self, other: File) -> int:
        if not isinstance(other, type(self)) or other._fs is not self._fs:
            raise errno_error(errno.EXDEV, "rename across exports")
        if other._fmt != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "rename target directory")
        return other._node.fd

    # --- operations on this file itself ---------------------------------------------
    async def rename(self, newdir: File, newname: str) -> None:
        self._fs.check_writable()
        check_new_name(newname)
        if self._is_root:
            raise errno_error(errno.EBUSY, "the export root cannot move")
        new_fd = self._same_export_dir(newdir)
        await self._call(self._rename_sync, new_fd, newname)
        assert isinstance(newdir, type(self))
        old = self._parent
        self._parent, self._name = newdir._node.acquire(), newname
        if old is not None:
            old.release()

    def _rename_sync(self, new_fd: int, newname: str) -> None:
        parent, name = self._locate_sync()
        try:
            rename_at(parent.fd, name, new_fd, newname)
        finally:
            parent.release()

    async def remove(self) -> None:
        self._fs.check_writable()
        if self._is_root:
            raise errno_error(errno.EBUSY, "the export root cannot be removed")
        await self._call(self._remove_sync)

    def _remove_sync(self) -> None:
        parent, name = self._locate_sync()
        try:
            remove_at(os.rmdir if self._fmt == stat.S_IFDIR else os.unlink, parent.fd, name)
        finally:
            parent.release()

    def _locate_sync(self) -> tuple[FdRef, str]:
        """This file's parent directory (acquired) and name in it, checked to still be
        this very inode; re-found through ".." for directories moved meanwhile."""
        st = os.stat(self._node.fd)
        if self._parent is not None and self._name:
            if names_inode(self._parent.fd, self._name, st):
                return self._parent.acquire(), self._name
        if self._fmt == stat.S_IFDIR and not self._is_root:
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._node.fd)
            ref = FdRef(up)
            try:
                if self._fs.is_inside(up):
                    name = find_name(up, st)
                    if name is not None:
                        return ref.acquire(), name
            finally:
                ref.release()
        raise errno_error(errno.ENOENT, "file no longer reachable by name")
