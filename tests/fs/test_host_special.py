"""Host-only behaviour: special files never opened, unlinked files stay usable,
readdir cookies, umask, gid, statfs magic, ACL passthrough, no fd leaks."""

import errno
import os
import shutil
import socket
import stat
import subprocess

import pytest

from conformance.helpers import list_dir, raises_errno, read_all, walk_to, walked
from ninep.fs import host as host_module
from ninep.fs import hostsys
from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags, SetattrMask, V9FS_MAGIC


async def test_fifo_is_not_opened(root, export):
    os.mkfifo(export / "fifo")
    f = await walk_to(root, "fifo")
    # O_RDWR: were the FIFO opened after all, this would not block (O_RDONLY would
    # hang the event loop for good) and the test fails instead.
    with raises_errno(errno.ENXIO):
        await f.open(OpenFlags.RDWR)
    await f.close()


async def test_socket_is_not_opened(root, export):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(export / "sock"))
        f = await walk_to(root, "sock")
        with raises_errno(errno.ENXIO):
            await f.open(OpenFlags.RDWR)
        await f.close()


@pytest.mark.root
async def test_device_node_made_but_never_opened(root, export):
    await root.mknod("null", stat.S_IFCHR | 0o666, 1, 3, 0)
    assert os.lstat(export / "null").st_rdev == os.makedev(1, 3)
    async with walked(root, "null") as dev:
        assert (await dev.getattr(0)).rdev == os.makedev(1, 3)
        for flags in (OpenFlags.RDONLY, OpenFlags.WRONLY):
            with raises_errno(errno.ENXIO):
                await dev.open(flags)


async def test_mknod_refuses_directories_via_mknod(root):
    with raises_errno(errno.EINVAL):
        await root.mknod("x", stat.S_IFDIR | 0o755, 0, 0, 0)


async def test_unlinked_open_file_keeps_working(root, export):
    f, _ = await root.create("tmp", OpenFlags.RDWR, 0o644, 0)
    await f.write(0, memoryview(b"0123456789"))
    os.unlink(export / "tmp")
    assert (await f.getattr(0)).nlink == 0
    await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=4))
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o000))  # then still writable fd
    await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=6))
    a = await f.getattr(0)
    assert (a.size, stat.S_IMODE(a.mode)) == (6, 0)
    assert bytes(await f.read(0, 100)) == b"0123\0\0"
    await f.close()


async def test_unlinked_unopened_file_keeps_metadata(root, export):
    f = await walk_to(root, "d/f")
    os.unlink(export / "d" / "f")
    await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o600))
    await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=2))
    a = await f.getattr(0)
    assert (stat.S_IMODE(a.mode), a.size, a.nlink) == (0o600, 2, 0)
    with raises_errno(errno.ENOENT):
        await f.remove()
    await f.close()


async def test_readdir_cookies_survive_changes(root, export):
    for i in range(300):
        (export / "d" / f"n{i:03}").write_bytes(b"")
    async with walked(root, "d", OpenFlags.RDONLY) as d:
        first = list(await d.readdir(0, 2000))
        assert 10 < len(first) < 300
        for i in range(0, 300, 2):  # delete half meanwhile
            os.unlink(export / "d" / f"n{i:03}")
        rest, offset = [], first[-1].offset
        while batch := list(await d.readdir(offset, 2000)):
            rest += batch
            offset = batch[-1].offset
    names = [e.name for e in first + rest]
    assert len(names) == len(set(names)), "an entry came back twice"
    survivors = {f"n{i:03}" for i in range(1, 300, 2)}
    assert survivors <= set(names)


async def test_umask_not_applied_twice(root, export):
    old = os.umask(0o077)
    try:
        f, _ = await root.create("c", OpenFlags.RDWR, 0o664, 0)
        await f.close()
        await root.mkdir("m", 0o775, 0)
        await root.mknod("p", stat.S_IFIFO | 0o666, 0, 0, 0)
    finally:
        os.umask(old)
    assert [stat.S_IMODE(os.lstat(export / n).st_mode) for n in "cmp"] == [0o664, 0o775, 0o666]


@pytest.mark.root
async def test_gid_from_message_is_applied_as_root(root, export):
    f, _ = await root.create("c", OpenFlags.RDWR, 0o644, 4242)
    await f.close()
    await root.mkdir("m", 0o755, 4243)
    await root.symlink("s", "target", 4244)
    await root.mknod("p", stat.S_IFIFO | 0o644, 0, 0, 4245)
    assert [os.lstat(export / n).st_gid for n in "cmsp"] == [4242, 4243, 4244, 4245]


async def test_statfs_magic_passthrough(export):
    plain = HostFilesystem(str(export))
    passed = HostFilesystem(str(export), pass_statfs=True)
    try:
        r1 = await plain.attach("", Credentials(None, None))
        r2 = await passed.attach("", Credentials(None, None))
        fd = os.open(export, os.O_RDONLY)
        try:
            host_magic = hostsys.fstatfs_type(fd)
        finally:
            os.close(fd)
        assert (await r1.statfs()).type == V9FS_MAGIC
        assert (await r2.statfs()).type == host_magic != V9FS_MAGIC
        assert (await r2.statfs()).blocks == os.statvfs(export).f_blocks
        await r1.close()
        await r2.close()
    finally:
        await plain.aclose()
        await passed.aclose()


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="acl tools not installed")
async def test_posix_acl_xattrs_pass_through(root, export):
    (export / "a").write_bytes(b"")
    (export / "b").write_bytes(b"")
    subprocess.run(["setfacl", "-m", "u:1000:rw", str(export / "a")], check=True)
    async with walked(root, "a") as a:
        assert "system.posix_acl_access" in await a.xattr_list()
        blob = await a.xattr_get("system.posix_acl_access")
    async with walked(root, "b") as b:
        await b.xattr_set("system.posix_acl_access", blob, 0)
    out = subprocess.run(["getfacl", "-cn", str(export / "b")], check=True,
                         capture_output=True, text=True).stdout
    assert "user:1000:rw-" in out


async def test_large_reads_and_writes_via_worker_thread(root, export):
    big = os.urandom(host_module.THREAD_IO_MIN * 2 + 123)
    f, _ = await root.create("big", OpenFlags.RDWR, 0o644, 0)
    assert await f.write(0, memoryview(big)) == len(big)
    assert bytes(await f.read(0, len(big))) == big
    assert await read_all(f, 4096) == big
    await f.fsync(True)
    await f.close()


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_fd_leaks(root):
    before = open_fd_count()
    for _ in range(20):
        qids, f = await root.walk(["d", "f"])
        clone = await f.clone()
        await f.open(OpenFlags.RDONLY)
        await clone.close()
        await f.close()
        qids, partial = await root.walk(["d", "missing"])
        d = await walk_to(root, "d")
        await d.open(OpenFlags.RDONLY)
        await list_dir(d)
        sub = await walk_to(d, "..")
        await sub.close()
        await d.close()
        made, _ = await root.create("x", OpenFlags.RDWR, 0o644, 0)
        await made.remove()
        await made.close()
        await root.mkdir("y", 0o755, 0)
        await root.unlinkat("y", AT_REMOVEDIR)
    assert open_fd_count() == before


async def test_uncached_read_goes_to_a_worker_and_is_complete(root, export, monkeypatch):
    data = os.urandom(512 * 1024)
    (export / "cold").write_bytes(data)
    fd = os.open(export / "cold", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evict it from the page cache
    finally:
        os.close(fd)
    hops = []
    real = host_module.HostFile._threaded_io

    async def counting(self, fn, *args):
        hops.append(fn)
        return await real(self, fn, *args)

    monkeypatch.setattr(host_module.HostFile, "_threaded_io", counting)
    async with walked(root, "cold", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, len(data))) == data
        hops_cold = len(hops)
        assert bytes(await f.read(0, len(data))) == data  # cached now: inline
        assert bytes(await f.read(len(data) - 10, 100)) == data[-10:]  # short at EOF: inline
    if hops_cold == 0:
        pytest.skip("page cache could not be dropped for the file here")
    assert len(hops) == hops_cold


async def test_read_without_nowait_support_falls_back(root, export, monkeypatch):
    (export / "f").write_bytes(b"x" * 5000)

    def no_nowait(*args):
        raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

    monkeypatch.setattr(os, "preadv", no_nowait)
    async with walked(root, "f", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 10000)) == b"x" * 5000
        assert bytes(await f.read(4990, 100)) == b"x" * 10


async def test_dt_unknown_entries_are_lstat_ed(root, export, monkeypatch):
    os.symlink("d", export / "ln")
    real = hostsys.read_dir_chunk

    def without_types(fd, cookie, bufsize):
        return [(ino, next_cookie, 0, name) for ino, next_cookie, _, name in real(fd, cookie, bufsize)]

    monkeypatch.setattr(hostsys, "read_dir_chunk", without_types)
    async with walked(root, "", OpenFlags.RDONLY) as d:
        types = {e.name: e.type for e in await list_dir(d)}
    assert (types["d"], types["ln"]) == (4, 10)


async def test_readdir_qids_match_walk_for_every_entry(root, export):
    (export / "file").write_bytes(b"")
    os.symlink("file", export / "sym")
    async with walked(root, "", OpenFlags.RDONLY) as d:
        entries = await list_dir(d)
    for e in entries:
        if e.name in (".", ".."):
            continue
        f = await walk_to(root, e.name)
        assert (e.qid.path, e.qid.type) == (f.qid.path, f.qid.type), e.name
        await f.close()


async def test_offsets_beyond_signed_64_bit_are_einval(root):
    f, _ = await root.create("o", OpenFlags.RDWR, 0o644, 0)
    for op in (lambda: f.read(2**64 - 1, 10), lambda: f.write(2**63, memoryview(b"x")),
               lambda: f.setattr(SetAttr(valid=SetattrMask.SIZE, size=2**64 - 1))):
        with raises_errno(errno.EINVAL):
            await op()
    await f.close()


async def test_bad_xattr_names_are_einval(root):
    async with walked(root, "d/f") as f:
        for name in ("", "user.a\0b"):
            with raises_errno(errno.EINVAL):
                await f.xattr_get(name)
            with raises_errno(errno.EINVAL):
                await f.xattr_set(name, b"v", 0)


async def test_sync_writes_wait_in_a_worker(root, monkeypatch):
    hops = []
    real = host_module.HostFile._threaded_io

    async def counting(self, fn, *args):
        hops.append(fn)
        return await real(self, fn, *args)

    monkeypatch.setattr(host_module.HostFile, "_threaded_io", counting)
    plain, _ = await root.create("plain", OpenFlags.RDWR, 0o644, 0)
    await plain.write(0, memoryview(b"x"))
    assert hops == []
    synced, _ = await root.create("synced", OpenFlags.RDWR | OpenFlags.DSYNC, 0o644, 0)
    await synced.write(0, memoryview(b"x"))
    assert hops == [os.pwrite]
    reopened = await walk_to(root, "plain")
    await reopened.open(OpenFlags.WRONLY | OpenFlags.SYNC)
    await reopened.write(0, memoryview(b"y"))
    assert hops == [os.pwrite, os.pwrite]
    for f in (plain, synced, reopened):
        await f.close()
