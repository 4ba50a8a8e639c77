"""getattr fields, setattr bit by bit, statfs."""

import errno
import stat
import time

import pytest

from ninep.fs.backend import SetAttr
from ninep.protocol.constants import GetattrMask, OpenFlags, SetattrMask, V9FS_MAGIC

from .backends import SEED_FILES
from .helpers import raises_errno, walk_to, walked


async def test_getattr_of_file(root):
    async with walked(root, "dir/file.txt") as f:
        a = await f.getattr(GetattrMask.ALL)
    assert a.valid & GetattrMask.BASIC == GetattrMask.BASIC
    assert stat.S_ISREG(a.mode) and a.size == len(SEED_FILES["dir/file.txt"])
    assert a.nlink >= 1 and a.blksize > 0
    assert a.qid == (await walk_and_qid(root, "dir/file.txt"))
    assert a.mtime_sec > 0 and 0 <= a.mtime_nsec < 10**9
    assert a.ctime_sec > 0 and a.atime_sec > 0


async def walk_and_qid(root, path):
    f = await walk_to(root, path)
    qid = f.qid
    await f.close()
    return qid


async def test_getattr_of_directory_and_link(root, backend):
    a = await root.getattr(GetattrMask.ALL)
    assert stat.S_ISDIR(a.mode) and a.nlink >= 2
    if backend.caps.symlinks:
        async with walked(root, "link") as link:
            la = await link.getattr(GetattrMask.ALL)
        assert stat.S_ISLNK(la.mode) and la.size == len("dir/file.txt")


@pytest.mark.needs("writable")
async def test_setattr_mode(root, backend):
    async with walked(root, "dir/file.txt") as f:
        await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o640))
        assert stat.S_IMODE((await f.getattr(0)).mode) == 0o640
        await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o4755))
        assert stat.S_IMODE((await f.getattr(0)).mode) == 0o4755


@pytest.mark.needs("writable")
async def test_setattr_size_grows_and_shrinks(root, backend):
    async with walked(root, "dir/file.txt") as f:
        await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=3))
        assert (await f.getattr(0)).size == 3
        await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=5000))
        assert (await f.getattr(0)).size == 5000
    async with walked(root, "dir/file.txt", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 10)) == b"hel" + b"\0" * 7


@pytest.mark.needs("writable")
async def test_setattr_size_on_directory_is_eisdir(root, backend):
    with raises_errno(errno.EISDIR):
        await root.setattr(SetAttr(valid=SetattrMask.SIZE, size=0))


@pytest.mark.needs("writable")
async def test_setattr_times_given_and_now(root, backend):
    async with walked(root, "dir/file.txt") as f:
        await f.setattr(SetAttr(
            valid=SetattrMask.ATIME | SetattrMask.ATIME_SET | SetattrMask.MTIME
            | SetattrMask.MTIME_SET,
            atime_sec=1_000_000, atime_nsec=5, mtime_sec=2_000_000, mtime_nsec=7))
        a = await f.getattr(0)
        assert (a.atime_sec, a.atime_nsec, a.mtime_sec, a.mtime_nsec) == (1_000_000, 5, 2_000_000, 7)
        await f.setattr(SetAttr(valid=SetattrMask.MTIME))  # "now"; atime untouched
        a = await f.getattr(0)
        assert abs(a.mtime_sec - time.time()) < 60
        assert (a.atime_sec, a.atime_nsec) == (1_000_000, 5)


@pytest.mark.needs("writable")
async def test_setattr_owner_to_self(root, backend):
    async with walked(root, "dir/file.txt") as f:
        a = await f.getattr(0)
        await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=a.uid, gid=a.gid))
        b = await f.getattr(0)
        assert (b.uid, b.gid) == (a.uid, a.gid)


@pytest.mark.needs("chown")
async def test_setattr_owner_to_others(root, backend):
    async with walked(root, "dir/file.txt") as f:
        await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=1234, gid=4321))
        a = await f.getattr(0)
        assert (a.uid, a.gid) == (1234, 4321)
        await f.setattr(SetAttr(valid=SetattrMask.GID, gid=99))
        assert ((await f.getattr(0)).uid, (await f.getattr(0)).gid) == (1234, 99)


async def test_statfs(root):
    s = await root.statfs()
    assert s.type == V9FS_MAGIC
    assert s.bsize > 0 and s.namelen > 0
    assert s.bfree <= s.blocks and s.ffree <= s.files or s.files == 0


@pytest.mark.needs("writable", "symlinks")
async def test_chmod_of_symlink_refused(root, backend):
    async with walked(root, "link") as link:
        with raises_errno(errno.EOPNOTSUPP, errno.EPERM):
            await link.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o600))
        # times on a symlink change the link, not its target
        await link.setattr(SetAttr(valid=SetattrMask.MTIME | SetattrMask.MTIME_SET,
                                   mtime_sec=12345))
        assert (await link.getattr(0)).mtime_sec == 12345
    async with walked(root, "dir/file.txt") as target:
        assert (await target.getattr(0)).mtime_sec != 12345


@pytest.mark.needs("writable")
async def test_setattr_ctime_alone_is_accepted(root, backend):
    """Linux sends ATTR_CTIME with other bits, sometimes alone (e.g. after a
    setxattr); there is nothing to set, and it must not fail."""
    async with walked(root, "dir/file.txt") as f:
        before = await f.getattr(0)
        await f.setattr(SetAttr(valid=SetattrMask.CTIME))
        after = await f.getattr(0)
        assert (after.size, after.mode, after.mtime_sec) == (before.size, before.mode, before.mtime_sec)
