"""The per-user model as root: each operation runs as the attaching user, ownership
and permission decisions are the host kernel's own, and the server's identity always
comes back."""

import errno
import os
import stat

import pytest
import trio

from conformance.helpers import raises_errno, walk_to
from ninep.fs import hostsys
from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import OpenFlags, SetattrMask

pytestmark = pytest.mark.root

USER = Credentials(1000, 1000, ())


@pytest.fixture(params=["worker", "inline"])
async def hostfs(request, export):
    """Both ways of switching identity: in a worker thread, or on the loop thread."""
    fs = HostFilesystem(str(export), identity="per-user",
                        identity_inline=request.param == "inline")
    yield fs
    await fs.aclose()
    # Whichever thread did the work, the event loop's thread is the server again.
    assert (hostsys.current_fsuid(), hostsys.current_fsgid()) == (0, os.getegid())


@pytest.fixture
async def user_root(hostfs):
    file = await hostfs.attach("", USER)
    yield file
    await file.close()


async def test_new_entries_belong_to_the_user(user_root, export):
    f, _ = await user_root.create("mine", OpenFlags.RDWR, 0o644, 1000)
    await f.close()
    await user_root.mkdir("dir", 0o755, 1000)
    await user_root.symlink("link", "mine", 1000)
    await user_root.mknod("fifo", stat.S_IFIFO | 0o644, 0, 0, 1000)
    for name in ("mine", "dir", "link", "fifo"):
        st = os.lstat(export / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name


async def test_foreign_gid_in_create_is_not_granted(user_root, export):
    f, _ = await user_root.create("mine", OpenFlags.RDWR, 0o644, 0)  # gid 0: not a member
    await f.close()
    assert os.lstat(export / "mine").st_gid == 1000


async def test_permission_denied_where_linux_would(user_root, export):
    (export / "private").mkdir(mode=0o700)
    (export / "private" / "inner").write_bytes(b"")
    (export / "rootfile").write_bytes(b"root's")
    os.chmod(export / "rootfile", 0o644)
    # Looking the directory up is allowed (as `stat private` is); going in is not.
    qids, new = await user_root.walk(["private", "inner"])
    assert new is None and len(qids) == 1
    private = await walk_to(user_root, "private")
    with raises_errno(errno.EACCES):
        await private.walk(["inner"])
    with raises_errno(errno.EACCES):
        await private.open(OpenFlags.RDONLY)
    await private.close()
    f = await walk_to(user_root, "rootfile")
    with raises_errno(errno.EACCES):
        await f.open(OpenFlags.WRONLY)
    with raises_errno(errno.EPERM):
        await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o666))
    with raises_errno(errno.EACCES):
        await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=0))
    with raises_errno(errno.EPERM):
        await f.setattr(SetAttr(valid=SetattrMask.UID, uid=1000))
    await f.open(OpenFlags.RDONLY)
    assert bytes(await f.read(0, 10)) == b"root's"
    await f.close()
    d = await walk_to(user_root, "d")  # root's 0755 directory
    with raises_errno(errno.EACCES):
        await d.mkdir("x", 0o755, 1000)
    with raises_errno(errno.EACCES):
        await d.create("x", OpenFlags.RDWR, 0o644, 1000)
    with raises_errno(errno.EACCES):
        await d.unlinkat("f", 0)
    await d.close()


async def test_own_files_can_be_chmodded_and_truncated(user_root, export):
    f, _ = await user_root.create("mine", OpenFlags.RDWR, 0o644, 1000)
    await f.write(0, memoryview(b"abcdef"))
    await f.setattr(SetAttr(valid=SetattrMask.MODE | SetattrMask.SIZE, mode=0o600, size=2))
    await f.close()
    st = os.lstat(export / "mine")
    assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o600, 2)


async def test_supplementary_groups_count(hostfs, export):
    shared = export / "shared"
    shared.mkdir()
    os.chown(shared, 0, 2000)
    os.chmod(shared, 0o070)
    member = await hostfs.attach("", Credentials(1000, 1000, (2000,)))
    stranger = await hostfs.attach("", Credentials(1000, 1000, ()))
    qids, inside = await member.walk(["shared"])
    await inside.mkdir("ok", 0o755, 1000)
    qids, outside_view = await stranger.walk(["shared"])
    with raises_errno(errno.EACCES):
        await outside_view.walk(["ok"])
    with raises_errno(errno.EACCES):
        await outside_view.mkdir("no", 0o755, 1000)
    ok = await walk_to(member, "shared/ok")
    assert (await ok.getattr(0)).uid == 1000
    await ok.close()
    for f in (inside, outside_view, member, stranger):
        await f.close()


async def test_identity_restored_and_root_unaffected(hostfs, user_root, export):
    (export / "private").mkdir(mode=0o700)
    (export / "private" / "inner").write_bytes(b"")
    admin = await hostfs.attach("", Credentials(0, 0, ()))
    private = await walk_to(user_root, "private")

    async def as_user():
        for _ in range(20):
            with raises_errno(errno.EACCES):
                await private.walk(["inner"])

    async def as_root():
        for i in range(20):
            await (await walk_to(admin, "private")).close()
            await admin.mkdir(f"r{i}", 0o755, 0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(as_user)
        nursery.start_soon(as_root)
    assert all(os.lstat(export / f"r{i}").st_uid == 0 for i in range(20))
    for _ in range(8):  # every cached worker thread is back to root
        assert await trio.to_thread.run_sync(hostsys.current_fsuid) == 0
        assert await trio.to_thread.run_sync(hostsys.current_fsgid) == os.getegid()
    await admin.close()
    await private.close()


async def test_squash_forces_the_identity(export):
    fs = HostFilesystem(str(export), squash=(1000, 1000))
    root = await fs.attach("", Credentials(0, 0, ()))
    await root.mkdir("squashed", 0o755, 0)
    await root.close()
    await fs.aclose()
    assert os.lstat(export / "squashed").st_uid == 1000


async def test_user_can_hard_link_own_file(user_root, export):
    f, _ = await user_root.create("mine", OpenFlags.RDWR, 0o644, 1000)
    await user_root.link(f, "alias")  # no CAP_DAC_READ_SEARCH: the /proc route
    await f.close()
    assert os.lstat(export / "alias").st_ino == os.lstat(export / "mine").st_ino


async def test_user_xattrs_follow_permissions(user_root, export):
    (export / "rootfile").write_bytes(b"")
    f, _ = await user_root.create("mine", OpenFlags.RDWR, 0o644, 1000)
    await f.xattr_set("user.tag", b"v", 0)
    assert await f.xattr_get("user.tag") == b"v"
    await f.close()
    theirs = await walk_to(user_root, "rootfile")
    with raises_errno(errno.EACCES, errno.EPERM):
        await theirs.xattr_set("user.tag", b"v", 0)
    with raises_errno(errno.EPERM):
        await theirs.xattr_set("trusted.tag", b"v", 0)
    await theirs.close()


async def test_user_cannot_make_device_nodes(user_root, export):
    with raises_errno(errno.EPERM):
        await user_root.mknod("null", stat.S_IFCHR | 0o666, 1, 3, 1000)
    assert not (export / "null").exists()


async def test_capabilities_restored_after_user_operations(user_root):
    before = hostsys.get_thread_caps()
    for _ in range(4):
        await (await walk_to(user_root, "d")).close()
        assert await trio.to_thread.run_sync(hostsys.get_thread_caps) == before
        assert hostsys.get_thread_caps() == before
    d = await walk_to(user_root, "d")
    with raises_errno(errno.EACCES):  # a failing operation restores too
        await d.mkdir("x", 0o755, 1000)
    await d.close()
    assert hostsys.get_thread_caps() == before


async def test_guest_root_with_another_group_keeps_root_powers(hostfs, export):
    (export / "private").mkdir(mode=0o700)
    os.chown(export / "private", 1234, 1234)
    root_other_group = await hostfs.attach("", Credentials(0, 50, ()))
    made, _ = await root_other_group.create("g", OpenFlags.RDWR, 0o644, 50)
    await made.setattr(SetAttr(valid=SetattrMask.UID, uid=1000))  # CAP_CHOWN kept
    await made.close()
    inside = await walk_to(root_other_group, "private")
    await inside.mkdir("x", 0o755, 50)  # CAP_DAC_OVERRIDE kept
    await inside.close()
    await root_other_group.close()
    st = os.lstat(export / "g")
    assert (st.st_uid, st.st_gid) == (1000, 50)
