"""The mapped model: the guest's ownership, whole mode and device numbers live in
user.virtfs.* xattrs laid out as QEMU's security_model=mapped-xattr lays them out; the
host files stay the server's, and nothing special is ever made or opened on the host."""

import errno
import os
import stat
import struct
import time

import pytest

from conformance.helpers import list_dir, raises_errno, walk_to, walked
from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import DirentType, OpenFlags, QidType, SetattrMask

GUEST = Credentials(1000, None, ())


def le32(value: int) -> bytes:
    return struct.pack("<I", value)


async def dirent_types(directory) -> dict:
    async with walked(directory, "", OpenFlags.RDONLY) as opened:
        return {d.name: d.type for d in await list_dir(opened)}


def host_xattrs(path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


@pytest.fixture
def export(export):
    try:
        os.setxattr(export, "user.probe", b"1")
        os.removexattr(export, "user.probe")
    except OSError:
        pytest.skip("the scratch filesystem has no user xattrs")
    return export


@pytest.fixture
async def fs(export):
    fs = HostFilesystem(str(export), identity="mapped")
    yield fs
    await fs.aclose()


@pytest.fixture
async def guest(fs):
    file = await fs.attach("", GUEST)
    yield file
    await file.close()


async def test_new_file_xattr_layout_is_qemus(guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o4750, 1001)
    await f.close()
    path = export / "file"
    assert host_xattrs(path) == {"user.virtfs.uid": le32(1000), "user.virtfs.gid": le32(1001),
                                 "user.virtfs.mode": le32(stat.S_IFREG | 0o4750)}
    st = os.lstat(path)
    # The host file stays the server's, with a mode the server can use.
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
    attr = await (await walk_to(guest, "file")).getattr(0)
    assert (attr.mode, attr.uid, attr.gid) == (stat.S_IFREG | 0o4750, 1000, 1001)


async def test_group_of_new_entries_is_the_message_gid(guest, export):
    await guest.mkdir("setgid", 0o2775, 4321)
    inside = await walk_to(guest, "setgid")
    assert (await inside.getattr(0)).mode == stat.S_IFDIR | 0o2775
    # In a set-gid directory the guest kernel sends the directory's gid.
    f, _ = await inside.create("file", OpenFlags.RDWR, 0o644, 4321)
    await f.close()
    await inside.mkdir("sub", 0o2755, 4321)
    await inside.close()
    assert host_xattrs(export / "setgid/file")["user.virtfs.gid"] == le32(4321)
    assert host_xattrs(export / "setgid/sub")["user.virtfs.mode"] == le32(stat.S_IFDIR | 0o2755)
    assert stat.S_IMODE(os.lstat(export / "setgid/sub").st_mode) == 0o700


async def test_special_files_are_plain_host_files(guest, export):
    await guest.mknod("chr", stat.S_IFCHR | 0o620, 4, 64, 5)
    await guest.mknod("blk", stat.S_IFBLK | 0o660, 8, 1, 6)
    await guest.mknod("fifo", stat.S_IFIFO | 0o644, 0, 0, 1000)
    await guest.mknod("sock", stat.S_IFSOCK | 0o755, 0, 0, 1000)
    expect = {"chr": (stat.S_IFCHR | 0o620, os.makedev(4, 64), 5),
              "blk": (stat.S_IFBLK | 0o660, os.makedev(8, 1), 6),
              "fifo": (stat.S_IFIFO | 0o644, 0, 1000),
              "sock": (stat.S_IFSOCK | 0o755, 0, 1000)}
    for name, (mode, rdev, gid) in expect.items():
        st = os.lstat(export / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, name
        xattrs = host_xattrs(export / name)
        assert xattrs["user.virtfs.mode"] == le32(mode)
        assert xattrs["user.virtfs.rdev"] == struct.pack("<Q", rdev)
        node = await walk_to(guest, name)
        attr = await node.getattr(0)
        assert (attr.mode, attr.rdev, attr.uid, attr.gid) == (mode, rdev, 1000, gid), name
        for flags in (OpenFlags.RDONLY, OpenFlags.WRONLY, OpenFlags.RDWR):
            with raises_errno(errno.ENXIO):  # a "device" here is never I/O on the host
                await node.open(flags)
        await node.close()
    types = await dirent_types(guest)
    assert (types["chr"], types["blk"], types["fifo"], types["sock"]) == (
        DirentType.CHR, DirentType.BLK, DirentType.FIFO, DirentType.SOCK)


async def test_symlinks_are_files_holding_the_target(guest, export):
    qid = await guest.symlink("link", "../etc/passwd", 1000)
    assert qid.type == QidType.SYMLINK
    st = os.lstat(export / "link")
    assert stat.S_ISREG(st.st_mode)
    assert (export / "link").read_bytes() == b"../etc/passwd"
    assert host_xattrs(export / "link")["user.virtfs.mode"] == le32(stat.S_IFLNK | 0o777)
    link = await walk_to(guest, "link")
    assert await link.readlink() == "../etc/passwd"
    attr = await link.getattr(0)
    assert attr.mode == stat.S_IFLNK | 0o777 and attr.qid.type == QidType.SYMLINK
    with raises_errno(errno.ELOOP):
        await link.open(OpenFlags.RDONLY)
    await link.close()
    assert (await dirent_types(guest))["link"] == DirentType.LNK


async def test_chown_chmod_anything_without_host_root(guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o644, 1000)
    await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=0, gid=4343))
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o6711))
    attr = await f.getattr(0)
    assert (attr.mode, attr.uid, attr.gid) == (stat.S_IFREG | 0o6711, 0, 4343)
    await f.close()
    assert host_xattrs(export / "file") == {
        "user.virtfs.uid": le32(0), "user.virtfs.gid": le32(4343),
        "user.virtfs.mode": le32(stat.S_IFREG | 0o6711)}
    assert stat.S_IMODE(os.lstat(export / "file").st_mode) == 0o600


async def test_setid_cleared_through_a_non_owners_fid(fs, guest):
    f, _ = await guest.create("setid", OpenFlags.RDWR, 0o6777, 1000)
    await f.close()
    other = await fs.attach("", Credentials(2000, None, ()))
    f = await walk_to(other, "setid")
    await f.open(OpenFlags.WRONLY)
    await f.write(0, memoryview(b"x"))
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o777))
    attr = await f.getattr(0)
    assert (attr.mode, attr.uid) == (stat.S_IFREG | 0o777, 1000)
    await f.close()
    await other.close()


async def test_setattr_with_only_ctime_moves_ctime(guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o644, 1000)
    before = await f.getattr(0)
    time.sleep(0.02)
    await f.setattr(SetAttr(valid=SetattrMask.CTIME))
    after = await f.getattr(0)
    await f.close()
    assert (after.ctime_sec, after.ctime_nsec) > (before.ctime_sec, before.ctime_nsec)
    assert (after.mtime_sec, after.mtime_nsec) == (before.mtime_sec, before.mtime_nsec)


async def test_reserved_xattrs_are_invisible_and_unwritable(guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o644, 1000)
    await f.xattr_set("user.note", b"ok", 0)
    assert sorted(await f.xattr_list()) == ["user.note"]
    for name in ("user.virtfs.uid", "user.virtfs.mode", "user.virtfs.anything"):
        with raises_errno(errno.ENODATA):
            await f.xattr_get(name)
        with raises_errno(errno.EACCES):
            await f.xattr_set(name, le32(0), 0)
        with raises_errno(errno.EACCES):
            await f.xattr_remove(name)
    await f.close()
    assert host_xattrs(export / "file")["user.virtfs.uid"] == le32(1000)


async def test_posix_acls_are_remapped_as_qemu_does(guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o644, 1000)
    acl = bytes.fromhex("02000000" "0100060000000000" "04000400ffffffff" "20000400ffffffff")
    await f.xattr_set("system.posix_acl_access", acl, 0)
    assert await f.xattr_get("system.posix_acl_access") == acl
    assert "system.posix_acl_access" in await f.xattr_list()
    await f.close()
    on_host = host_xattrs(export / "file")
    assert on_host["user.virtfs.system.posix_acl_access"] == acl
    with pytest.raises(OSError):  # the host kernel never enforces the guest's ACL
        os.getxattr(export / "file", "system.posix_acl_access")


async def test_files_without_xattrs_show_the_mapped_owner(export):
    (export / "plain").write_bytes(b"")
    os.chmod(export / "plain", 0o640)
    for owner in ((0, 0), (7, 8)):
        fs = HostFilesystem(str(export), identity="mapped", mapped_owner=owner)
        root = await fs.attach("", GUEST)
        attr = await (await walk_to(root, "plain")).getattr(0)
        assert (attr.uid, attr.gid, attr.mode) == (*owner, stat.S_IFREG | 0o640)
        await fs.aclose()


async def test_a_tree_written_by_qemu_reads_the_same(guest, export):
    """Values as QEMU writes them (local_set_xattrat): mode alone, ids alone."""
    path = export / "from-qemu"
    path.write_bytes(b"")
    os.setxattr(path, "user.virtfs.mode", le32(stat.S_IFLNK | 0o777))
    path.write_bytes(b"target")
    os.setxattr(path, "user.virtfs.uid", le32(33))
    link = await walk_to(guest, "from-qemu")
    attr = await link.getattr(0)
    assert (attr.mode, attr.uid, attr.gid) == (stat.S_IFLNK | 0o777, 33, 0)
    assert await link.readlink() == "target"
    await link.close()


async def test_host_type_wins_over_a_forged_directory_mode(guest, export):
    (export / "notdir").write_bytes(b"")
    os.setxattr(export / "notdir", "user.virtfs.mode", le32(stat.S_IFDIR | 0o755))
    node = await walk_to(guest, "notdir")
    assert (await node.getattr(0)).mode == stat.S_IFREG | 0o755
    await node.close()


async def test_no_host_device_is_ever_made(guest, export):
    await guest.mknod("null", stat.S_IFCHR | 0o666, 1, 3, 0)
    await guest.mknod("disk", stat.S_IFBLK | 0o666, 8, 0, 0)
    for entry in os.scandir(export):
        st = os.lstat(entry.path)
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), entry.name


def test_default_for_a_non_root_server_is_mapped(export, monkeypatch):
    from ninep.fs import hostmodel
    monkeypatch.setattr(hostmodel.os, "geteuid", lambda: 1000)
    assert hostmodel.default_model() == "mapped"
    with pytest.raises(ValueError, match="passthrough needs a root server"):
        hostmodel.check_model("passthrough", None)


async def test_cached_ownership_follows_any_xattr_change(fs, guest, export):
    f, _ = await guest.create("file", OpenFlags.RDWR, 0o644, 1000)
    fs.mapped_cache.settled_ns = 0  # cache even what just changed
    assert (await f.getattr(0)).uid == 1000
    assert (await f.getattr(0)).uid == 1000  # served from the cache now
    time.sleep(0.01)
    os.setxattr(export / "file", "user.virtfs.uid", le32(4242))  # QEMU, or a host tool
    assert (await f.getattr(0)).uid == 4242  # the xattr change moved the ctime
    await f.setattr(SetAttr(valid=SetattrMask.GID, gid=77))
    attr = await f.getattr(0)
    assert (attr.uid, attr.gid) == (4242, 77)
    await f.close()


async def test_without_user_xattrs_mapped_is_refused_or_not_defaulted(export, monkeypatch):
    from ninep.fs import hostmodel
    monkeypatch.setattr(hostmodel, "has_user_xattrs", lambda fd: False)
    with pytest.raises(ValueError, match="needs user.. xattrs"):
        HostFilesystem(str(export), identity="mapped")
    monkeypatch.setattr(hostmodel.os, "geteuid", lambda: 1000)  # default would be mapped
    fs = HostFilesystem(str(export))
    assert fs.identity == "per-user" and not fs.mapped
    await fs.aclose()


def test_user_xattr_probe_reads_only(export):
    from ninep.fs import hostmodel
    fd = os.open(export, os.O_PATH | os.O_DIRECTORY)
    try:
        before = os.stat(export).st_ctime_ns
        assert hostmodel.has_user_xattrs(fd)
        assert os.stat(export).st_ctime_ns == before and not os.listxattr(export)
    finally:
        os.close(fd)
    fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY)  # a filesystem without user.*
    try:
        assert not hostmodel.has_user_xattrs(fd)
    finally:
        os.close(fd)
