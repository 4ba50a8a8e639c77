"""Extended attributes of a host export's files (a mixin of ``host.HostFile``).

Symlinks are reached by their parent and name, never followed; everything else by
the magic link of its O_PATH fd. In a mapped export the guest's names pass through
``hostmodel`` (``user.virtfs.*`` refused and hidden, POSIX ACLs under QEMU's names).
"""

from __future__ import annotations

import os
import stat
from typing import Callable, TypeVar

from . import hostmodel
from .hostpath import FdRef, check_xattr_name, proc_path

T = TypeVar("T")


class HostXattrs:
    """Needs ``_fmt``, ``_node``, ``_fs``, ``_call`` and ``_locate_sync`` of HostFile."""

    def _xattr_path(self) -> tuple[str, bool, FdRef | None]:
        """(path, follow, parent to release). Non-symlinks: the magic link, followed to
        the inode. Symlinks: parent-relative name, not followed."""
        if self._fmt != stat.S_IFLNK:
            return proc_path(self._node.fd), True, None
        parent, name = self._locate_sync()
        return f"{proc_path(parent.fd)}/{name}", False, parent

    def _xattr_sync(self, op: Callable[..., T], *args) -> T:
        path, follow, parent = self._xattr_path()
        try:
            return op(path, *args, follow_symlinks=follow)
        finally:
            if parent is not None:
                parent.release()

    def _host_xattr_name(self, name: str, *, writing: bool) -> str:
        check_xattr_name(name)
        if writing:
            self._fs.check_writable()
        return hostmodel.guest_xattr_name(name, writing=writing) if self._fs.mapped else name

    async def xattr_get(self, name: str) -> bytes:
        name = self._host_xattr_name(name, writing=False)
        return await self._call(self._xattr_sync, os.getxattr, name)

    async def xattr_list(self) -> list[str]:
        names = await self._call(self._xattr_sync, os.listxattr)
        return hostmodel.guest_xattr_list(names) if self._fs.mapped else names

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        name = self._host_xattr_name(name, writing=True)
        await self._call(self._xattr_sync, os.setxattr, name, bytes(value), flags)

    async def xattr_remove(self, name: str) -> None:
        name = self._host_xattr_name(name, writing=True)
        await self._call(self._xattr_sync, os.removexattr, name)

