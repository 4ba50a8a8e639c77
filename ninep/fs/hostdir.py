"""Listing a host directory: getdents64 records straight into Rreaddir records.

``ls`` of a big directory is one Treaddir per ~msize bytes of names, and the per-entry
cost is what counts: building a Qid and a Dirent object per entry and encoding each one
again cost ~6 us/entry; going from the kernel's linux_dirent64 records to wire records
with one struct pack each (``codec.DIRENT_HEAD``, derived from the schema) costs well
under 1 us. ``HostFile.readdir`` (Dirent objects, for Python callers) decodes the very
records made here, so both paths list exactly the same entries.

Types and qids come from the dirent itself (d_type, d_ino on this directory's device),
as diod does: one lstat per entry would cost ~10x more. Only DT_UNKNOWN entries are
lstat'ed. A mount point inside the export therefore lists with the inode it covers
(still unique); walking to it gives the mounted root's qid.

Names that are not valid UTF-8 cannot be carried by a 9P2000.L string: such entries
are skipped (returned to the caller, which logs them) so that the rest of the
directory still lists, instead of every Treaddir of it failing.
"""

from __future__ import annotations

import os
import stat

from ..protocol.codec import DIRENT_HEAD
from ..protocol.constants import QidType
from ..protocol.messages import Qid
from . import hostsys
from .hostqid import INODE_MASK, QidMapper

_DT_UNKNOWN, _DT_DIR, _DT_LNK = 0, 4, 10
_DTYPE_TO_QID = {_DT_DIR: int(QidType.DIR), _DT_LNK: int(QidType.SYMLINK)}
_MODE_TO_DIRENT_SHIFT = 12  # DT_* == S_IFMT(mode) >> 12 on Linux
_U64 = (1 << 64) - 1
_DIR_BUFSIZE_MAX = 256 * 1024


def list_packed(fd: int, cookie: int, count: int, qids: QidMapper, dir_st: os.stat_result,
                at_root: bool, *, at_least_one: bool = False) -> tuple[bytes, list[bytes]]:
    """Rreaddir data for the open directory ``fd`` from ``cookie``: as many whole
    records as fit in ``count`` bytes (``at_least_one``: the first even if it does
    not). Returns (records, names skipped because they are not UTF-8)."""
    bufsize = min(max(count, 4096), _DIR_BUFSIZE_MAX)
    raw = hostsys.read_dir_raw(fd, cookie, bufsize)
    self_qid = qids.qid_of(dir_st)
    dev = dir_st.st_dev
    base = qids.device_base(dev)
    pack = DIRENT_HEAD.pack
    fixed = DIRENT_HEAD.size
    unpack = hostsys.DIRENT64_HEAD.unpack_from
    name_offset = hostsys.DIRENT64_HEAD.size
    find_nul = raw.index
    dtype_to_qid = _DTYPE_TO_QID.get
    parts: list[bytes] = []
    append = parts.append
    skipped: list[bytes] = []
    limit = count
    used = pos = 0
    end = len(raw)
    while pos < end:
        ino, next_cookie, reclen, dtype = unpack(raw, pos)
        start = pos + name_offset
        name = raw[start:find_nul(0, start)]
        pos += reclen
        size = fixed + len(name)
        if used + size > limit and not (at_least_one and not parts):
            break
        if not name.isascii():
            try:
                name.decode()
            except UnicodeDecodeError:
                skipped.append(name)
                continue
        if name[0] == 46 and (name == b"." or (name == b".." and at_root)):
            qid_type, version, path = self_qid.type, self_qid.version, self_qid.path
        elif dtype == _DT_UNKNOWN:
            qid, dtype = _lstat_entry(qids, fd, dev, ino, name)
            qid_type, version, path = qid.type, qid.version, qid.path
        else:
            qid_type, version = dtype_to_qid(dtype, 0), 0
            path = base | ino if base is not None and ino <= INODE_MASK else qids.path(dev, ino)
        append(pack(qid_type, version, path, next_cookie & _U64, dtype, len(name)))
        append(name)
        used += size
    return b"".join(parts), skipped


def _lstat_entry(qids: QidMapper, dir_fd: int, dev: int, ino: int,
                 name: bytes) -> tuple[Qid, int]:
    """For filesystems that do not fill d_type."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # gone meanwhile: keep what getdents said
        return Qid(0, 0, qids.path(dev, ino)), _DT_UNKNOWN
    return qids.qid_of(st), stat.S_IFMT(st.st_mode) >> _MODE_TO_DIRENT_SHIFT
