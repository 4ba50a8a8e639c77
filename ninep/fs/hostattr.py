"""File attributes on the host: getattr from one statx, truncate without a name
lookup, and the u64 -> signed 64-bit guard for offsets and sizes. Plain syscalls."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ..protocol.constants import GetattrMask, QidType
from ..protocol.messages import Qid
from . import hostsys
from .backend import Attr, errno_error
from .hostpath import proc_path
from .hostqid import HOST_QID_VERSION, QidMapper

_MAX_OFFSET = (1 << 63) - 1
_VALID_BASIC = int(GetattrMask.BASIC)  # plain ints: IntFlag arithmetic is slow on a hot path
_VALID_WITH_BTIME = int(GetattrMask.BASIC | GetattrMask.BTIME)
_BTIME = int(GetattrMask.BTIME)
_NS = 1_000_000_000
_STATX_BTIME = hostsys.STATX_BTIME
_S_IFMT = 0o170000
_QTFILE = int(QidType.FILE)
_QID_TYPES = {stat.S_IFDIR: int(QidType.DIR), stat.S_IFLNK: int(QidType.SYMLINK)}
_makedev = os.makedev


def check_offset(value: int) -> None:
    """Offsets and sizes come as u64; the host takes signed 64-bit (EINVAL, as Linux's
    pread does for a negative offset, instead of Python's OverflowError)."""
    if value > _MAX_OFFSET:
        raise errno_error(errno.EINVAL, "offset beyond 2**63-1")


def attributes_of(fd: int, qids: QidMapper, mask: int = _VALID_WITH_BTIME) -> Attr:
    """Every Rgetattr field of the file ``fd`` (an O_PATH fd; a symlink's own
    attributes), with btime where the host filesystem records it and ``mask`` asks
    for it. Without BTIME in ``mask`` a plain fstat does: the kernel's statx with
    AT_EMPTY_PATH copies in and looks up an empty path name, and costs ~2x more.
    Attr is built positionally and qids inline: this is the body of every getattr."""
    if not mask & _BTIME:
        return _attributes_from_fstat(fd, qids)
    sx = hostsys.statx_fields(fd)
    if sx is None:
        return _attributes_from_fstat(fd, qids)
    (sx_mask, blksize, _attrs, nlink, uid, gid, mode, ino, size, blocks, _amask,
     a_s, a_ns, _r1, b_s, b_ns, _r2, c_s, c_ns, _r3, m_s, m_ns, _r4,
     rdev_major, rdev_minor, dev_major, dev_minor) = sx
    qid = Qid(_QID_TYPES.get(mode & _S_IFMT, _QTFILE), HOST_QID_VERSION,
              qids.path(_makedev(dev_major, dev_minor), ino))
    if sx_mask & _STATX_BTIME:
        return Attr(qid, mode, uid, gid, nlink, _makedev(rdev_major, rdev_minor), size,
                    blksize, blocks, a_s, a_ns, m_s, m_ns, c_s, c_ns, b_s, b_ns, 0, 0,
                    _VALID_WITH_BTIME)
    return Attr(qid, mode, uid, gid, nlink, _makedev(rdev_major, rdev_minor), size,
                blksize, blocks, a_s, a_ns, m_s, m_ns, c_s, c_ns, 0, 0, 0, 0, _VALID_BASIC)


def _attributes_from_fstat(fd: int, qids: QidMapper) -> Attr:
    st = os.stat(fd)
    a_s, a_ns = divmod(st.st_atime_ns, _NS)
    m_s, m_ns = divmod(st.st_mtime_ns, _NS)
    c_s, c_ns = divmod(st.st_ctime_ns, _NS)
    mode = st.st_mode
    qid = Qid(_QID_TYPES.get(mode & _S_IFMT, _QTFILE), HOST_QID_VERSION,
              qids.path(st.st_dev, st.st_ino))
    return Attr(qid, mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, st.st_size,
                st.st_blksize, st.st_blocks, a_s, a_ns, m_s, m_ns, c_s, c_ns, 0, 0, 0, 0,
                _VALID_BASIC)


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
