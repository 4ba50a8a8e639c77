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

``ListingCache`` keeps whole listings of directories that have not changed for a
while, checked against the directory's stat on every Treaddir (see its docstring).
"""

from __future__ import annotations

import bisect
import collections
import os
import stat
import time

from ..protocol.codec import DIRENT_HEAD
from ..protocol.constants import QidType
from ..protocol.messages import Qid
from . import hostsys
from .hostmodel import read_mapped_mode_at
from .hostqid import HOST_QID_VERSION, INODE_MASK, QidMapper

_DT_UNKNOWN, _DT_DIR, _DT_REG, _DT_LNK = 0, 4, 8, 10
_DTYPE_TO_QID = {_DT_DIR: int(QidType.DIR), _DT_LNK: int(QidType.SYMLINK)}
_MODE_TO_DIRENT_SHIFT = 12  # DT_* == S_IFMT(mode) >> 12 on Linux
_U64 = (1 << 64) - 1
_DIR_BUFSIZE_MAX = 256 * 1024


def list_directory(cache: "ListingCache | None", fd: int, cookie: int, count: int,
                   qids: QidMapper, dir_st: os.stat_result, at_root: bool,
                   at_least_one: bool, mapped: bool = False) -> tuple[bytes, list[bytes]]:
    """Rreaddir data from ``cookie`` (see ``list_packed``), from ``cache`` when it
    holds this directory unchanged, else from the host (keeping the whole listing
    when the directory has settled and a client starts reading it from the top).
    ``mapped``: a regular host file may be any type in the guest (hostmodel): its
    type comes from its ``user.virtfs.mode`` (QEMU's mapped-xattr says DT_UNKNOWN
    instead, which costs the guest a lookup per entry)."""
    skipped: list[bytes] = []
    if cache is not None:
        known, listing = cache.lookup(dir_st, at_root)
        if not known and cookie == 0:
            listing, skipped = cache.read(fd, qids, dir_st, at_root, mapped)
        if listing is not None:
            records = listing.records(cookie, count, at_least_one)
            if records is not None:
                return records, skipped
    records, more = list_packed(fd, cookie, count, qids, dir_st, at_root,
                                at_least_one=at_least_one, mapped=mapped)
    return records, skipped + more


class _Directory:
    """What every record of one listing needs to know about its directory."""

    __slots__ = ("fd", "qids", "dev", "base", "self_qid", "at_root", "lstat_used",
                 "mapped")

    def __init__(self, fd: int, qids: QidMapper, dir_st: os.stat_result, at_root: bool,
                 mapped: bool = False):
        self.fd = fd
        self.qids = qids
        self.dev = dir_st.st_dev
        self.base = qids.device_base(self.dev)
        self.self_qid = qids.qid_of(dir_st)
        self.at_root = at_root
        self.lstat_used = False  # some entry had no d_type: its qid came from lstat
        self.mapped = mapped


def list_packed(fd: int, cookie: int, count: int, qids: QidMapper, dir_st: os.stat_result,
                at_root: bool, *, at_least_one: bool = False,
                mapped: bool = False) -> tuple[bytes, list[bytes]]:
    """Rreaddir data for the open directory ``fd`` from ``cookie``: as many whole
    records as fit in ``count`` bytes (``at_least_one``: the first even if it does
    not). Returns (records, names skipped because they are not UTF-8)."""
    bufsize = min(max(count, 4096), _DIR_BUFSIZE_MAX)
    raw = hostsys.read_dir_raw(fd, cookie, bufsize)
    parts: list[bytes] = []
    skipped: list[bytes] = []
    _pack(raw, count, at_least_one, _Directory(fd, qids, dir_st, at_root, mapped), parts,
          skipped)
    return b"".join(parts), skipped


def _pack(raw: bytes, limit: int, at_least_one: bool, here: _Directory, parts: list,
          skipped: list, marks: list | None = None, used: int = 0) -> int:
    """Append the wire records (head, name, head, name...) of the getdents64 records
    in ``raw`` to ``parts`` while ``used`` plus their size fits in ``limit`` bytes;
    return the new ``used``. ``marks`` (if given) gets (record's cookie, ``used``
    after the record)."""
    qids, base, dev, fd = here.qids, here.base, here.dev, here.fd
    self_qid, at_root, mapped = here.self_qid, here.at_root, here.mapped
    pack = DIRENT_HEAD.pack
    fixed = DIRENT_HEAD.size
    unpack = hostsys.DIRENT64_HEAD.unpack_from
    name_offset = hostsys.DIRENT64_HEAD.size
    find_nul = raw.index
    dtype_to_qid = _DTYPE_TO_QID.get
    append = parts.append
    pos = 0
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
            here.lstat_used = True
            if dtype == _DT_REG and mapped:
                qid_type, dtype = _mapped_type(fd, name)
        else:
            qid_type, version = dtype_to_qid(dtype, 0), HOST_QID_VERSION
            path = base | ino if base is not None and ino <= INODE_MASK else qids.path(dev, ino)
            if dtype == _DT_REG and mapped:
                qid_type, dtype = _mapped_type(fd, name)
        next_cookie &= _U64
        append(pack(qid_type, version, path, next_cookie, dtype, len(name)))
        append(name)
        used += size
        if marks is not None:
            marks.append((next_cookie, used))
    return used


class Listing:
    """A whole directory's records, ready to serve from any cookie they gave out."""

    __slots__ = ("blob", "ends", "index_after")

    def __init__(self, blob: bytes, marks: list[tuple[int, int]]):
        self.blob = blob
        self.ends = [end for _, end in marks]  # ends[i]: where record i stops in blob
        # cookie -> index of the record that follows it (0 starts the directory)
        self.index_after = {cookie: i + 1 for i, (cookie, _) in enumerate(marks)}
        self.index_after[0] = 0

    def records(self, cookie: int, count: int, at_least_one: bool) -> bytes | None:
        """What ``list_packed`` would return from ``cookie``; None for a cookie this
        listing never gave out (the caller asks the host)."""
        first = self.index_after.get(cookie)
        if first is None:
            return None
        ends = self.ends
        start = ends[first - 1] if first else 0
        stop = bisect.bisect_right(ends, start + count, lo=first)
        if stop == first:
            if not at_least_one or first == len(ends):
                return b""
            stop = first + 1
        return self.blob[start:ends[stop - 1]]


class ListingCache:
    """Listings of directories that have not changed for a while.

    A guest lists the same directories over and over (each ``ls``, every boot,
    Python's import system), and each listing costs a getdents64 pass plus ~0.7 us
    per entry here. A directory's listing changes only when the directory does, and
    every such change sets the directory's ctime to the current time. So a listing
    is kept only if the directory's ctime was already ``settled_ns`` in the past when
    it was read -- a later change then cannot hide behind an equal coarse timestamp --
    and it is served only while (mtime, ctime, size, nlink) are what they were.
    Listings that needed an lstat (no d_type: such qids carry a version that changes
    without the directory changing), or with more than ``max_entries`` entries, are
    not kept. Used on the event-loop thread only.
    """

    def __init__(self, *, max_dirs: int = 256, max_entries: int = 4096,
                 settled_ns: int = 2_000_000_000) -> None:
        self.max_dirs = max_dirs
        self.max_entries = max_entries
        self.settled_ns = settled_ns
        self._listings: collections.OrderedDict[tuple, tuple[tuple, Listing | None]] = (
            collections.OrderedDict())
        self.hits = 0

    @staticmethod
    def _key(dir_st: os.stat_result, at_root: bool) -> tuple:
        return (dir_st.st_dev, dir_st.st_ino, at_root)

    @staticmethod
    def _version(dir_st: os.stat_result) -> tuple:
        return (dir_st.st_mtime_ns, dir_st.st_ctime_ns, dir_st.st_size, dir_st.st_nlink)

    def lookup(self, dir_st: os.stat_result, at_root: bool) -> tuple[bool, Listing | None]:
        """(known, listing): known with None means "too big to keep", ask the host."""
        key = self._key(dir_st, at_root)
        found = self._listings.get(key)
        if found is None:
            return False, None
        if found[0] != self._version(dir_st):
            del self._listings[key]
            return False, None
        self._listings.move_to_end(key)
        if found[1] is not None:
            self.hits += 1
        return True, found[1]

    def read(self, fd: int, qids: QidMapper, dir_st: os.stat_result,
             at_root: bool, mapped: bool = False) -> tuple[Listing | None, list[bytes]]:
        """Read and keep the whole directory if it has settled; (None, []) if not,
        or if it cannot be kept (the caller then lists as usual)."""
        if dir_st.st_ctime_ns > time.time_ns() - self.settled_ns:
            return None, []
        here = _Directory(fd, qids, dir_st, at_root, mapped)
        parts: list[bytes] = []
        skipped: list[bytes] = []
        marks: list[tuple[int, int]] = []
        cookie, used = 0, 0
        while True:
            raw = hostsys.read_dir_raw(fd, cookie, _DIR_BUFSIZE_MAX)
            if not raw:
                break
            before = len(marks)
            used = _pack(raw, _U64, False, here, parts, skipped, marks, used)
            if len(marks) > self.max_entries or here.lstat_used:
                self._remember(dir_st, at_root, None)
                return None, skipped
            if len(marks) == before:
                return None, skipped  # only unnamable entries: cookie unknown, give up
            cookie = marks[-1][0]
        listing = Listing(b"".join(parts), marks)
        self._remember(dir_st, at_root, listing)
        return listing, skipped

    def _remember(self, dir_st: os.stat_result, at_root: bool, listing: Listing | None) -> None:
        self._listings[self._key(dir_st, at_root)] = (self._version(dir_st), listing)
        while len(self._listings) > self.max_dirs:
            self._listings.popitem(last=False)


def _lstat_entry(qids: QidMapper, dir_fd: int, dev: int, ino: int,
                 name: bytes) -> tuple[Qid, int]:
    """For filesystems that do not fill d_type."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # gone meanwhile: keep what getdents said
        return Qid(0, 0, qids.path(dev, ino)), _DT_UNKNOWN
    return qids.qid_of(st), stat.S_IFMT(st.st_mode) >> _MODE_TO_DIRENT_SHIFT


def _mapped_type(dir_fd: int, name: bytes) -> tuple[int, int]:
    """(qid type, d_type) of the regular host file ``name`` in a mapped export."""
    mode = read_mapped_mode_at(dir_fd, name)
    fmt = stat.S_IFMT(mode) if mode is not None else stat.S_IFREG
    if fmt in (0, stat.S_IFDIR):  # a host file is never a guest directory
        fmt = stat.S_IFREG
    return (int(QidType.SYMLINK) if fmt == stat.S_IFLNK else 0), fmt >> _MODE_TO_DIRENT_SHIFT
