"""Linux syscalls the host export needs that Python's ``os`` module does not offer.

Python 3.11 has no statx, getdents64 with d_off cookies, AT_EMPTY_PATH variants of
fchownat/linkat, UTIME_NOW/UTIME_OMIT in utimensat, fstatfs's f_type, per-thread
setfsuid/setfsgid, or a per-thread setgroups (glibc's setgroups() broadcasts to every
thread). Each wrapper here is one syscall through ctypes and raises OSError(errno).
Linux only; x86_64 and aarch64 syscall numbers for the raw ones.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading
from typing import Sequence

_libc = ctypes.CDLL(None, use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800

# Raw syscall numbers, only where a glibc wrapper would do the wrong thing.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())
_SYS_CAPGET = {"x86_64": 125, "aarch64": 90}.get(platform.machine())
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
_CAP_VERSION_3 = 0x20080522


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


# --- statx -------------------------------------------------------------------------

# struct statx up to stx_dev_minor (include/uapi/linux/stat.h); timestamps are
# {s64 sec, u32 nsec, s32 reserved}.
_STATX = struct.Struct("<IIQIIIHxxQQQQ" + "qIi" * 4 + "IIII")
_STATX_BUFSIZE = 256
_statx_fn = getattr(_libc, "statx", None)
_statx_buffers = threading.local()


def statx_fields(fd: int) -> tuple | None:
    """statx(fd, "", AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW) of the (O_PATH) fd, with its
    birth time: struct statx up to stx_dev_minor as one flat tuple in ``_STATX``'s
    order (hostattr.attributes_of names the fields), or None when the C library has
    no statx. No object per call: getattr is the hottest request. The buffer is per
    thread, as getattr may run in a worker thread under a guest's identity."""
    if _statx_fn is None:
        return None
    buf = getattr(_statx_buffers, "buf", None)
    if buf is None:
        buf = _statx_buffers.buf = ctypes.create_string_buffer(_STATX_BUFSIZE)
    if _statx_fn(fd, b"", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
                 STATX_BASIC_STATS | STATX_BTIME, buf) < 0:
        _check(-1, "statx")
    return _STATX.unpack_from(buf)


# --- getdents64 --------------------------------------------------------------------

# struct linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, char d_name[]
_DIRENT64 = struct.Struct("<QqHB")
_getdents_fn = getattr(_libc, "getdents64", None)
_U64 = (1 << 64) - 1


# One directory entry as getdents64 gives it: (d_ino, next_cookie, d_type, name).
# next_cookie is d_off as an unsigned 64-bit value: seek there to read what follows.
# Plain tuples: readdir makes one per entry, and it is the hot loop of `ls`.
RawDirent = tuple[int, int, int, str]


def read_dir_chunk(fd: int, cookie: int, bufsize: int) -> list[RawDirent]:
    """Entries of the O_RDONLY directory ``fd`` starting at ``cookie`` (0 = start).

    Seeks to the host filesystem's own d_off cookie, so offsets stay valid across
    calls (and across entries added or removed meanwhile, as far as the host
    filesystem guarantees). Returns [] at the end of the directory.
    """
    return _parse_dirents(read_dir_raw(fd, cookie, bufsize))


DIRENT64_HEAD = _DIRENT64  # what precedes d_name in each record of read_dir_raw


def read_dir_raw(fd: int, cookie: int, bufsize: int) -> bytes:
    """The linux_dirent64 records getdents64 fills in, as they are (see read_dir_chunk;
    the readdir fast path turns them into wire records without a tuple per entry)."""
    if _getdents_fn is None:
        raise OSError(38, "getdents64 not available")
    signed = cookie - (1 << 64) if cookie >= (1 << 63) else cookie
    os.lseek(fd, signed, os.SEEK_SET)
    buf = ctypes.create_string_buffer(bufsize)
    length = _check(_getdents_fn(fd, buf, bufsize), "getdents64")
    return ctypes.string_at(buf, length)


def _parse_dirents(raw: bytes) -> list[RawDirent]:
    out: list[RawDirent] = []
    append, unpack = out.append, _DIRENT64.unpack_from
    header, end, pos = _DIRENT64.size, len(raw), 0
    while pos < end:
        ino, off, reclen, dtype = unpack(raw, pos)
        name_start = pos + header
        name = raw[name_start: raw.index(0, name_start)].decode("utf-8", "surrogateescape")
        append((ino, off & _U64, dtype, name))
        pos += reclen
    return out


# --- *at calls with AT_EMPTY_PATH / UTIME_* ------------------------------------------

class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(dirfd: int, path: str, atime: tuple[int, int] | None | str,
              mtime: tuple[int, int] | None | str, *, nofollow: bool) -> None:
    """Set times; each of atime/mtime is (sec, nsec), "now", or None (leave as is)."""
    def spec(value) -> _Timespec:
        if value is None:
            return _Timespec(0, UTIME_OMIT)
        if value == "now":
            return _Timespec(0, UTIME_NOW)
        return _Timespec(value[0], value[1])

    times = (_Timespec * 2)(spec(atime), spec(mtime))
    flags = AT_SYMLINK_NOFOLLOW if nofollow else 0
    _check(_libc.utimensat(dirfd, os.fsencode(path), times, flags), "utimensat")


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", ..., AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW): lchown by O_PATH fd.
    -1 leaves that id unchanged."""
    _check(_libc.fchownat(fd, b"", ctypes.c_uint(uid & 0xFFFFFFFF),
                          ctypes.c_uint(gid & 0xFFFFFFFF),
                          AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "fchownat")


def link_empty(fd: int, newdirfd: int, newname: str) -> None:
    """linkat(fd, "", newdirfd, newname, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH
    (ENOENT without it); callers fall back to the /proc/self/fd path."""
    _check(_libc.linkat(fd, b"", newdirfd, os.fsencode(newname), AT_EMPTY_PATH), "linkat")


_STATFS_BUFSIZE = 128  # struct statfs is 120 bytes on 64-bit Linux


def fstatfs_type(fd: int) -> int:
    """The host filesystem's magic number (statfs f_type) for ``fd``."""
    buf = ctypes.create_string_buffer(_STATFS_BUFSIZE)
    _check(_libc.fstatfs(fd, buf), "fstatfs")
    return struct.unpack_from("<q", buf.raw)[0] & 0xFFFFFFFF


# --- per-thread identity ------------------------------------------------------------

def setfsuid(uid: int) -> int:
    """Set this thread's filesystem uid; returns the previous one. setfsuid never
    reports failure, so callers check with ``current_fsuid``."""
    return _libc.setfsuid(ctypes.c_uint(uid))


def setfsgid(gid: int) -> int:
    return _libc.setfsgid(ctypes.c_uint(gid))


def current_fsuid() -> int:
    # An invalid id changes nothing and returns the current value.
    return _libc.setfsuid(ctypes.c_uint(0xFFFFFFFF))


def current_fsgid() -> int:
    return _libc.setfsgid(ctypes.c_uint(0xFFFFFFFF))


def set_thread_groups(groups: Sequence[int]) -> None:
    """setgroups for the calling thread only (the raw syscall, not glibc's wrapper)."""
    if _SYS_SETGROUPS is None:
        raise OSError(38, f"setgroups syscall number unknown on {platform.machine()}")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _check(_libc.syscall(_SYS_SETGROUPS, len(groups), array), "setgroups")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def get_thread_caps() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """This thread's (effective, permitted, inheritable) capability words, low then high."""
    if _SYS_CAPGET is None:
        raise OSError(38, f"capget syscall number unknown on {platform.machine()}")
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_SYS_CAPGET, ctypes.byref(header), data), "capget")
    return tuple((d.effective, d.permitted, d.inheritable) for d in data)  # type: ignore


def set_thread_caps(caps: tuple[tuple[int, int, int], tuple[int, int, int]]) -> None:
    """capset for the calling thread only (capabilities are per-thread in Linux)."""
    if _SYS_CAPSET is None:
        raise OSError(38, f"capset syscall number unknown on {platform.machine()}")
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)(*(_CapData(*words) for words in caps))
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), data), "capset")
