"""create, mkdir, symlink, mknod, link, renameat, rename, unlinkat, remove."""

import errno
import stat

import pytest

from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags, QidType

from .helpers import list_dir, raises_errno, walk_to, walked


async def names_in(root, path):
    async with walked(root, path, OpenFlags.RDONLY) as d:
        return {e.name for e in await list_dir(d)} - {".", ".."}


@pytest.mark.needs("writable")
async def test_create_opens_the_new_file(root, backend):
    d = await walk_to(root, "dir")
    new, iounit = await d.create("made", OpenFlags.RDWR, 0o640, 0)
    assert iounit >= 0 and new.qid.type == QidType.FILE
    assert await new.write(0, memoryview(b"abc")) == 3
    assert bytes(await new.read(0, 10)) == b"abc"
    assert stat.S_IMODE((await new.getattr(0)).mode) == 0o640
    await new.close()
    assert (await d.getattr(0)).qid.type & QidType.DIR  # d unchanged
    await d.close()
    assert "made" in await names_in(root, "dir")


@pytest.mark.needs("writable")
async def test_create_excl_on_existing_is_eexist(root, backend):
    d = await walk_to(root, "dir")
    with raises_errno(errno.EEXIST):
        await d.create("file.txt", OpenFlags.RDWR | OpenFlags.EXCL, 0o644, 0)
    await d.close()


@pytest.mark.needs("writable")
async def test_create_without_excl_opens_existing(root, backend):
    d = await walk_to(root, "dir")
    f, _ = await d.create("file.txt", OpenFlags.RDWR, 0o600, 0)
    assert bytes(await f.read(0, 5)) == b"hello"
    await f.close()
    await d.close()


@pytest.mark.needs("writable")
async def test_mkdir_and_rmdir(root, backend):
    qid = await root.mkdir("newdir", 0o750, 0)
    assert qid.type & QidType.DIR
    d = await walk_to(root, "newdir")
    assert d.qid.path == qid.path
    assert stat.S_IMODE((await d.getattr(0)).mode) == 0o750
    await d.close()
    with raises_errno(errno.EEXIST):
        await root.mkdir("newdir", 0o750, 0)
    await root.unlinkat("newdir", AT_REMOVEDIR)
    assert "newdir" not in await names_in(root, "")


@pytest.mark.needs("writable")
async def test_unlinkat_rules(root, backend):
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        await root.unlinkat("dir", AT_REMOVEDIR)
    with raises_errno(errno.EISDIR, errno.EPERM):
        await root.unlinkat("emptydir", 0)
    with raises_errno(errno.ENOTDIR):
        await root.unlinkat("empty", AT_REMOVEDIR)
    await root.unlinkat("empty", 0)
    with raises_errno(errno.ENOENT):
        await root.unlinkat("empty", 0)


@pytest.mark.needs("writable", "symlinks")
async def test_symlink_and_readlink(root, backend):
    qid = await root.symlink("sl", "some/where/../else", 0)
    assert qid.type == QidType.SYMLINK
    async with walked(root, "sl") as link:
        assert await link.readlink() == "some/where/../else"
        assert link.qid.path == qid.path


@pytest.mark.needs("writable", "mknod")
async def test_mknod_fifo(root, backend):
    await root.mknod("fifo", stat.S_IFIFO | 0o644, 0, 0, 0)
    async with walked(root, "fifo") as f:
        assert stat.S_ISFIFO((await f.getattr(0)).mode)


@pytest.mark.needs("writable", "hardlinks")
async def test_hard_link(root, backend):
    target = await walk_to(root, "dir/file.txt")
    await root.link(target, "hard")
    assert (await target.getattr(0)).nlink == 2
    async with walked(root, "hard") as h:
        assert h.qid.path == target.qid.path
    await target.close()


@pytest.mark.needs("writable")
async def test_renameat_moves_between_directories(root, backend):
    d = await walk_to(root, "dir")
    sub = await walk_to(root, "dir/sub")
    await d.renameat("file.txt", sub, "moved.txt")
    assert "moved.txt" in await names_in(root, "dir/sub")
    assert "file.txt" not in await names_in(root, "dir")
    with raises_errno(errno.ENOENT):
        await d.renameat("file.txt", sub, "again")
    await d.close()
    await sub.close()


@pytest.mark.needs("writable")
async def test_rename_fid_then_operate_on_it(root, backend):
    f = await walk_to(root, "dir/file.txt")
    sub = await walk_to(root, "dir/sub")
    await f.rename(sub, "renamed")
    assert "renamed" in await names_in(root, "dir/sub")
    await f.rename(root, "top")  # the fid knows where it lives now
    assert "top" in await names_in(root, "")
    await f.remove()
    assert "top" not in await names_in(root, "")
    await f.close()
    await sub.close()


@pytest.mark.needs("writable")
async def test_remove_file_and_empty_directory(root, backend):
    f = await walk_to(root, "empty")
    await f.remove()
    await f.close()
    d = await walk_to(root, "emptydir")
    await d.remove()
    await d.close()
    assert {"empty", "emptydir"}.isdisjoint(await names_in(root, ""))


@pytest.mark.needs("writable")
async def test_remove_nonempty_directory_fails(root, backend):
    d = await walk_to(root, "dir")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        await d.remove()
    await d.close()
