"""Host-export helpers that need no File state: refcounted fds, name checks, the
attributes a new entry gets, and parent-relative lookups by inode.

Everything here is plain syscalls (no trio), safe to call from a worker thread that
runs as a guest's identity.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import threading
from typing import Callable

from . import hostsys
from .backend import errno_error

NO_ID = 0xFFFFFFFF  # "no gid" as a 9P message carries it


def proc_path(fd: int) -> str:
    """The magic link that reaches ``fd``'s inode without a name lookup."""
    return f"/proc/self/fd/{fd}"


O_PATH_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class FdRef:
    """A refcounted fd shared by clones and parent links; closed at the last release.
    Locked because walks may run in worker threads."""

    __slots__ = ("fd", "_refs")
    _lock = threading.Lock()

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._refs = 1

    def acquire(self) -> "FdRef":
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            os.close(self.fd)
            self.fd = -1


def raise_fd_limit() -> None:
    """Each fid holds one or two fds; a guest's dentry cache holds many fids."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_component(name: str) -> None:
    if not name or "/" in name or "\0" in name:
        raise errno_error(errno.EINVAL, f"bad path component {name!r}")


def check_xattr_name(name: str) -> None:
    if not name or "\0" in name:
        raise errno_error(errno.EINVAL, "bad xattr name")


def check_new_name(name: str) -> None:
    check_component(name)
    if name in (".", ".."):
        raise errno_error(errno.EINVAL, f"bad new name {name!r}")


def apply_creation_attrs(fd: int, st: os.stat_result, mode: int | None,
                          gid: int) -> os.stat_result:
    """Make a new entry look as the guest asked: its permission bits exactly (the
    guest already applied its umask; the server's own umask must not apply twice)
    and the gid from the message where the host allows it."""
    changed = False
    if mode is not None and not stat.S_ISLNK(st.st_mode) and (st.st_mode ^ mode) & 0o777:
        os.chmod(proc_path(fd), (st.st_mode & 0o7000) | (mode & 0o777))
        changed = True
    if gid not in (NO_ID, -1) and st.st_gid != gid:
        try:
            hostsys.fchown_empty(fd, -1, gid)
            changed = True
        except PermissionError:
            pass  # not a member of that group: keep the host's choice, as Linux would
    return os.stat(fd) if changed else st


def time_arg(valid: int, bit: int, set_bit: int, sec: int, nsec: int):
    if not valid & bit:
        return None
    return (sec, nsec) if valid & set_bit else "now"


def rename_at(old_dir: int, oldname: str, new_dir: int, newname: str) -> None:
    os.rename(oldname, newname, src_dir_fd=old_dir, dst_dir_fd=new_dir)


def remove_at(remover: Callable[..., None], dir_fd: int, name: str) -> None:
    remover(name, dir_fd=dir_fd)


def names_inode(dir_fd: int, name: str, st: os.stat_result) -> bool:
    try:
        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino)


def find_name(dir_fd: int, st: os.stat_result) -> str | None:
    """The name under which ``dir_fd`` holds the inode of ``st`` (one scan)."""
    fd = os.open(proc_path(dir_fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        cookie = 0
        while batch := hostsys.read_dir_chunk(fd, cookie, 65536):
            for ino, _cookie, _dtype, name in batch:
                if ino == st.st_ino and name not in (".", "..") and names_inode(fd, name, st):
                    return name
            cookie = batch[-1][1]
        return None
    finally:
        os.close(fd)
