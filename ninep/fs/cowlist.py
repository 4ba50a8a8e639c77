"""Merged directory listings of a copy-on-write tree, as packed Rreaddir records.

".", "..", then the upper directory's entries (markers and the metadata directory
hidden), then the base's entries that are neither in the upper nor whited out (none
if the upper directory is opaque). Records are packed once per listing, straight
from getdents64 (upper) and from the base's own packed records where it has them
(the host export's ``readdir_packed``), as the host export does: building a Dirent
per entry costs ~10x more. Cookies are positions in the merged listing; a fid keeps
its listing from the Treaddir at offset 0 until the next one at offset 0.
"""

from __future__ import annotations

import os
import stat

from ..protocol.codec import DIRENT_HEAD, unpack_dirents
from ..protocol.constants import OpenFlags, QidType
from . import cowupper as up
from . import hostsys
from .hostdir import Listing
from .hostmodel import read_mapped_mode_at
from .hostpath import proc_path
from .hostqid import HOST_QID_VERSION

_DT_DIR, _DT_LNK, _DT_REG = 4, 10, 8
_QTYPE = {_DT_DIR: int(QidType.DIR), _DT_LNK: int(QidType.SYMLINK)}
_BASE_TAG = 1 << 63
_WHITEOUT = up.WHITEOUT_PREFIX.encode()
_OPAQUE = up.OPAQUE_MARKER.encode()
_META = up.META_DIR.encode()
_BATCH = 1 << 18


class _Packer:
    __slots__ = ("parts", "marks", "used")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.marks: list[tuple[int, int]] = []
        self.used = 0

    def add(self, qtype: int, path: int, dtype: int, name: bytes) -> None:
        cookie = len(self.marks) + 1
        self.parts.append(DIRENT_HEAD.pack(qtype, HOST_QID_VERSION, path, cookie, dtype, len(name)))
        self.parts.append(name)
        self.used += DIRENT_HEAD.size + len(name)
        self.marks.append((cookie, self.used))

    def listing(self) -> Listing:
        return Listing(b"".join(self.parts), self.marks)


async def merged_listing(session, node) -> Listing:
    out = _Packer()
    parent = node.parent or node
    out.add(node.qid.type, node.qid.path, _DT_DIR, b".")
    out.add(parent.qid.type, parent.qid.path, _DT_DIR, b"..")
    seen: set[bytes] = set()
    hidden: set[bytes] = set()
    opaque = False
    if node.upper is not None:
        opaque = _list_upper(session, node, out, seen, hidden)
    if node.base is not None and not opaque and not node.removed:
        hidden |= seen
        await _list_base(session, node.base, out, hidden)
    return out.listing()


def _list_upper(session, node, out: _Packer, seen: set[bytes], whiteouts: set[bytes]) -> bool:
    """Pack the upper directory's entries; return whether it is opaque."""
    opaque = False
    at_root = node.parent is None
    fd = os.open(proc_path(node.upper._node.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev = os.fstat(fd).st_dev
        qids = session.upper_fs.qids
        mapped = session.upper_fs.mapped
        dir_path = proc_path(fd)
        unpack, head = hostsys.DIRENT64_HEAD.unpack_from, hostsys.DIRENT64_HEAD.size
        cookie = 0
        while raw := hostsys.read_dir_raw(fd, cookie, _BATCH):
            pos, end = 0, len(raw)
            while pos < end:
                ino, cookie, reclen, dtype = unpack(raw, pos)
                name = raw[pos + head:raw.index(0, pos + head)]
                pos += reclen
                if name in (b".", b".."):
                    continue
                if name.startswith(_WHITEOUT):
                    if name == _OPAQUE:
                        opaque = True
                    else:
                        whiteouts.add(name[len(_WHITEOUT):])
                    continue
                if at_root and name == _META:
                    continue
                try:
                    text = name.decode()
                except UnicodeDecodeError:
                    continue  # no 9P string can carry it
                if dtype == 0:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    dtype = stat.S_IFMT(st.st_mode) >> 12
                origin = None
                if dtype in (_DT_REG, _DT_DIR):
                    origin = up.read_origin(f"{dir_path}/{text}", follow=False)
                if dtype == _DT_REG and mapped:
                    dtype = _mapped_dtype(fd, name)  # a mapped symlink or device is a host file
                qtype = _QTYPE.get(dtype, 0)
                if origin is not None:
                    path = session.origin_qid(qtype, origin).path
                else:
                    path = session.upper_qid(qtype, qids.path(dev, ino)).path
                out.add(qtype, path, dtype, name)
                seen.add(name)
            cookie &= (1 << 64) - 1
    finally:
        os.close(fd)
    return opaque


def _mapped_dtype(dir_fd: int, name: bytes) -> int:
    mode = read_mapped_mode_at(dir_fd, name)
    fmt = stat.S_IFMT(mode) if mode is not None else stat.S_IFREG
    return (stat.S_IFREG if fmt in (0, stat.S_IFDIR) else fmt) >> 12


async def _list_base(session, base, out: _Packer, hidden: set[bytes]) -> None:
    reader = await base.clone()
    try:
        await reader.open(int(OpenFlags.RDONLY))
        packed = getattr(reader, "readdir_packed", None)
        if packed is None:
            offset = 0
            while batch := list(await reader.readdir(offset, _BATCH)):
                offset = batch[-1].offset
                for e in batch:
                    name = e.name.encode()
                    if name not in (b".", b"..") and name not in hidden:
                        out.add(e.qid.type, session.base_qid(e.qid).path, int(e.type), name)
            return
        unpack, head = DIRENT_HEAD.unpack_from, DIRENT_HEAD.size
        cookie = 0
        while raw := await packed(cookie, _BATCH):
            pos, end = 0, len(raw)
            while pos < end:
                qtype, _version, path, cookie, dtype, length = unpack(raw, pos)
                name = raw[pos + head:pos + head + length]
                pos += head + length
                if name in (b".", b"..") or name in hidden:
                    continue
                path = path | _BASE_TAG if path < _BASE_TAG else session._path(_BASE_TAG, path, 0x7FFF << 48)
                out.add(qtype, path, dtype, name)
    finally:
        await reader.close()


async def merged_names(session, node) -> list[str]:
    """The names in a merged directory, without "." and ".."."""
    listing = await merged_listing(session, node)
    return [e.name for e in unpack_dirents(listing.blob)[2:]]
