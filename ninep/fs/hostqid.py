"""Qids for host files: (st_dev, st_ino) -> a 64-bit qid.path unique in the export.

An export may span several host filesystems (mounts inside it), whose inode numbers
overlap. Each device seen gets a small index stored in the top 16 bits, the inode
fills the low 48. Devices beyond 0xFFFE, or inodes wider than 48 bits, go to a
fallback table numbered in the reserved index 0xFFFF, so no two files ever share a
path. No I/O.

qid.version is the same constant for every host file, for the file's whole life
(``HOST_QID_VERSION``). The Linux client reads the version as part of the inode's
identity, not as a data version: when it looks a file up again (after its dentry was
dropped) the 6.1 client reuses its cached inode only if type, path *and* version match
(``v9fs_test_inode_dotl``). A version that followed mtime and size changed with the
guest's own writes, so the guest built a second inode for the file, with the server's
older size, while the first still held dirty pages: bytes it had written vanished
from its view (issue 15), and fscache saw two cookies for one file. Linux 6.4 and
later read version 0 as "synthetic or legacy server" and then bypass the page cache
for that file unless mounted with ``ignoreqv`` (``v9fs_fid_add_modes``), so the
constant is not 0. diod sends 0; QEMU sends mtime ^ size << 8 and has this bug.
What a guest sees when the host changes a file underneath it, per cache mode, is in
docs/host-export.md.
"""

from __future__ import annotations

import stat
import threading

from ..protocol.constants import QidType
from ..protocol.messages import Qid

#: qid.version of every host file (see the module docstring for why it never changes).
HOST_QID_VERSION = 1

_INODE_BITS = 48
INODE_MASK = (1 << _INODE_BITS) - 1
_FALLBACK_INDEX = 0xFFFF


class QidMapper:
    """Thread-safe: walks may run in worker threads. The common case (a known device,
    a 48-bit inode) is one dict lookup without the lock."""

    def __init__(self) -> None:
        self._device_index: dict[int, int] = {}
        self._devices: list[int] = []  # index -> st_dev
        self._fallback: dict[tuple[int, int], int] = {}
        self._fallback_keys: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def path(self, dev: int, ino: int) -> int:
        index = self._device_index.get(dev)
        if index is not None and ino <= INODE_MASK:
            return (index << _INODE_BITS) | ino
        with self._lock:
            index = self._device_index.get(dev)
            if index is None and len(self._device_index) < _FALLBACK_INDEX:
                index = self._device_index[dev] = len(self._device_index)
                self._devices.append(dev)
            if index is not None and ino <= INODE_MASK:
                return (index << _INODE_BITS) | ino
            key = (dev, ino)
            path = self._fallback.get(key)
            if path is None:
                if len(self._fallback) > INODE_MASK:
                    raise OverflowError("qid fallback table full")
                path = (_FALLBACK_INDEX << _INODE_BITS) | len(self._fallback)
                self._fallback[key] = path
                self._fallback_keys.append(key)
            return path

    def host_identity(self, path: int) -> tuple[int, int]:
        """(st_dev, st_ino) of a path this mapper gave out. Paths depend on the order
        devices were met, so they differ between processes; this does not."""
        index = path >> _INODE_BITS
        if index == _FALLBACK_INDEX:
            return self._fallback_keys[path & INODE_MASK]
        return self._devices[index], path & INODE_MASK

    def device_base(self, dev: int) -> int | None:
        """``path(dev, ino) == base | ino`` for every ino <= INODE_MASK, or None when
        ``dev`` lives in the fallback table. Lets readdir skip a call per entry."""
        self.path(dev, 0)
        index = self._device_index.get(dev)
        return None if index is None else index << _INODE_BITS

    def qid(self, mode: int, dev: int, ino: int) -> Qid:
        # qid_type inlined: every walk step and getattr makes a qid.
        return Qid(_QID_TYPES.get(mode & _S_IFMT, _QTFILE), HOST_QID_VERSION,
                   self.path(dev, ino))

    def qid_of(self, st) -> Qid:
        """The qid of an os.stat_result."""
        return self.qid(st.st_mode, st.st_dev, st.st_ino)


_S_IFMT = 0o170000
_QTFILE = int(QidType.FILE)
_QID_TYPES = {stat.S_IFDIR: int(QidType.DIR), stat.S_IFLNK: int(QidType.SYMLINK)}


def qid_type(mode: int) -> int:
    if stat.S_ISDIR(mode):
        return QidType.DIR
    if stat.S_ISLNK(mode):
        return QidType.SYMLINK
    return QidType.FILE

