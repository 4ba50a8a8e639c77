"""File attributes on the host: getattr from one statx, truncate without a name
lookup, and the u64 -> signed 64-bit guard for offsets and sizes. Plain syscalls."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ..protocol.constants import GetattrMask
from . import hostsys
from .backend import Attr, errno_error
from .hostpath import proc_path
from .hostqid import QidMapper

_MAX_OFFSET = (1 << 63) - 1
_VALID_BASIC = int(GetattrMask.BASIC)  # plain ints: IntFlag arithmetic is slow on a hot path
_VALID_WITH_BTIME = int(GetattrMask.BASIC | GetattrMask.BTIME)
_BTIME = int(GetattrMask.BTIME)
_NS = 1_000_000_000


def check_offset(value: int) -> None:
    """Offsets and sizes come as u64; the host takes signed 64-bit (EINVAL, as Linux's
    pread does for a negative offset, instead of Python's OverflowError)."""
    if value > _MAX_OFFSET:
        raise errno_error(errno.EINVAL, "offset beyond 2**63-1")


def attributes_of(fd: int, qids: QidMapper, mask: int = _VALID_WITH_BTIME) -> Attr:
    """Every Rgetattr field of the file ``fd`` (an O_PATH fd; a symlink's own
    attributes), with btime where the host filesystem records it and ``mask`` asks
    for it. Without BTIME in ``mask`` a plain fstat does: the kernel's statx with
    AT_EMPTY_PATH copies in and looks up an empty path name, and costs ~2x more."""
    if not mask & _BTIME:
        return _attributes_from_fstat(fd, qids)
    sx = hostsys.statx_fd(fd)
    if sx is None:
        return _attributes_from_fstat(fd, qids)
    qid = qids.qid(sx.mode, sx.dev, sx.ino)
    has_btime = sx.mask & hostsys.STATX_BTIME
    return Attr(
        qid=qid, mode=sx.mode, uid=sx.uid, gid=sx.gid, nlink=sx.nlink, rdev=sx.rdev,
        size=sx.size, blksize=sx.blksize, blocks=sx.blocks,
        atime_sec=sx.atime[0], atime_nsec=sx.atime[1],
        mtime_sec=sx.mtime[0], mtime_nsec=sx.mtime[1],
        ctime_sec=sx.ctime[0], ctime_nsec=sx.ctime[1],
        btime_sec=sx.btime[0] if has_btime else 0,
        btime_nsec=sx.btime[1] if has_btime else 0,
        valid=_VALID_WITH_BTIME if has_btime else _VALID_BASIC)


def _attributes_from_fstat(fd: int, qids: QidMapper) -> Attr:
    st = os.stat(fd)
    return Attr(
        qid=qids.qid_of(st), mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
        nlink=st.st_nlink, rdev=st.st_rdev, size=st.st_size, blksize=st.st_blksize,
        blocks=st.st_blocks,
        atime_sec=st.st_atime_ns // _NS, atime_nsec=st.st_atime_ns % _NS,
        mtime_sec=st.st_mtime_ns // _NS, mtime_nsec=st.st_mtime_ns % _NS,
        ctime_sec=st.st_ctime_ns // _NS, ctime_nsec=st.st_ctime_ns % _NS,
        valid=_VALID_BASIC)


def truncate(node_fd: int, fmt: int, io_fd: int | None, size: int) -> None:
    """Set the size of the file ``node_fd`` (an O_PATH fd of type ``fmt``).

    A fid opened for writing truncates through its own fd (``io_fd``): that works
    even after the file was unlinked or chmod'ed to 000, as ftruncate(2) does.
    Otherwise a fresh O_WRONLY re-open through /proc checks write permission as
    truncate(2) would.
    """
    check_offset(size)
    if fmt == stat.S_IFDIR:
        raise errno_error(errno.EISDIR, "truncate of a directory")
    if fmt != stat.S_IFREG:
        raise errno_error(errno.EINVAL, "truncate of a special file")
    if io_fd is not None and fcntl.fcntl(io_fd, fcntl.F_GETFL) & os.O_ACCMODE in (
            os.O_WRONLY, os.O_RDWR):
        os.ftruncate(io_fd, size)
        return
    fd = os.open(proc_path(node_fd), os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
