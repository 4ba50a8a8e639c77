"""Wire integers at the edges of their fields, against a host export, over a connection.

Every u32/u64 a client sends ends up, sooner or later, in a C call (mknod's dev_t, pread's
off_t, ftruncate's off_t, utimensat's timespec, fcntl's flock ...). A value that fits the
wire but not the C type must be answered with an errno, never with a traceback and EIO:
the outside fuzz of issue 14 found Tmknod with major >= 2^31 doing exactly that."""

import errno
import logging
import stat

import pytest

from ninep.protocol import messages as m
from tests.server.srv_wire import served

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
SETATTR_ALL = 0x1FF  # mode uid gid size atime mtime ctime atime_set mtime_set


def walk_open(fid, path, flags=2):  # O_RDWR
    names = [part for part in path.split("/") if part]
    return [m.Twalk(2, 0, fid, names), m.Tlopen(3, fid, flags)]


# (setup requests run first, the probe, and the errnos an answer may carry; None = a success)
CASES = {
    "mknod major 2^31": ([m.Twalk(2, 0, 1, ["d"])],
                         m.Tmknod(9, 1, "n", stat.S_IFCHR | 0o600, 1 << 31, 0, U32), {errno.EINVAL}),
    "mknod major u32 max": ([m.Twalk(2, 0, 1, ["d"])],
                            m.Tmknod(9, 1, "n", stat.S_IFIFO | 0o600, U32, 0, U32), {errno.EINVAL}),
    "mknod minor u32 max": ([m.Twalk(2, 0, 1, ["d"])],
                            m.Tmknod(9, 1, "n", stat.S_IFIFO | 0o600, 0, U32, U32), {errno.EINVAL}),
    "mknod major 4096": ([m.Twalk(2, 0, 1, ["d"])],
                         m.Tmknod(9, 1, "n", stat.S_IFIFO | 0o600, 4096, 0, U32), {errno.EINVAL}),
    "mknod minor 2^20": ([m.Twalk(2, 0, 1, ["d"])],
                         m.Tmknod(9, 1, "n", stat.S_IFIFO | 0o600, 0, 1 << 20, U32), {errno.EINVAL}),
    "mknod mode u32 max": ([m.Twalk(2, 0, 1, ["d"])],
                           m.Tmknod(9, 1, "n", U32, 0, 0, U32), {errno.EINVAL}),
    "read offset 2^63": (walk_open(1, "d/f"), m.Tread(9, 1, 1 << 63, 10), {errno.EINVAL, None}),
    "read offset u64 max": (walk_open(1, "d/f"), m.Tread(9, 1, U64, 10), {errno.EINVAL, None}),
    "write offset 2^63": (walk_open(1, "d/f"), m.Twrite(9, 1, 1 << 63, b"x"),
                          {errno.EINVAL, errno.EFBIG}),
    "write offset u64 max": (walk_open(1, "d/f"), m.Twrite(9, 1, U64, b"x"),
                             {errno.EINVAL, errno.EFBIG}),
    "readdir offset u64 max": ([m.Twalk(2, 0, 1, ["d"]), m.Tlopen(3, 1, 0)],
                               m.Treaddir(9, 1, U64, 4096), {errno.EINVAL, None}),
    "setattr size 2^63": ([m.Twalk(2, 0, 1, ["d", "f"])],
                          m.Tsetattr(9, 1, 0x8, 0, 0, 0, 1 << 63, 0, 0, 0, 0),
                          {errno.EINVAL, errno.EFBIG}),
    "setattr size u64 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                             m.Tsetattr(9, 1, 0x8, 0, 0, 0, U64, 0, 0, 0, 0),
                             {errno.EINVAL, errno.EFBIG}),
    "setattr mode u32 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                             m.Tsetattr(9, 1, 0x1, U32, 0, 0, 0, 0, 0, 0, 0), {errno.EINVAL, None}),
    "setattr times u64 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                              m.Tsetattr(9, 1, 0x10 | 0x20 | 0x80 | 0x100, 0, 0, 0, 0,
                                         U64, U64, U64, U64), {errno.EINVAL}),
    "setattr times sec 2^63": ([m.Twalk(2, 0, 1, ["d", "f"])],
                               m.Tsetattr(9, 1, 0x10 | 0x20 | 0x80 | 0x100, 0, 0, 0, 0,
                                          1 << 63, 0, 1 << 63, 0), {errno.EINVAL, None}),
    "setattr everything max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                               m.Tsetattr(9, 1, U32, U32, U32, U32, U64, U64, U64, U64, U64),
                               {errno.EINVAL, errno.EPERM, errno.EFBIG}),
    "lcreate flags u32 max": ([m.Twalk(2, 0, 1, ["d"])],
                              m.Tlcreate(9, 1, "c", U32, 0o600, U32), {errno.EINVAL, None}),
    "lcreate mode u32 max": ([m.Twalk(2, 0, 1, ["d"])],
                             m.Tlcreate(9, 1, "c", 0o102, U32, U32), {errno.EINVAL, None}),
    "lopen flags u32 max": ([m.Twalk(2, 0, 1, ["d", "f"])], m.Tlopen(9, 1, U32),
                            {errno.ENOTDIR}),  # the flags include O_DIRECTORY: a true answer
    "mkdir mode u32 max": ([m.Twalk(2, 0, 1, ["d"])], m.Tmkdir(9, 1, "sub", U32, U32),
                           {errno.EINVAL, None}),
    "lock range u64 max": (walk_open(1, "d/f"),
                           m.Tlock(9, 1, 1, 0, U64, U64, U32, "c"), {errno.EINVAL, None}),
    "lock start 2^63": (walk_open(1, "d/f"),
                        m.Tlock(9, 1, 1, 0, 1 << 63, 1, 1, "c"), {errno.EINVAL, None}),
    "getlock range u64 max": (walk_open(1, "d/f"),
                              m.Tgetlock(9, 1, 1, U64, U64, U32, "c"), {errno.EINVAL, None}),
    "lock type u8 max": (walk_open(1, "d/f"),
                         m.Tlock(9, 1, 255, U32, 0, 0, 1, "c"), {errno.EINVAL, None}),
    "xattrcreate size u64 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                 m.Txattrcreate(9, 1, "user.x", U64, U32),
                                 {errno.EINVAL, errno.E2BIG, errno.ENOSPC, errno.EOPNOTSUPP}),
    "fsync datasync u32 max": (walk_open(1, "d/f"), m.Tfsync(9, 1, U32), {errno.EINVAL, None}),
    "getattr mask u64 max": ([m.Twalk(2, 0, 1, ["d", "f"])], m.Tgetattr(9, 1, U64), {None}),
    # (uid_t)-1 / (gid_t)-1 mean "leave it" to chown(2), and nsec 2^30-1 / 2^30-2 are
    # utimensat's UTIME_NOW / UTIME_OMIT: passed through, each answered success for a
    # change that was not made.
    "setattr uid u32 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                            m.Tsetattr(9, 1, 0x2, 0, U32, 0, 0, 0, 0, 0, 0), {errno.EINVAL}),
    "setattr gid u32 max": ([m.Twalk(2, 0, 1, ["d", "f"])],
                            m.Tsetattr(9, 1, 0x4, 0, 0, U32, 0, 0, 0, 0, 0), {errno.EINVAL}),
    "setattr mtime nsec UTIME_OMIT": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                      m.Tsetattr(9, 1, 0x20 | 0x100, 0, 0, 0, 0, 0, 0,
                                                 5, (1 << 30) - 2), {errno.EINVAL}),
    "setattr atime nsec UTIME_NOW": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                     m.Tsetattr(9, 1, 0x10 | 0x80, 0, 0, 0, 0,
                                                5, (1 << 30) - 1, 0, 0), {errno.EINVAL}),
    "setattr mtime nsec 10^9": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                m.Tsetattr(9, 1, 0x20 | 0x100, 0, 0, 0, 0, 0, 0,
                                           5, 10**9), {errno.EINVAL}),
    "setattr times sec u64 max (before 1970)": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                                m.Tsetattr(9, 1, 0x20 | 0x100, 0, 0, 0, 0,
                                                           0, 0, U64, 0), {None}),
    "unlinkat flags u32 max": ([m.Twalk(2, 0, 1, ["d"])], m.Tunlinkat(9, 1, "f", U32),
                               {errno.EINVAL}),
    "read count u32 max": (walk_open(1, "d/f"), m.Tread(9, 1, 0, U32), {None}),
    "renameat to a name 255 long": ([m.Twalk(2, 0, 1, ["d"])],
                                    m.Trenameat(9, 1, "f", 1, "n" * 256), {errno.ENAMETOOLONG}),
    "link to a name 256 long": ([m.Twalk(2, 0, 1, ["d"]), m.Twalk(3, 0, 2, ["d", "f"])],
                                m.Tlink(9, 1, 2, "n" * 256), {errno.ENAMETOOLONG}),
    "xattrwalk name 256 long": ([m.Twalk(2, 0, 1, ["d", "f"])],
                                m.Txattrwalk(9, 1, 2, "user." + "x" * 256),
                                {errno.ERANGE, errno.ENODATA}),
}


@pytest.mark.parametrize("name", CASES)
async def test_edge_integers_get_an_errno_not_a_traceback(name, hostfs, caplog):
    setup, probe, allowed = CASES[name]
    caplog.set_level(logging.WARNING)
    async with served(hostfs) as (peers, _):
        peer = peers[0]
        await peer.start()
        for request in setup:
            reply = await peer.rpc(request)
            assert not isinstance(reply, m.Rlerror), (request, reply)
        reply = await peer.rpc(probe)
        got = reply.ecode if isinstance(reply, m.Rlerror) else None  # Linux numbers
        assert got in allowed, reply
        assert got != errno.EIO
        # the connection still serves
        assert isinstance(await peer.rpc(m.Tgetattr(10, 0, 0x7FF)), m.Rgetattr)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_times_before_1970_go_both_ways_as_u64(hostfs, export, caplog):
    """A file dated before 1970 (on the host, or by the guest's `touch -d 1960`) failed
    every Tgetattr with EIO and an ERROR "cannot encode Rgetattr": its negative seconds
    did not fit the u64. v9fs reads them as signed: -n goes as 2^64-n, as it sends them."""
    import os
    caplog.set_level(logging.WARNING)
    os.utime(export / "d" / "f", ns=(-5_000_000_001, 1_000_000_000))  # atime -6 s + 999999999 ns
    async with served(hostfs) as (peers, _):
        peer = peers[0]
        await peer.start()
        await peer.rpc(m.Twalk(2, 0, 1, ["d", "f"]))
        reply = await peer.rpc(m.Tgetattr(3, 1, 0x7FF))
        assert isinstance(reply, m.Rgetattr), reply
        assert (reply.atime_sec, reply.atime_nsec) == (U64 + 1 - 6, 999_999_999)
        assert (reply.mtime_sec, reply.mtime_nsec) == (1, 0)
        sixties = -315_619_200  # 1960-01-01, as v9fs sends it
        assert isinstance(await peer.rpc(m.Tsetattr(4, 1, 0x20 | 0x100, 0, 0, 0, 0, 0, 0,
                                                    sixties & U64, 5)), m.Rsetattr)
        assert os.stat(export / "d" / "f").st_mtime_ns == sixties * 10**9 + 5
        reply = await peer.rpc(m.Tgetattr(5, 1, 0x7FF))
        assert (reply.mtime_sec, reply.mtime_nsec) == (sixties & U64, 5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
