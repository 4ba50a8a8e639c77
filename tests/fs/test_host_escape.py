"""Nothing outside the export is ever reached: "..", symlinks, swapped directories,
bad names, creates through dangling links (the lessons of CVE-2016-9602)."""

import errno
import os
import stat

from conformance.helpers import raises_errno, walk_to
from ninep.fs.backend import SetAttr
from ninep.protocol.constants import OpenFlags, QidType, SetattrMask


async def test_dotdot_cannot_climb_out(root):
    qids, new = await root.walk(["..", "..", "outside", "secret"])
    assert new is None and [q.path for q in qids] == [root.qid.path] * 2


async def test_symlink_to_outside_is_never_followed(root, export, outside):
    os.symlink(str(outside), export / "abs")
    os.symlink("../outside", export / "rel")
    for name in ("abs", "rel"):
        qids, link = await root.walk([name])
        assert qids[0].type == QidType.SYMLINK
        assert stat.S_ISLNK((await link.getattr(0)).mode)
        with raises_errno(errno.ELOOP):
            await link.open(OpenFlags.RDONLY)
        await link.close()
        qids, through = await root.walk([name, "secret"])
        assert through is None and len(qids) == 1


async def test_symlink_to_file_outside_not_opened_or_modified(root, export, outside):
    os.symlink(str(outside / "secret"), export / "s")
    before = os.stat(outside / "secret")
    link = await walk_to(root, "s")
    with raises_errno(errno.ELOOP):
        await link.open(OpenFlags.RDWR | OpenFlags.TRUNC)
    await link.setattr(SetAttr(valid=SetattrMask.MTIME | SetattrMask.MTIME_SET, mtime_sec=5))
    if os.geteuid() == 0:
        await link.setattr(SetAttr(valid=SetattrMask.UID, uid=4321))
    await link.close()
    after = os.stat(outside / "secret")
    assert (after.st_mtime_ns, after.st_uid, after.st_size) == \
        (before.st_mtime_ns, before.st_uid, before.st_size)
    assert os.lstat(export / "s").st_mtime == 5


async def test_create_through_dangling_link_does_not_create_outside(root, export, outside):
    os.symlink(str(outside / "planted"), export / "trap")
    with raises_errno(errno.ELOOP, errno.EEXIST):
        await root.create("trap", OpenFlags.RDWR, 0o644, 0)
    with raises_errno(errno.EEXIST):
        await root.create("trap", OpenFlags.RDWR | OpenFlags.EXCL, 0o644, 0)
    with raises_errno(errno.EEXIST):
        await root.mkdir("trap", 0o755, 0)
    assert not (outside / "planted").exists()


async def test_directory_swapped_for_symlink_between_requests(root, export, outside):
    held = await walk_to(root, "d")
    os.rename(export / "d", export / "d2")
    os.symlink(str(outside), export / "d")
    qids, new = await root.walk(["d", "secret"])
    assert new is None and len(qids) == 1
    made, _ = await held.create("new", OpenFlags.RDWR, 0o644, 0)  # lands in d2
    await made.close()
    assert (export / "d2" / "new").exists() and not (outside / "new").exists()
    with raises_errno(errno.ENOTDIR):
        sym = await walk_to(root, "d")
        try:
            await sym.mkdir("x", 0o755, 0)
        finally:
            await sym.close()
    await held.close()


async def test_remove_after_parent_swapped_hits_the_real_file(root, export, outside):
    (outside / "f").write_bytes(b"must survive")
    f = await walk_to(root, "d/f")
    os.rename(export / "d", export / "d2")
    os.symlink(str(outside), export / "d")
    await f.remove()
    await f.close()
    assert (outside / "f").read_bytes() == b"must survive"
    assert not (export / "d2" / "f").exists()


async def test_directory_moved_out_of_export_cannot_climb(root, export, outside):
    held = await walk_to(root, "d")
    os.rename(export / "d", outside / "moved")
    with raises_errno(errno.ENOENT):
        await held.walk([".."])
    await held.close()


async def test_bad_names_refused(root):
    for name in ("d/f", "x\0y", ""):
        with raises_errno(errno.EINVAL, errno.ENOENT):
            await root.walk([name])
    for name in ("..", ".", "a/b", "a\0"):
        with raises_errno(errno.EINVAL):
            await root.mkdir(name, 0o755, 0)
        with raises_errno(errno.EINVAL):
            await root.create(name, OpenFlags.RDWR, 0o644, 0)


async def test_hard_link_to_a_symlink_links_the_symlink(root, export, outside):
    os.symlink(str(outside / "secret"), export / "s")
    link = await walk_to(root, "s")
    await root.link(link, "hl")
    await link.close()
    assert stat.S_ISLNK(os.lstat(export / "hl").st_mode)
    assert os.stat(outside / "secret").st_nlink == 1


async def test_xattr_on_symlink_does_not_reach_target(root, export, outside):
    os.symlink(str(outside / "secret"), export / "s")
    link = await walk_to(root, "s")
    with raises_errno(errno.EPERM, errno.EOPNOTSUPP):
        await link.xattr_set("user.x", b"1", 0)
    await link.close()
    assert "user.x" not in os.listxattr(outside / "secret")
