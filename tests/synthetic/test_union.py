"""UnionFilesystem: synthetic trees mounted into a base export."""

from __future__ import annotations

import errno
import os

import pytest

from ninep.fs.backend import Credentials
from ninep.fs.synthetic import Directory, RamDirectory, RamFilesystem
from ninep.fs.union import UnionFilesystem
from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags

from synthetic_helpers import SERVER_CREDS, list_dir, read_all, walk


async def errno_of(awaitable) -> int:
    with pytest.raises(OSError) as failure:
        await awaitable
    return failure.value.errno


def ram_base() -> RamFilesystem:
    return RamFilesystem(RamDirectory({
        "etc": RamDirectory({"hostname": b"base\n"}),
        "run": RamDirectory({"host": RamDirectory({"hidden": b"shadowed\n"}), "lock": RamDirectory()}),
    }))


def host_tree() -> Directory:
    return Directory({"hostname": b"build-7\n", "info": {"arch": b"x86_64\n"}})


async def test_walks_cross_into_the_mount_and_back():
    union = UnionFilesystem(ram_base(), {"run/host": host_tree()})
    root = await union.attach("", SERVER_CREDS)
    assert await read_all(root, "run/host/hostname") == b"build-7\n"
    assert await read_all(root, "run/host/info/../info/arch") == b"x86_64\n"
    assert await read_all(root, "run/host/../../etc/hostname") == b"base\n"
    inside = await walk(root, "run/host/info")
    assert await read_all(inside, "../../lock/../../etc/hostname") == b"base\n"
    qids, file = await root.walk(["run", "host", "hidden"])  # the base's entry is covered
    assert file is None and len(qids) == 2


async def test_readdir_of_the_parent_shows_the_mount_point_once():
    union = UnionFilesystem(ram_base(), {"run/host": host_tree(), "run/extra": host_tree()})
    root = await union.attach("", SERVER_CREDS)
    entries = await list_dir(root, "run")
    assert sorted(entries) == [".", "..", "extra", "host", "lock"]
    host_root = await walk(root, "run/host")
    assert entries["host"].qid == host_root.qid
    assert sorted(await list_dir(root, "run/host")) == [".", "..", "hostname", "info"]


async def test_qids_of_mounted_trees_do_not_collide_with_the_base():
    union = UnionFilesystem(ram_base(), {"run/host": host_tree(), "srv": RamFilesystem()})
    root = await union.attach("", SERVER_CREDS)
    seen = {}
    for path in ("", "etc", "etc/hostname", "run", "run/host", "run/host/hostname",
                 "run/host/info", "srv"):
        seen[path] = (await walk(root, path)).qid.path
    assert len(set(seen.values())) == len(seen)
    attr = await (await walk(root, "run/host/hostname")).getattr(0)
    assert attr.qid.path == seen["run/host/hostname"]


async def test_mount_points_are_busy_and_cross_tree_changes_are_exdev():
    union = UnionFilesystem(ram_base(), {"run/host": host_tree(), "scratch": RamFilesystem()})
    root = await union.attach("", SERVER_CREDS)
    run = await walk(root, "run")
    assert await errno_of(run.unlinkat("host", AT_REMOVEDIR)) == errno.EBUSY
    assert await errno_of(run.mkdir("host", 0o755, 0)) == errno.EEXIST
    assert await errno_of(run.renameat("lock", run, "host")) == errno.EBUSY
    assert await errno_of((await walk(root, "run/host")).remove()) == errno.EBUSY
    scratch = await walk(root, "scratch")
    assert await errno_of((await walk(root, "etc/hostname")).rename(scratch, "x")) == errno.EXDEV
    # inside a mounted writable tree everything works
    new, _ = await scratch.create("f", OpenFlags.RDWR, 0o644, 0)
    await new.write(0, memoryview(b"data"))
    assert await read_all(root, "scratch/f") == b"data"
    assert (await walk(root, "scratch/f")).qid == new.qid
    await new.close()


async def test_one_session_per_attach_and_roots_closed_with_the_last_fid():
    tree = host_tree()
    union = UnionFilesystem(ram_base(), {"run/host": tree})
    root = await union.attach("guest", Credentials(uid=1000, gid=1000))
    a = await walk(root, "run/host/hostname")
    b = await walk(root, "run/host/info")
    sessions = tree.filesystem.sessions
    assert len(sessions) == 1
    session = next(iter(sessions.values()))
    assert (session.aname, session.creds.uid) == ("guest", 1000)
    for file in (a, b, root):
        await file.close()
    assert not tree.filesystem.sessions


def test_bad_mount_points_are_refused():
    for bad in ("", "/", "a/../b", "./x"):
        with pytest.raises(ValueError):
            UnionFilesystem(RamFilesystem(), {bad: host_tree()})


async def test_host_export_with_synthetic_run_host(tmp_path):
    host = pytest.importorskip("ninep.fs.host")
    (tmp_path / "run").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text("ID=test\n")
    union = UnionFilesystem(host.HostFilesystem(str(tmp_path)), {"run/host": host_tree()})
    try:
        root = await union.attach("", Credentials(uid=None, gid=None))
        assert await read_all(root, "etc/os-release") == b"ID=test\n"
        assert await read_all(root, "run/host/hostname") == b"build-7\n"
        assert await read_all(root, "run/host/../../etc/os-release") == b"ID=test\n"
        assert set(await list_dir(root, "run")) == {".", "..", "host"}
        assert not os.path.exists(tmp_path / "run" / "host")  # nothing created on the host
        await root.close()
    finally:
        await union.aclose()


async def test_nested_mounts_and_dotdot_between_them():
    inner = Directory({"deep": b"inner\n"})
    outer = Directory({"file": b"outer\n", "b": {}})
    union = UnionFilesystem(ram_base(), {"run/a": outer, "run/a/b": inner})
    root = await union.attach("", SERVER_CREDS)
    assert await read_all(root, "run/a/b/deep") == b"inner\n"
    assert await read_all(root, "run/a/b/../file") == b"outer\n"
    assert await read_all(root, "run/a/b/../../../etc/hostname") == b"base\n"
    assert set(await list_dir(root, "run/a")) == {".", "..", "file", "b"}
    assert (await list_dir(root, "run/a"))["b"].qid == (await walk(root, "run/a/b")).qid
