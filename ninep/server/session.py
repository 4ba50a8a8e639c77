"""One connection's 9P state: negotiated msize, the fid table, exports. Pure: no I/O.

The fid table is the server's books. A fid is looked up and *used* by a request, and
may be clunked by another request while the first is still running (Linux does that
when a process closes a file with a read in flight). So a ``Fid`` counts its users and
is closed by whoever lets go of it last: the clunk if nobody uses it, otherwise the
last request that did. New fid numbers are *reserved* while the request that makes
them runs, so two concurrent Twalks cannot both create newfid 7.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Hashable, Mapping

from ..fs.backend import Credentials, File, Filesystem, errno_error
from ..protocol.constants import (
    ACCMODE,
    MIN_MSIZE,
    VERSION_9P2000L,
    VERSION_UNKNOWN,
    OpenFlags,
)
from .ratelimit import LogLimiter

log = logging.getLogger("ninep.server")

DEFAULT_MAX_MSIZE = 1 << 20
NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits: what one client may make the server hold (and one for
    the whole process, ``max_buffered_process``)."""

    max_msize: int = DEFAULT_MAX_MSIZE
    max_fids: int = 65536  # fids, then EMFILE
    max_in_flight: int = 256  # tags in flight before the reader stops reading
    max_buffered: int = 8 << 20  # reply bytes queued before the reader stops reading
    # The same, for all connections of the process together (rules.ByteBudget): past it
    # a connection reads on only while it holds less than rules.SMALL_HOLDING (64 KiB).
    max_buffered_process: int = 8 << 20
    # Lock ranges held (locks.LockTable counts them), then ENOLCK. ~110 bytes each.
    max_locks: int = 32768
    # Bytes of xattr values held in fids: announced by Txattrcreate (then EDQUOT) or
    # read by Txattrwalk (then ENOMEM). Sixteen of the largest values at once.
    max_xattr_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_msize < MIN_MSIZE:
            raise ValueError(f"msize {self.max_msize} is below the minimum {MIN_MSIZE}")
        for name in LIMIT_NAMES:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


# The limits a config file or ``--limit`` may set (msize has its own key and option).
LIMIT_NAMES = ("max_fids", "max_in_flight", "max_buffered", "max_buffered_process", "max_locks",
               "max_xattr_bytes")


@dataclass(frozen=True, slots=True)
class Export:
    """A filesystem served under an aname. ``squash`` fixes the identity of every
    attach to it (``--squash UID:GID``); otherwise attach's n_uname decides.
    ``read_only`` makes the server refuse every change with EROFS before the backend
    is asked (any backend: a synthetic tree, a union), as a read-only mount would."""

    filesystem: Filesystem
    squash: Credentials | None = None
    read_only: bool = False


class FidBudget:
    """The fids of every connection of one process.

    A host export's fid holds an fd (an opened one two), and the fd table is the
    process's: without this, one client under its own ``max_fids`` could take every fd,
    and then accept() and every other client's walks fail with EMFILE. Past ``limit``
    new fids are refused with ENFILE (the "system" table is full, not this client's
    share). The last quarter is kept for light connections (fewer than ``light``
    fids: a client that just attached, a guest that is booting), so that one heavy
    client cannot lock every other one out. ``limit`` None: no bound (the default;
    ``ninepd`` sets it from RLIMIT_NOFILE, see ``server.use_fd_limit``)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = 0

    def refuses(self, held: int) -> bool:
        """Whether a connection holding ``held`` fids may not take one more."""
        if self.limit is None:
            return False
        room = self.limit - self.used
        light = min(256, self.limit // 16)
        return room <= 0 or (room <= self.limit // 4 and held >= light)


PROCESS_FIDS = FidBudget()  # one fd table per process, so one budget per process


class FidKind(Enum):
    FILE = "file"
    XATTR_READ = "xattr-read"  # after Txattrwalk: reads slice the value
    XATTR_WRITE = "xattr-write"  # after Txattrcreate: writes build the value


@dataclass(slots=True, eq=False)
class Fid:
    number: int
    file: File | None
    export: Export
    creds: Credentials
    kind: FidKind = FidKind.FILE
    open_flags: int | None = None  # P9_DOTL flags once Tlopen/Tlcreate succeeded
    opening: bool = False  # a Tlopen/Tlcreate of it is in the backend: refuse another
    lock_key: Hashable = None  # (filesystem, File.lock_key); None for xattr values
    xattr_name: str = ""
    xattr_value: bytes | bytearray = b""
    xattr_size: int = 0
    xattr_flags: int = 0
    xattr_held: int = 0  # bytes counted in Session.xattr_bytes for this fid
    lock_owners: set = field(default_factory=set)  # owners that locked through this fid
    users: int = 0
    retired: bool = False  # out of the table; close when the last user lets go
    closed: bool = False

    @property
    def opened(self) -> bool:
        return self.open_flags is not None

    @property
    def readable(self) -> bool:
        if self.kind is not FidKind.FILE:
            return self.kind is FidKind.XATTR_READ
        return self.open_flags is not None and self.open_flags & ACCMODE in (
            OpenFlags.RDONLY,
            OpenFlags.RDWR,
        )

    @property
    def writable(self) -> bool:
        if self.kind is not FidKind.FILE:
            return self.kind is FidKind.XATTR_WRITE
        return self.open_flags is not None and self.open_flags & ACCMODE in (
            OpenFlags.WRONLY,
            OpenFlags.RDWR,
        )


def negotiate_version(requested_msize: int, version: str, max_msize: int) -> tuple[int, str]:
    """Tversion: our msize is the smaller one; exactly "9P2000.L" is spoken, anything
    else gets "unknown".

    An msize below MIN_MSIZE (4096) is refused, not raised: the reply's msize may never
    exceed the client's (version(5)), and the Linux kernel itself refuses to mount
    with less than 4096 (p9_client_create) and fails an Rversion below it with
    EREMOTEIO. So the answer is Rversion(requested msize, "unknown"): a valid reply
    that speaks no protocol, after which every request but Tversion gets EPROTO.
    """
    if requested_msize < MIN_MSIZE:
        return requested_msize, VERSION_UNKNOWN
    msize = min(requested_msize, max_msize)
    if version == VERSION_9P2000L:
        return msize, VERSION_9P2000L
    return msize, VERSION_UNKNOWN


def check_new_name(name: str) -> None:
    """Names that create or move an entry: what Linux would refuse, refused first."""
    if name == "":
        raise errno_error(errno.ENOENT, "empty name")
    if name in (".", ".."):
        raise errno_error(errno.EINVAL, f"name {name!r}")
    if "/" in name or "\0" in name:
        raise errno_error(errno.EINVAL, f"name {name!r} contains '/' or NUL")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise errno_error(errno.ENAMETOOLONG, "name too long")


def walk_name_ok(name: str) -> bool:
    """A walk element may be ".." (the backend keeps it inside the export) but never
    empty, never contain "/" or NUL."""
    return name != "" and "/" not in name and "\0" not in name


class Session:
    """The books of one connection (pure: the trio layer drives it)."""

    def __init__(self, exports: Mapping[str, Export], limits: Limits = Limits(),
                 connection_id: Hashable = None, fid_budget: FidBudget = PROCESS_FIDS) -> None:
        if not exports:
            raise ValueError("a session needs at least one export")
        self.exports = dict(exports)
        self.limits = limits
        self.connection_id = connection_id if connection_id is not None else object()
        self.msize: int = limits.max_msize
        self.version: str | None = None
        self.fids: dict[int, Fid] = {}
        self._reserved: set[int] = set()
        self._fids_per_key: dict[Hashable, int] = {}
        # Files this connection took POSIX locks on: only there must a close ask the
        # lock table for anything (counted O(1) above, for every fid, as the close of
        # the last fid on a file must not cost a look through all of them).
        self.locked_keys: set[Hashable] = set()
        self._fid_budget = fid_budget  # counts len(fids) + len(_reserved), as max_fids
        self.xattr_bytes = 0  # held in xattr fids, against limits.max_xattr_bytes
        self._log_limit = LogLimiter()

    # --- limits --------------------------------------------------------------------
    def refuse(self, code: int, cause: str, text: str) -> OSError:
        """The error for a request over one of the limits, with a log line (the first
        few of each cause, then one a minute saying how many more)."""
        write, dropped = self._log_limit.admit(cause, time.monotonic())
        name = self.connection_id
        if isinstance(name, tuple):
            name = " ".join(map(str, name))
        if dropped:
            log.warning("%s: %d more refusals (%s) in the last minute, not logged",
                        name, dropped, cause)
        if write:
            log.warning("%s: refused (%s): %s", name, cause, text)
        return errno_error(code, text)

    def hold_xattr(self, nbytes: int, code: int) -> None:
        """Count ``nbytes`` of xattr value held in a fid, or refuse with ``code``."""
        if self.xattr_bytes + nbytes > self.limits.max_xattr_bytes:
            raise self.refuse(code, "xattr limit",
                              f"{self.xattr_bytes} + {nbytes} bytes of xattr values held "
                              f"(max_xattr_bytes {self.limits.max_xattr_bytes})")
        self.xattr_bytes += nbytes

    def drop_xattr(self, fid: Fid) -> None:
        """The xattr fid ``fid`` is closed: what it held is free."""
        self.xattr_bytes -= fid.xattr_held
        fid.xattr_held = 0

    # --- version -----------------------------------------------------------------
    def negotiate(self, requested_msize: int, version: str) -> tuple[int, str]:
        msize, agreed = negotiate_version(requested_msize, version, self.limits.max_msize)
        self.msize = msize
        self.version = agreed if agreed == VERSION_9P2000L else None
        return msize, agreed

    def export_for(self, aname: str) -> tuple[Export, str]:
        """The export an attach names, and the aname the export's filesystem gets.

        "" or "/" is the default (first) export; otherwise an exact export name, also
        accepted with a leading "/" (mount -o aname=/name); both give the filesystem
        aname "". A filesystem with ``sub_anames`` (copy-on-write: one upper per
        guest) also takes "NAME/GUEST" (its export NAME gets "GUEST") and, when no
        export is named so, a plain "GUEST" for the default export."""
        if aname in ("", "/"):
            return next(iter(self.exports.values())), ""
        stripped = aname.lstrip("/")
        for candidate in (aname, stripped):
            if candidate in self.exports:
                return self.exports[candidate], ""
        head, sep, rest = stripped.partition("/")
        export = self.exports.get(head) if sep else None
        if export is not None and getattr(export.filesystem, "sub_anames", False):
            return export, rest
        default = next(iter(self.exports.values()))
        if getattr(default.filesystem, "sub_anames", False):
            return default, stripped
        raise errno_error(errno.ENOENT, f"no export named {aname!r}")

    # --- fid table -----------------------------------------------------------------
    def use(self, number: int) -> Fid:
        """Look ``number`` up for one request; pair with ``let_go``."""
        fid = self.fids.get(number)
        if fid is None:
            raise errno_error(errno.EBADF, f"unknown fid {number}")
        fid.users += 1
        return fid

    def let_go(self, fid: Fid) -> bool:
        """One request is done with ``fid``; True if the caller must now close it."""
        fid.users -= 1
        return fid.retired and fid.users == 0 and not fid.closed

    def reserve(self, number: int, replacing: int | None = None) -> None:
        """Claim a new fid number for a request in flight (EBADF if taken)."""
        if number == replacing:
            return
        if number in self.fids or number in self._reserved:
            raise errno_error(errno.EBADF, f"fid {number} already in use")
        if len(self.fids) + len(self._reserved) >= self.limits.max_fids:
            raise self.refuse(errno.EMFILE, "fid limit",
                              f"more than {self.limits.max_fids} fids (max_fids)")
        budget = self._fid_budget
        if budget.limit is not None and budget.refuses(len(self.fids) + len(self._reserved)):
            raise self.refuse(errno.ENFILE, "process fid limit",
                              f"{self._fid_budget.used} of the process's {self._fid_budget.limit} "
                              f"fids in use (its fd limit; the last quarter is for light "
                              f"connections)")
        self._reserved.add(number)
        budget.used += 1

    def unreserve(self, number: int) -> None:
        if number in self._reserved:  # not bound after all
            self._reserved.remove(number)
            self._fid_budget.used -= 1

    def bind(self, fid: Fid) -> list[Fid]:
        """Put ``fid`` in the table (its number reserved, or replacing the same number).
        Returns the fids that left the table and must be closed now."""
        reserved = fid.number in self._reserved
        self._reserved.discard(fid.number)
        if fid.file is not None and fid.kind is FidKind.FILE:
            fid.lock_key = key = (fid.export.filesystem, fid.file.lock_key)
            self._fids_per_key[key] = self._fids_per_key.get(key, 0) + 1
        old = self.fids.get(fid.number)
        self.fids[fid.number] = fid
        if old is None and not reserved:
            self._fid_budget.used += 1
        return self._retire(old) if old is not None else []

    def unbind(self, number: int) -> tuple[Fid, bool]:
        """Take ``number`` out of the table: (fid, close_now)."""
        fid = self.fids.pop(number, None)
        if fid is None:
            raise errno_error(errno.EBADF, f"unknown fid {number}")
        self._fid_budget.used -= 1
        return fid, bool(self._retire(fid))

    def _retire(self, fid: Fid) -> list[Fid]:
        fid.retired = True
        return [fid] if fid.users == 0 and not fid.closed else []

    def last_fid_on(self, fid: Fid) -> bool:
        """Forget ``fid``'s claim on its file; True if no other fid of this
        connection refers to that file any more (POSIX: close drops the locks)."""
        key = fid.lock_key
        if key is None:
            return False
        left = self._fids_per_key.get(key, 1) - 1
        if left > 0:
            self._fids_per_key[key] = left
            return False
        self._fids_per_key.pop(key, None)
        return True

    def clear(self) -> list[Fid]:
        """Tversion or disconnect: every fid leaves the table; return those to close."""
        gone = list(self.fids.values())
        self._fid_budget.used -= len(self.fids) + len(self._reserved)
        self.fids.clear()
        self._reserved.clear()
        to_close: list[Fid] = []
        for fid in gone:
            to_close += self._retire(fid)
        return to_close
