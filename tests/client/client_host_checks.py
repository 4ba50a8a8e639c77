"""Checks of the client against a real server exporting a host directory.

Each check gets a ``Target``: a fresh directory under the export, seen both through the
server (``t.sub``, relative to the attach) and on the host (``t.host``), and checks every
result against the host with os.stat and friends. test_client_diod.py runs them against
diod, test_client_ninepd.py against ninep's own server.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from ninep.client import connect
from ninep.protocol.constants import (
    V9FS_MAGIC,
    DirentType,
    GetattrMask,
    LockStatus,
    LockType,
    OpenFlags,
    QidType,
)


@dataclass
class Target:
    url: str
    aname: str
    export: Path  # the exported directory on the host
    sub: str  # this check's directory, relative to the export
    server: str  # "diod" or "ninepd": where their behaviour differs

    @property
    def host(self) -> Path:
        return self.export / self.sub

    def connect(self):
        return connect(self.url, aname=self.aname, uname="root", n_uname=0)


async def check_create_write_read_back_and_getattr(t: Target):
    sub, host = t.sub, t.host
    payload = os.urandom(300_000)  # several Twrites and Treads (diod's msize is 64 KiB)
    async with t.connect() as client:
        await client.root.write_file(f"{sub}/data.bin", payload, mode=0o640)
        assert (host / "data.bin").read_bytes() == payload
        assert await client.root.read_file(f"{sub}/data.bin") == payload
        assert await client.root.read_file(f"{sub}/data.bin", window=4) == payload

        attr = await client.root.stat(f"{sub}/data.bin")
        st = os.lstat(host / "data.bin")
        assert attr.valid & GetattrMask.BASIC == GetattrMask.BASIC
        assert (attr.mode, attr.uid, attr.gid, attr.nlink) == (st.st_mode, st.st_uid, st.st_gid,
                                                               st.st_nlink)
        assert stat.S_IMODE(attr.mode) == 0o640
        assert (attr.size, attr.blocks, attr.rdev) == (st.st_size, st.st_blocks, st.st_rdev)
        assert attr.qid.path == st.st_ino and attr.qid.type == QidType.FILE
        assert attr.mtime_sec * 10**9 + attr.mtime_nsec == st.st_mtime_ns
        assert attr.ctime_sec * 10**9 + attr.ctime_nsec == st.st_ctime_ns

        # Appending at an offset through an explicitly opened fid.
        async with client.root.open(f"{sub}/data.bin", OpenFlags.RDWR) as opened:
            assert await opened.write(b"tail", offset=len(payload)) == 4
            await opened.fsync()
            assert await opened.read(4, offset=len(payload)) == b"tail"
        assert (host / "data.bin").read_bytes() == payload + b"tail"


async def check_listdir_matches_the_host(t: Target):
    sub, host = t.sub, t.host
    (host / "dir").mkdir()
    (host / "file").write_bytes(b"x")
    (host / "link").symlink_to("file")
    for i in range(300):  # enough for several Treaddirs
        (host / "dir" / f"name-{i:04d}").touch()
    async with t.connect() as client:
        entries = {e.name: e for e in await client.root.listdir(sub)}
        assert set(entries) - {".", ".."} == set(os.listdir(host))
        assert entries["dir"].type == DirentType.DIR
        assert entries["file"].type == DirentType.REG
        assert entries["link"].type == DirentType.LNK
        assert entries["file"].qid.path == os.lstat(host / "file").st_ino
        names = [e.name for e in await client.root.listdir(f"{sub}/dir")]
        assert sorted(set(names) - {".", ".."}) == sorted(os.listdir(host / "dir"))
        assert len(names) == len(set(names))  # no entry twice across pages


async def check_mkdir_symlink_readlink_link_and_mknod(t: Target):
    sub, host = t.sub, t.host
    async with t.connect() as client:
        root = client.root
        qid = await root.mkdir(f"{sub}/made", 0o750)
        st = os.stat(host / "made")
        assert stat.S_ISDIR(st.st_mode) and qid.path == st.st_ino and qid.type & QidType.DIR
        assert stat.S_IMODE(st.st_mode) == 0o750

        await root.symlink(f"{sub}/made/ln", "../target")
        assert os.readlink(host / "made" / "ln") == "../target"
        assert await root.readlink(f"{sub}/made/ln") == "../target"

        await root.write_file(f"{sub}/orig", b"shared")
        await root.link(f"{sub}/orig", f"{sub}/made/hard")
        assert os.stat(host / "made" / "hard").st_ino == os.stat(host / "orig").st_ino
        assert os.stat(host / "orig").st_nlink == 2
        assert (await root.stat(f"{sub}/orig")).nlink == 2

        await root.mknod(f"{sub}/fifo", stat.S_IFIFO | 0o600)
        assert stat.S_ISFIFO(os.lstat(host / "fifo").st_mode)

        with pytest.raises(FileExistsError):
            await root.mkdir(f"{sub}/made")
        with pytest.raises(FileNotFoundError):
            await root.walk(f"{sub}/made/nothing/here")


async def check_renameat_and_rename(t: Target):
    sub, host = t.sub, t.host
    (host / "a").mkdir()
    (host / "b").mkdir()
    (host / "a" / "one").write_bytes(b"1")
    (host / "a" / "two").write_bytes(b"2")
    async with t.connect() as client:
        await client.root.rename(f"{sub}/a/one", f"{sub}/b/uno")  # Trenameat
        assert (host / "b" / "uno").read_bytes() == b"1" and not (host / "a" / "one").exists()

        async with client.root.walk(f"{sub}/a/two") as moving, client.root.walk(f"{sub}/b") as b:
            await client.rename(moving.fid, b.fid, "dos")  # Trename
            assert (host / "b" / "dos").read_bytes() == b"2"
        assert sorted(os.listdir(host / "b")) == ["dos", "uno"] and os.listdir(host / "a") == []


async def check_setattr_chmod_chown_truncate_and_times(t: Target):
    sub, host = t.sub, t.host
    (host / "f").write_bytes(b"0123456789")
    async with t.connect() as client:
        async with client.root.walk(f"{sub}/f") as f:
            await f.chmod(0o604)
            assert stat.S_IMODE(os.stat(host / "f").st_mode) == 0o604
            await f.chown(1234, 5678)
            st = os.stat(host / "f")
            assert (st.st_uid, st.st_gid) == (1234, 5678)
            await f.truncate(3)
            assert (host / "f").read_bytes() == b"012"
            await f.utime(atime_ns=1_000_000_123, mtime_ns=2_000_000_456)
            st = os.stat(host / "f")
            assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
            before = time.time_ns()
            await f.utime()  # both "now"
            st = os.stat(host / "f")
            assert st.st_mtime_ns >= before - 10**9 and st.st_atime_ns >= before - 10**9
            attr = await f.getattr()
            assert (attr.uid, attr.gid, attr.size) == (1234, 5678, 3)
            assert attr.atime_sec * 10**9 + attr.atime_nsec == st.st_atime_ns


async def check_xattrs_set_get_list_remove(t: Target):
    sub, host = t.sub, t.host
    (host / "f").touch()
    try:
        os.setxattr(host / "f", "user.from_host", b"host value")
    except OSError as exc:
        pytest.skip(f"the export's filesystem has no user xattrs: {exc}")
    async with t.connect() as client:
        path = f"{sub}/f"
        await client.root.set_xattr("user.from_client", b"client value", path=path)
        assert os.getxattr(host / "f", "user.from_client") == b"client value"
        assert await client.root.get_xattr("user.from_host", path) == b"host value"
        assert set(await client.root.list_xattrs(path)) >= {"user.from_client", "user.from_host"}
        with pytest.raises(OSError) as caught:
            await client.root.get_xattr("user.absent", path)
        assert caught.value.errno == errno.ENODATA
        await client.root.remove_xattr("user.from_client", path)
        assert "user.from_client" not in os.listxattr(host / "f")


async def check_statfs_matches_statvfs(t: Target):
    export = t.export
    async with t.connect() as client:
        remote = await client.root.statfs()
    local = os.statvfs(export)
    assert remote.type == V9FS_MAGIC  # neither server passes the host's f_type by default
    assert (remote.bsize, remote.blocks, remote.files, remote.namelen) == (
        local.f_bsize, local.f_blocks, local.f_files, local.f_namemax)
    assert abs(remote.bfree - local.f_bfree) < 10_000


# diod implements Tlock with flock() on its host file descriptor (whole-file locks).
HOST_LOCK_PROBE = """
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("conflict")
    else:
        print("free")
"""


def host_lock_state(path) -> str:
    return subprocess.run(["python3", "-c", HOST_LOCK_PROBE, str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


async def check_lock_and_getlock(t: Target):
    sub, host = t.sub, t.host
    (host / "locked").write_bytes(b"x" * 100)
    async with t.connect() as client, t.connect() as other:
        async with client.root.open(f"{sub}/locked", OpenFlags.RDWR) as mine, \
                other.root.open(f"{sub}/locked", OpenFlags.RDWR) as theirs:
            status = await mine.lock(LockType.WRLCK, 0, 0, proc_id=42, client_id="mine")
            assert status == LockStatus.SUCCESS
            if t.server == "diod":  # locks the host file itself
                assert await trio.to_thread.run_sync(host_lock_state, host / "locked") == "conflict"
            held = await theirs.getlock(LockType.WRLCK, 0, 0, proc_id=7, client_id="theirs")
            assert held.type == LockType.WRLCK and held.start == 0
            assert await theirs.lock(LockType.WRLCK, proc_id=7, client_id="theirs") == \
                LockStatus.BLOCKED
            own = await mine.getlock(LockType.WRLCK, 0, 0, proc_id=42, client_id="mine")
            assert own.type == LockType.UNLCK  # one's own lock is no conflict

            assert await mine.lock(LockType.UNLCK, 0, 0, proc_id=42, client_id="mine") == \
                LockStatus.SUCCESS
            if t.server == "diod":
                assert await trio.to_thread.run_sync(host_lock_state, host / "locked") == "free"
            free = await theirs.getlock(LockType.WRLCK, 0, 0, proc_id=7, client_id="theirs")
            assert free.type == LockType.UNLCK
            assert await theirs.lock(LockType.WRLCK, proc_id=7, client_id="theirs") == \
                LockStatus.SUCCESS


async def check_unlink_rmdir_and_remove(t: Target):
    sub, host = t.sub, t.host
    (host / "dir").mkdir()
    (host / "dir" / "inner").touch()
    (host / "file").touch()
    (host / "gone").touch()
    async with t.connect() as client:
        root = client.root
        with pytest.raises(OSError) as caught:
            await root.rmdir(f"{sub}/dir")
        assert caught.value.errno == errno.ENOTEMPTY
        await root.unlink(f"{sub}/dir/inner")  # diod: EOPNOTSUPP, so walk + Tremove
        await root.rmdir(f"{sub}/dir")
        await root.unlink(f"{sub}/file")
        with pytest.raises(IsADirectoryError):
            await root.unlink(sub)
        doomed = await root.walk(f"{sub}/gone")
        await doomed.remove()
        assert os.listdir(host) == []
        assert len(client.fids) == 1  # only the root fid is left


async def check_concurrent_requests_on_one_connection(t: Target):
    sub, host = t.sub, t.host
    for i in range(16):
        (host / f"f{i}").write_bytes(bytes([i]) * (1000 + i))
    async with t.connect() as client:
        results = {}

        async def read(i):
            results[i] = await client.root.read_file(f"{sub}/f{i}")

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(read, i)
        assert results == {i: bytes([i]) * (1000 + i) for i in range(16)}
        assert client.in_flight == 0


async def check_cancelled_requests_are_flushed_and_the_server_survives(t: Target):
    sub, host = t.sub, t.host
    for i in range(32):
        (host / f"f{i}").write_bytes(os.urandom(200_000))
    async with t.connect() as client:
        # Whether a cancelled request is still unanswered (and so gets a Tflush) depends
        # on timing; a few rounds make sure some do.
        for _ in range(20):
            sent_before = client.requests_sent
            async with trio.open_nursery() as nursery:
                for i in range(32):
                    nursery.start_soon(client.root.read_file, f"{sub}/f{i}")
                with trio.fail_after(5):  # until the Twalks, some Tlopens and Treads are out
                    while client.requests_sent < sent_before + 32 + 16:
                        await trio.sleep(0)
                nursery.cancel_scope.cancel()  # reads and walks die mid-flight
            if client.flushes_sent:
                break
        assert client.flushes_sent > 0
        with trio.fail_after(5):  # orphaned walks are clunked in the background
            while len(client.fids) > 1 or client.in_flight:
                await trio.sleep(0.01)
        assert await client.root.read_file(f"{sub}/f0") == (host / "f0").read_bytes()
    async with t.connect() as again:  # the server is still serving
        assert len(await again.root.listdir(sub)) == 34


CHECKS = [
    check_create_write_read_back_and_getattr,
    check_listdir_matches_the_host,
    check_mkdir_symlink_readlink_link_and_mknod,
    check_renameat_and_rename,
    check_setattr_chmod_chown_truncate_and_times,
    check_xattrs_set_get_list_remove,
    check_statfs_matches_statvfs,
    check_lock_and_getlock,
    check_unlink_rmdir_and_remove,
    check_concurrent_requests_on_one_connection,
    check_cancelled_requests_are_flushed_and_the_server_survives,
]
