"""9P2000.L constants: message type numbers, qid types, open flags, attribute masks.

Values follow the Linux kernel's ``include/net/9p/9p.h`` and diod's ``protocol.md``.
Pure module: no I/O, no trio.
"""

from __future__ import annotations

import errno as _errno
from enum import IntEnum, IntFlag

VERSION_9P2000L = "9P2000.L"
VERSION_UNKNOWN = "unknown"

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
NONUNAME = 0xFFFFFFFF  # n_uname when the client names no numeric user

HEADER_SIZE = 7  # size[4] type[1] tag[2]
IOHDRSZ = 24  # the kernel's P9_IOHDRSZ: room kept in msize for Tread/Twrite headers
READDIRHDRSZ = 24
MAX_WALK_ELEMENTS = 16  # P9_MAXWELEM
MIN_MSIZE = 4096


class MessageType(IntEnum):
    """Type byte of every 9P2000.L (and classic 9P2000) message."""

    Tlerror = 6
    Rlerror = 7
    Tstatfs = 8
    Rstatfs = 9
    Tlopen = 12
    Rlopen = 13
    Tlcreate = 14
    Rlcreate = 15
    Tsymlink = 16
    Rsymlink = 17
    Tmknod = 18
    Rmknod = 19
    Trename = 20
    Rrename = 21
    Treadlink = 22
    Rreadlink = 23
    Tgetattr = 24
    Rgetattr = 25
    Tsetattr = 26
    Rsetattr = 27
    Txattrwalk = 30
    Rxattrwalk = 31
    Txattrcreate = 32
    Rxattrcreate = 33
    Treaddir = 40
    Rreaddir = 41
    Tfsync = 50
    Rfsync = 51
    Tlock = 52
    Rlock = 53
    Tgetlock = 54
    Rgetlock = 55
    Tlink = 70
    Rlink = 71
    Tmkdir = 72
    Rmkdir = 73
    Trenameat = 74
    Rrenameat = 75
    Tunlinkat = 76
    Runlinkat = 77
    Tversion = 100
    Rversion = 101
    Tauth = 102
    Rauth = 103
    Tattach = 104
    Rattach = 105
    Terror = 106  # never valid on the wire; present so it can be named and refused
    Rerror = 107
    Tflush = 108
    Rflush = 109
    Twalk = 110
    Rwalk = 111
    Topen = 112
    Ropen = 113
    Tcreate = 114
    Rcreate = 115
    Tread = 116
    Rread = 117
    Twrite = 118
    Rwrite = 119
    Tclunk = 120
    Rclunk = 121
    Tremove = 122
    Rremove = 123
    Tstat = 124
    Rstat = 125
    Twstat = 126
    Rwstat = 127


class QidType(IntFlag):
    DIR = 0x80
    APPEND = 0x40
    EXCL = 0x20
    MOUNT = 0x10
    AUTH = 0x08
    TMP = 0x04
    SYMLINK = 0x02
    LINK = 0x01
    FILE = 0x00


class OpenFlags(IntFlag):
    """P9_DOTL_* open flags: the Linux x86 O_* values, whatever the host is."""

    RDONLY = 0o0
    WRONLY = 0o1
    RDWR = 0o2
    NOACCESS = 0o3
    CREATE = 0o100
    EXCL = 0o200
    NOCTTY = 0o400
    TRUNC = 0o1000
    APPEND = 0o2000
    NONBLOCK = 0o4000
    DSYNC = 0o10000
    FASYNC = 0o20000
    DIRECT = 0o40000
    LARGEFILE = 0o100000
    DIRECTORY = 0o200000
    NOFOLLOW = 0o400000
    NOATIME = 0o1000000
    CLOEXEC = 0o2000000
    SYNC = 0o4000000


ACCMODE = 0o3

class GetattrMask(IntFlag):
    MODE = 0x00000001
    NLINK = 0x00000002
    UID = 0x00000004
    GID = 0x00000008
    RDEV = 0x00000010
    ATIME = 0x00000020
    MTIME = 0x00000040
    CTIME = 0x00000080
    INO = 0x00000100
    SIZE = 0x00000200
    BLOCKS = 0x00000400
    BTIME = 0x00000800
    GEN = 0x00001000
    DATA_VERSION = 0x00002000
    BASIC = 0x000007FF
    ALL = 0x00003FFF


class SetattrMask(IntFlag):
    MODE = 0x00000001
    UID = 0x00000002
    GID = 0x00000004
    SIZE = 0x00000008
    ATIME = 0x00000010
    MTIME = 0x00000020
    CTIME = 0x00000040
    ATIME_SET = 0x00000080
    MTIME_SET = 0x00000100


class LockType(IntEnum):
    RDLCK = 0
    WRLCK = 1
    UNLCK = 2


class LockFlags(IntFlag):
    BLOCK = 1
    RECLAIM = 2


class LockStatus(IntEnum):
    SUCCESS = 0
    BLOCKED = 1
    ERROR = 2
    GRACE = 3


class DirentType(IntEnum):
    """The dirent type byte in Rreaddir (Linux DT_* values)."""

    UNKNOWN = 0
    FIFO = 1
    CHR = 2
    DIR = 4
    BLK = 6
    REG = 8
    LNK = 10
    SOCK = 12
    WHT = 14


AT_REMOVEDIR = 0x200  # Tunlinkat flags

XATTR_CREATE = 1
XATTR_REPLACE = 2

V9FS_MAGIC = 0x01021997  # f_type reported by Rstatfs unless the host's is passed through


class Errno(IntEnum):
    """Linux errno values as carried by Rlerror (the wire speaks Linux numbers)."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    EBADF = 9
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    ENOTDIR = 20
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOTTY = 25
    ETXTBSY = 26
    EFBIG = 27
    ENOSPC = 28
    ESPIPE = 29
    EROFS = 30
    EMLINK = 31
    EPIPE = 32
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ELOOP = 40
    ENODATA = 61
    EPROTO = 71
    EBADMSG = 74
    EOVERFLOW = 75
    EOPNOTSUPP = 95
    ECONNABORTED = 103
    ETIMEDOUT = 110
    EDQUOT = 122


def host_errno_to_wire(code: int) -> int:
    """Map a host errno to the Linux number Rlerror carries (identity on Linux)."""
    name = _errno.errorcode.get(code)
    if name is None:
        return Errno.EIO
    try:
        return Errno[name]
    except KeyError:
        return code if code > 0 else Errno.EIO
