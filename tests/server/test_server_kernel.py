"""What the Linux kernel's v9fs client sends, on the wire, against a host export.

Each test replays the messages a Linux 6.1 guest sends for one system call (read off
fs/9p/vfs_inode_dotl.c, vfs_file.c, vfs_dir.c, xattr.c, fid.c and net/9p/client.c)
and checks the answer the kernel needs. The VM tests confirm the big picture; these
pin down the details the kernel relies on, message by message.
"""

import errno
import os
import stat
import time

import pytest

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.codec import unpack_dirents
from ninep.protocol.constants import (
    AT_REMOVEDIR, XATTR_CREATE, XATTR_REPLACE, GetattrMask, OpenFlags, SetattrMask,
)

from srv_wire import served

RDONLY, WRONLY, RDWR = int(OpenFlags.RDONLY), int(OpenFlags.WRONLY), int(OpenFlags.RDWR)
# What v9fs_open_to_dotl_flags makes of open(2) flags (the Linux x86 values).
CREATE, EXCL, APPEND = int(OpenFlags.CREATE), int(OpenFlags.EXCL), int(OpenFlags.APPEND)
LARGEFILE, CLOEXEC = int(OpenFlags.LARGEFILE), int(OpenFlags.CLOEXEC)
DIRECTORY, NONBLOCK = int(OpenFlags.DIRECTORY), int(OpenFlags.NONBLOCK)
S = SetattrMask
NOW_SLACK = 120  # seconds: "now" on the host, as the test sees it


@pytest.fixture
async def peer(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "file").write_bytes(b"0123456789")
    (export / "dir").mkdir()
    fs = HostFilesystem(str(export))
    async with served(fs) as ([p], _):
        p.export = export
        await p.start(msize=65536)
        yield p
    await fs.aclose()


def error(reply, code):
    return reply == m.Rlerror(reply.tag, code)


async def walk_open(peer, fid, name, flags, tag=90):
    assert isinstance(await peer.rpc(m.Twalk(tag, 0, fid, (name,) if name else ())), m.Rwalk)
    reply = await peer.rpc(m.Tlopen(tag, fid, flags))
    assert isinstance(reply, m.Rlopen), reply
    return reply


async def test_clone_walk_from_an_open_fid(peer):
    """fid.c: with no fid on the dentry the kernel borrows the inode's *open* fid and
    clones it (Twalk nwname=0), e.g. fsetxattr on an unlinked open file."""
    await walk_open(peer, 1, "file", RDWR)
    (peer.export / "file").unlink()
    assert await peer.rpc(m.Twalk(1, 1, 2, ())) == m.Rwalk(1, ())
    assert isinstance(await peer.rpc(m.Txattrcreate(2, 2, "user.k", 1, 0)), m.Rxattrcreate)
    assert await peer.rpc(m.Twrite(3, 2, 0, b"v")) == m.Rwrite(3, 1)
    assert await peer.rpc(m.Tclunk(4, 2)) == m.Rclunk(4)
    # The new fid is not open; the open one still reads.
    await peer.rpc(m.Twalk(5, 1, 3, ()))
    assert error(await peer.rpc(m.Tread(6, 3, 0, 10)), errno.EBADF)
    assert await peer.rpc(m.Tread(7, 1, 0, 4)) == m.Rread(7, b"0123")
    # A walk *into* a directory from its open fid (a borrowed parent fid) works too.
    await walk_open(peer, 4, "dir", RDONLY | DIRECTORY)
    (peer.export / "dir" / "x").write_bytes(b"")
    assert len((await peer.rpc(m.Twalk(8, 4, 5, ("x",)))).qids) == 1


async def test_lcreate_with_the_flags_the_kernel_sends(peer):
    """atomic_open passes O_CREAT and O_EXCL through (and O_LARGEFILE, O_NOFOLLOW...);
    O_TRUNC is never in Tlcreate (not in the kernel's flag map). The mode carries
    S_IFREG, as build_open_flags makes it."""
    flags = WRONLY | CREATE | EXCL | LARGEFILE | CLOEXEC
    await peer.rpc(m.Twalk(1, 0, 1, ()))
    reply = await peer.rpc(m.Tlcreate(2, 1, "new", flags, stat.S_IFREG | 0o640, 0))
    assert isinstance(reply, m.Rlcreate) and reply.qid.type == 0
    assert await peer.rpc(m.Twrite(3, 1, 0, b"created")) == m.Rwrite(3, 7)
    assert stat.S_IMODE(os.stat(peer.export / "new").st_mode) == 0o640
    # O_EXCL on an existing name: EEXIST, and the fid stays the directory's.
    await peer.rpc(m.Twalk(4, 0, 2, ()))
    assert error(await peer.rpc(m.Tlcreate(5, 2, "new", flags, 0o640, 0)), errno.EEXIST)
    # Without O_EXCL (the name appeared since the lookup): the file is opened, kept.
    assert isinstance(await peer.rpc(m.Tlcreate(6, 2, "new", RDWR | CREATE, 0o600, 0)), m.Rlcreate)
    assert await peer.rpc(m.Tread(7, 2, 0, 100)) == m.Rread(7, b"created")
    # The kernel then walks to the new name for the dentry, and getattrs it.
    await peer.rpc(m.Twalk(8, 0, 3, ("new",)))
    attr = await peer.rpc(m.Tgetattr(9, 3, GetattrMask.BASIC | GetattrMask.GEN))
    assert attr.size == 7 and attr.qid.path == reply.qid.path  # version follows content


async def test_open_with_o_trunc_is_lopen_then_setattr_on_the_open_fid(peer):
    """open(O_RDONLY|O_TRUNC): the VFS strips O_TRUNC before ->open, then truncates
    through the *opened* fid: Tsetattr(SIZE|MTIME|CTIME, size 0), times meaning now."""
    os.utime(peer.export / "file", (1000, 1000))
    await walk_open(peer, 1, "file", RDONLY | LARGEFILE)
    reply = await peer.rpc(m.Tsetattr(2, 1, S.SIZE | S.MTIME | S.CTIME, 0, 0, 0, 0, 0, 0, 0, 0))
    assert reply == m.Rsetattr(2)
    st = os.stat(peer.export / "file")
    assert st.st_size == 0 and abs(st.st_mtime - time.time()) < NOW_SLACK


async def test_ftruncate_and_fstat_of_an_unlinked_open_file(peer):
    """After unlink the kernel reaches the file only through its open fid: ftruncate
    is Tsetattr(SIZE|MTIME|CTIME) on it, fstat a Tgetattr on it."""
    await walk_open(peer, 1, "file", RDWR)
    (peer.export / "file").unlink()
    assert await peer.rpc(m.Tsetattr(2, 1, S.SIZE | S.MTIME | S.CTIME, 0, 0, 0, 3, 0, 0, 0, 0)) == m.Rsetattr(2)
    attr = await peer.rpc(m.Tgetattr(3, 1, GetattrMask.ALL))
    assert attr.size == 3 and attr.nlink == 0
    assert await peer.rpc(m.Tread(4, 1, 0, 100)) == m.Rread(4, b"012")


async def test_setattr_times_without_set_mean_now_and_with_set_are_exact(peer):
    """utimensat(NULL): ATIME|MTIME|CTIME, no *_SET, time fields 0 -> now.
    utimensat(times): ATIME|MTIME|ATIME_SET|MTIME_SET|CTIME -> exactly those."""
    await peer.rpc(m.Twalk(1, 0, 1, ("file",)))
    os.utime(peer.export / "file", (1000, 1000))
    assert await peer.rpc(m.Tsetattr(2, 1, S.ATIME | S.MTIME | S.CTIME, 0, 0, 0, 0, 0, 0, 0, 0)) == m.Rsetattr(2)
    st = os.stat(peer.export / "file")
    assert abs(st.st_atime - time.time()) < NOW_SLACK and abs(st.st_mtime - time.time()) < NOW_SLACK
    valid = S.ATIME | S.MTIME | S.ATIME_SET | S.MTIME_SET | S.CTIME
    assert await peer.rpc(m.Tsetattr(3, 1, valid, 0, 0, 0, 0, 12, 5, 34, 6)) == m.Rsetattr(3)
    st = os.stat(peer.export / "file")
    assert (st.st_atime_ns, st.st_mtime_ns) == (12_000_000_005, 34_000_000_006)
    # Only MTIME "now" leaves atime alone (touch -m).
    assert await peer.rpc(m.Tsetattr(4, 1, S.MTIME | S.CTIME, 0, 0, 0, 0, 0, 0, 0, 0)) == m.Rsetattr(4)
    st = os.stat(peer.export / "file")
    assert st.st_atime_ns == 12_000_000_005 and abs(st.st_mtime - time.time()) < NOW_SLACK


async def test_setattr_ctime_only_and_nothing_succeed(peer):
    """ATTR_CTIME rides along with most changes, and alone it must not fail; the
    fields the mask does not name (uid/gid INVALID_UID = 0xFFFFFFFF) are ignored."""
    await peer.rpc(m.Twalk(1, 0, 1, ("file",)))
    before = os.stat(peer.export / "file")
    for tag, valid in ((2, S.CTIME), (3, 0)):
        reply = await peer.rpc(m.Tsetattr(tag, 1, valid, 0o777, 0xFFFFFFFF, 0xFFFFFFFF, 5, 0, 0, 0, 0))
        assert reply == m.Rsetattr(tag)
    after = os.stat(peer.export / "file")
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_size) == (
        before.st_mode, before.st_uid, before.st_gid, before.st_size)
    # chmod: MODE|CTIME with uid/gid INVALID.
    assert await peer.rpc(m.Tsetattr(4, 1, S.MODE | S.CTIME, 0o600, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0, 0, 0)) == m.Rsetattr(4)
    assert stat.S_IMODE(os.stat(peer.export / "file").st_mode) == 0o600


@pytest.mark.root
async def test_chown_of_the_uid_alone_keeps_the_gid(peer):
    await peer.rpc(m.Twalk(1, 0, 1, ("file",)))
    gid = os.stat(peer.export / "file").st_gid
    assert await peer.rpc(m.Tsetattr(2, 1, S.UID | S.CTIME, 0, 4321, 0xFFFFFFFF, 0, 0, 0, 0, 0)) == m.Rsetattr(2)
    st = os.stat(peer.export / "file")
    assert (st.st_uid, st.st_gid) == (4321, gid)


async def test_getattr_masks_the_kernel_asks_with(peer):
    """Inode creation asks BASIC|GEN, stat(2) asks ALL; v9fs_stat2inode_dotl takes
    every basic field only if valid covers all of BASIC."""
    await peer.rpc(m.Twalk(1, 0, 1, ("file",)))
    for tag, mask in ((2, GetattrMask.BASIC | GetattrMask.GEN), (3, GetattrMask.ALL)):
        attr = await peer.rpc(m.Tgetattr(tag, 1, mask))
        assert attr.valid & GetattrMask.BASIC == GetattrMask.BASIC
        assert attr.size == 10 and stat.S_ISREG(attr.mode) and attr.nlink == 1


async def test_readdir_cookies_restart_and_end(peer):
    """getdents resumes at the last entry's d_off (also after lseek/telldir), offset 0
    rewinds, and an empty Rreaddir ends the listing."""
    for i in range(30):
        (peer.export / "dir" / f"entry-{i:02}").write_bytes(b"")
    await peer.rpc(m.Twalk(1, 0, 1, ("dir",)))
    await peer.rpc(m.Tlopen(2, 1, RDONLY | DIRECTORY | NONBLOCK | LARGEFILE | CLOEXEC))
    names, offset, tag, cookies = [], 0, 10, {}
    while True:
        data = (await peer.rpc(m.Treaddir(tag, 1, offset, 200))).data
        tag += 1
        if not data:
            break
        for entry in unpack_dirents(data):
            names.append(entry.name)
            cookies[entry.name] = entry.offset
            offset = entry.offset
    assert sorted(names) == sorted([".", "..", *(f"entry-{i:02}" for i in range(30))])
    assert len(names) == len(set(names))
    # Seeking to a cookie resumes right after that entry.
    middle = names[15]
    rest = [e.name for e in unpack_dirents((await peer.rpc(m.Treaddir(50, 1, cookies[middle], 65000))).data)]
    assert rest == names[16:]
    again = unpack_dirents((await peer.rpc(m.Treaddir(51, 1, 0, 65000))).data)
    assert [e.name for e in again] == names


async def test_renameat_and_unlinkat_as_the_kernel_uses_them(peer):
    (peer.export / "dir" / "inner").write_bytes(b"")
    (peer.export / "empty").mkdir()
    await peer.rpc(m.Twalk(1, 0, 1, ("dir",)))
    # rename(2) replaces an existing target.
    (peer.export / "target").write_bytes(b"old")
    assert await peer.rpc(m.Trenameat(2, 0, "file", 0, "target")) == m.Rrenameat(2)
    assert (peer.export / "target").read_bytes() == b"0123456789"
    assert error(await peer.rpc(m.Trenameat(3, 0, "empty", 0, "dir")), errno.ENOTEMPTY)
    assert error(await peer.rpc(m.Trenameat(4, 0, "target", 0, "dir")), errno.EISDIR)
    assert await peer.rpc(m.Trenameat(5, 0, "target", 1, "moved")) == m.Rrenameat(5)
    # unlink: flags 0; rmdir: P9_DOTL_AT_REMOVEDIR (0x200).
    assert error(await peer.rpc(m.Tunlinkat(6, 0, "dir", 0)), errno.EISDIR)
    assert error(await peer.rpc(m.Tunlinkat(7, 1, "moved", AT_REMOVEDIR)), errno.ENOTDIR)
    assert error(await peer.rpc(m.Tunlinkat(8, 0, "dir", AT_REMOVEDIR)), errno.ENOTEMPTY)
    assert await peer.rpc(m.Tunlinkat(9, 0, "empty", AT_REMOVEDIR)) == m.Runlinkat(9)
    assert await peer.rpc(m.Tunlinkat(10, 1, "moved", 0)) == m.Runlinkat(10)
    assert sorted(os.listdir(peer.export / "dir")) == ["inner"]


async def test_fsync_and_fdatasync_of_files_and_directories(peer):
    """fsync(2) and fdatasync(2) on an open file, and fsync of an open directory
    (v9fs_dir_operations_dotl has .fsync too)."""
    await walk_open(peer, 1, "file", WRONLY)
    await walk_open(peer, 2, "dir", RDONLY | DIRECTORY)
    for tag, (fid, datasync) in enumerate(((1, 0), (1, 1), (2, 0), (2, 1)), start=10):
        assert await peer.rpc(m.Tfsync(tag, fid, datasync)) == m.Rfsync(tag)


async def test_read_at_and_past_eof_is_empty(peer):
    await walk_open(peer, 1, "file", RDONLY)
    assert await peer.rpc(m.Tread(2, 1, 6, 65000)) == m.Rread(2, b"6789")
    assert await peer.rpc(m.Tread(3, 1, 10, 65000)) == m.Rread(3, b"")
    assert await peer.rpc(m.Tread(4, 1, 1 << 40, 4096)) == m.Rread(4, b"")


async def test_append_writes_land_at_the_end_whatever_the_offset(peer):
    """With O_APPEND the kernel's offset is its cached i_size, maybe stale when
    another client appended: like pwrite(2) on Linux, the data goes to the real end."""
    await walk_open(peer, 1, "file", WRONLY | APPEND)
    (peer.export / "file").write_bytes(b"0123456789ABC")  # another writer grew it
    assert await peer.rpc(m.Twrite(2, 1, 10, b"xyz")) == m.Rwrite(2, 3)
    assert await peer.rpc(m.Twrite(3, 1, 0, b"!")) == m.Rwrite(3, 1)
    assert (peer.export / "file").read_bytes() == b"0123456789ABCxyz!"


async def test_mknod_and_mkdir_modes(peer):
    """mknod(2) of S_IFREG goes through v9fs_vfs_mknod_dotl as Tmknod, not Tlcreate."""
    reply = await peer.rpc(m.Tmknod(1, 0, "plain", stat.S_IFREG | 0o604, 0, 0, 0))
    assert isinstance(reply, m.Rmknod) and reply.qid.type == 0
    assert isinstance(await peer.rpc(m.Tmknod(2, 0, "pipe", stat.S_IFIFO | 0o600, 0, 0, 0)), m.Rmknod)
    st = os.lstat(peer.export / "plain")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o604
    assert stat.S_ISFIFO(os.lstat(peer.export / "pipe").st_mode)
    # mkdir(2): the kernel adds S_IFDIR to the mode it sends.
    assert isinstance(await peer.rpc(m.Tmkdir(3, 0, "sub", stat.S_IFDIR | 0o705, 0)), m.Rmkdir)
    assert stat.S_IMODE(os.stat(peer.export / "sub").st_mode) == 0o705


async def test_xattr_calls_as_the_kernel_makes_them(peer):
    """listxattr: Txattrwalk name "" (size 0 first to learn the length, then read).
    getxattr: Txattrwalk name, then Tread from 0 until all is read. setxattr:
    Txattrcreate(size, flags) + Twrites + Tclunk (errors on the clunk). removexattr:
    Txattrcreate(size 0, XATTR_REPLACE) + Tclunk."""
    await peer.rpc(m.Twalk(1, 0, 1, ("file",)))
    # No xattrs: an empty list.
    assert await peer.rpc(m.Txattrwalk(2, 1, 2, "")) == m.Rxattrwalk(2, 0)
    assert await peer.rpc(m.Tread(3, 2, 0, 0)) == m.Rread(3, b"")
    await peer.rpc(m.Tclunk(4, 2))
    # setxattr(XATTR_CREATE) twice: the second fails at the clunk.
    for tag, expected in ((10, m.Rclunk(13)), (20, m.Rlerror(23, errno.EEXIST))):
        await peer.rpc(m.Twalk(tag, 1, 3, ()))
        assert await peer.rpc(m.Txattrcreate(tag + 1, 3, "user.colour", 4, XATTR_CREATE)) == m.Rxattrcreate(tag + 1)
        assert await peer.rpc(m.Twrite(tag + 2, 3, 0, b"blue")) == m.Rwrite(tag + 2, 4)
        assert await peer.rpc(m.Tclunk(tag + 3, 3)) == expected
    assert os.getxattr(peer.export / "file", "user.colour") == b"blue"
    # listxattr and getxattr, as the kernel reads them.
    size = (await peer.rpc(m.Txattrwalk(30, 1, 4, ""))).size
    assert await peer.rpc(m.Tread(31, 4, 0, size)) == m.Rread(31, b"user.colour\0")
    assert await peer.rpc(m.Txattrwalk(32, 1, 5, "user.colour")) == m.Rxattrwalk(32, 4)
    assert await peer.rpc(m.Tread(33, 5, 0, 2)) == m.Rread(33, b"bl")
    assert await peer.rpc(m.Tread(34, 5, 2, 2)) == m.Rread(34, b"ue")
    assert error(await peer.rpc(m.Txattrwalk(35, 1, 6, "user.none")), errno.ENODATA)
    # removexattr, then again (ENODATA on the clunk).
    for tag, expected in ((40, m.Rclunk(42)), (50, m.Rlerror(52, errno.ENODATA))):
        await peer.rpc(m.Twalk(tag, 1, 7, ()))
        assert await peer.rpc(m.Txattrcreate(tag + 1, 7, "user.colour", 0, XATTR_REPLACE)) == m.Rxattrcreate(tag + 1)
        assert await peer.rpc(m.Tclunk(tag + 2, 7)) == expected
    assert os.listxattr(peer.export / "file") == []
