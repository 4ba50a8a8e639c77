"""The passthrough model (server is root): the guest kernel has checked permissions, the
server applies the ownership each request carries and never consults the host's user
database or switches identity."""

import errno
import os
import socket
import stat
import time

import pytest

from conformance.helpers import raises_errno, walk_to
from ninep.fs import hostsys
from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import OpenFlags, SetattrMask

pytestmark = pytest.mark.root

# uids/gids no host user database knows: only the guest knows these users' groups.
CREATOR = Credentials(65533, None, ())


@pytest.fixture
async def fs(export):
    fs = HostFilesystem(str(export), identity="passthrough")
    assert fs.identity == "passthrough"
    yield fs
    await fs.aclose()


@pytest.fixture
async def creator(fs):
    file = await fs.attach("", CREATOR)
    yield file
    await file.close()


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


async def test_default_for_root_is_passthrough(export):
    fs = HostFilesystem(str(export))
    assert fs.identity == "passthrough"
    await fs.aclose()


async def test_new_entries_get_the_attach_uid_and_the_message_gid(creator, export):
    f, _ = await creator.create("file", OpenFlags.RDWR, 0o640, 65532)
    await f.close()
    await creator.mkdir("dir", 0o750, 65532)
    await creator.symlink("link", "file", 65532)
    await creator.mknod("fifo", stat.S_IFIFO | 0o600, 0, 0, 65532)
    for name in ("file", "dir", "link", "fifo"):
        assert owner(export / name) == (65533, 65532), name
    assert stat.S_IMODE(os.lstat(export / "file").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(export / "dir").st_mode) == 0o750


async def test_setgid_directory_group_and_bit_as_the_guest_computed(creator, export):
    shared = export / "shared"
    shared.mkdir()
    os.chown(shared, 0, 4321)
    os.chmod(shared, 0o2777)
    inside = await walk_to(creator, "shared")
    # v9fs sends the directory's gid for entries of a set-gid directory, and adds
    # S_ISGID to a new subdirectory's mode (v9fs_get_fsgid_for_create, mkdir_dotl).
    f, _ = await inside.create("file", OpenFlags.RDWR, 0o644, 4321)
    await f.close()
    await inside.mkdir("sub", 0o2755, 4321)
    await inside.close()
    assert owner(shared / "file") == (65533, 4321)
    st = os.lstat(shared / "sub")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65533, 4321, 0o2755)


async def test_no_host_permission_check_the_guest_already_did_it(creator, export):
    private = export / "private"
    private.mkdir(mode=0o700)
    (private / "inner").write_bytes(b"root only")
    os.chmod(private / "inner", 0o600)
    inner = await walk_to(creator, "private/inner")  # per-user would say EACCES
    await inner.open(OpenFlags.RDWR)
    assert bytes(await inner.read(0, 64)) == b"root only"
    await inner.close()
    # ...and the server's own identity never changed.
    assert (hostsys.current_fsuid(), hostsys.current_fsgid()) == (0, os.getegid())


async def test_chown_to_any_ids_the_guest_allowed(creator, export):
    f, _ = await creator.create("file", OpenFlags.RDWR, 0o644, 65532)
    await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=4242, gid=4343))
    assert owner(export / "file") == (4242, 4343)
    await f.setattr(SetAttr(valid=SetattrMask.GID, gid=7))
    assert owner(export / "file") == (4242, 7)
    await f.close()
    await creator.symlink("link", "file", 65532)
    link = await walk_to(creator, "link")
    await link.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=11, gid=12))
    await link.close()
    assert owner(export / "link") == (11, 12)  # the link itself, not its target
    assert owner(export / "file") == (4242, 7)


async def test_setid_bits_cleared_through_a_non_owners_fid(fs, export):
    (export / "setid").write_bytes(b"#!/bin/sh\n")
    os.chown(export / "setid", 1000, 1000)
    os.chmod(export / "setid", 0o6777)
    writer = await fs.attach("", Credentials(2000, None, ()))
    f = await walk_to(writer, "setid")
    await f.open(OpenFlags.WRONLY)
    await f.write(0, memoryview(b"#"))
    # What the guest kernel sends after a non-owner's write (file_remove_privs).
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o0777))
    await f.close()
    await writer.close()
    st = os.lstat(export / "setid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o777, 1000, 1000)


async def test_chown_then_mode_in_one_setattr_keeps_the_mode_asked_for(creator, export):
    f, _ = await creator.create("file", OpenFlags.RDWR, 0o644, 65532)
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o4755))
    # The guest's chown: new owner plus the mode it computed (set-uid kept here, as
    # a root caller with CAP_FSETID might): the explicit mode wins over the host's
    # clearing of set-id bits on chown.
    await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.MODE, uid=55, mode=0o4755))
    await f.close()
    st = os.lstat(export / "file")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (55, 0o4755)


async def test_setattr_with_only_ctime_moves_ctime(creator, export):
    f, _ = await creator.create("file", OpenFlags.RDWR, 0o644, 65532)
    before = os.lstat(export / "file")
    time.sleep(0.02)
    await f.setattr(SetAttr(valid=SetattrMask.CTIME))  # the guest's chown(f, -1, -1)
    await f.close()
    after = os.lstat(export / "file")
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns
    assert (after.st_uid, after.st_gid) == (65533, 65532)


async def test_special_nodes_are_real_and_never_opened(creator, export):
    await creator.mknod("chr", stat.S_IFCHR | 0o620, 1, 3, 5)
    await creator.mknod("blk", stat.S_IFBLK | 0o660, 7, 0, 6)
    await creator.mknod("fifo", stat.S_IFIFO | 0o644, 0, 0, 65532)
    await creator.mknod("sock", stat.S_IFSOCK | 0o755, 0, 0, 65532)
    expect = {"chr": (stat.S_IFCHR, 0o620, os.makedev(1, 3), 5),
              "blk": (stat.S_IFBLK, 0o660, os.makedev(7, 0), 6),
              "fifo": (stat.S_IFIFO, 0o644, 0, 65532),
              "sock": (stat.S_IFSOCK, 0o755, 0, 65532)}
    for name, (fmt, perms, rdev, gid) in expect.items():
        st = os.lstat(export / name)
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == (fmt, perms), name
        assert (st.st_uid, st.st_gid) == (65533, gid), name
        if rdev:
            assert st.st_rdev == rdev
        node = await walk_to(creator, name)
        attr = await node.getattr(0)
        assert (attr.mode, attr.uid, attr.gid) == (st.st_mode, 65533, gid)
        for flags in (OpenFlags.RDONLY, OpenFlags.RDWR):
            with raises_errno(errno.ENXIO):
                await node.open(flags)
        await node.close()


async def test_symlinks_on_the_host_are_still_not_followed(creator, export, outside):
    os.symlink(outside, export / "escape")
    qids, new = await creator.walk(["escape", "secret"])
    assert new is None and len(qids) == 1  # stopped at the link itself
    with raises_errno(errno.EEXIST):
        await creator.create("escape", OpenFlags.RDWR | OpenFlags.EXCL, 0o644, 0)
    link = await walk_to(creator, "escape")
    with raises_errno(errno.ELOOP):
        await link.open(OpenFlags.RDONLY)
    await link.setattr(SetAttr(valid=SetattrMask.UID, uid=77))
    await link.close()
    assert os.lstat(outside).st_uid == 0  # the chown hit the link, not the target


async def test_socket_made_on_the_host_shows_as_is(creator, export):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(export / "hostsock"))
        node = await walk_to(creator, "hostsock")
        assert stat.S_ISSOCK((await node.getattr(0)).mode)
        await node.close()
