"""The writable in-memory filesystem through the backend contract."""

from __future__ import annotations

import errno
import stat

import pytest

from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.synthetic import Directory, RamDirectory, RamFilesystem
from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags, SetattrMask, XATTR_CREATE

from synthetic_helpers import attach, list_dir, read_all, walk, write_to


async def errno_of(awaitable) -> int:
    with pytest.raises(OSError) as failure:
        await awaitable
    return failure.value.errno


async def test_create_write_read_and_metadata():
    fs = RamFilesystem()
    root = await fs.attach("", Credentials(uid=1000, gid=1000))
    file, iounit = await root.create("notes", OpenFlags.RDWR, 0o640, 100)
    assert await file.write(0, memoryview(b"hello")) == 5
    assert await file.write(10, memoryview(b"!")) == 1  # a hole reads as zeros
    assert await file.read(0, 100) == b"hello" + bytes(5) + b"!"
    attr = await file.getattr(0)
    assert (attr.mode, attr.uid, attr.gid, attr.size) == (stat.S_IFREG | 0o640, 1000, 100, 11)
    assert attr.qid.version == 1  # a client's own writes never change it
    await file.close()
    flags = OpenFlags.RDWR | OpenFlags.EXCL
    assert await errno_of(root.create("notes", flags, 0o640, 0)) == errno.EEXIST
    again, _ = await root.create("notes", OpenFlags.RDWR, 0o640, 0)  # no O_EXCL: opens it
    assert await again.read(0, 5) == b"hello"
    await again.close()


async def test_truncate_append_and_setattr():
    root = await attach(RamFilesystem())
    file, _ = await root.create("f", OpenFlags.WRONLY, 0o644, 0)
    await file.write(0, memoryview(b"0123456789"))
    await file.close()
    assert await write_to(root, "f", b"ab", OpenFlags.WRONLY | OpenFlags.APPEND) == 2
    assert await read_all(root, "f") == b"0123456789ab"
    await write_to(root, "f", b"new", OpenFlags.WRONLY | OpenFlags.TRUNC)
    assert await read_all(root, "f") == b"new"
    handle = await walk(root, "f")
    await handle.setattr(SetAttr(valid=SetattrMask.SIZE | SetattrMask.MODE | SetattrMask.MTIME
                                 | SetattrMask.MTIME_SET, size=1, mode=0o600, mtime_sec=42))
    attr = await handle.getattr(0)
    assert (attr.size, attr.mode & 0o7777, attr.mtime_sec) == (1, 0o600, 42)


async def test_directories_symlinks_nodes_and_removal():
    root = await attach(RamFilesystem())
    dir_qid = await root.mkdir("d", 0o750, 0)
    assert dir_qid.type & 0x80
    sub = await walk(root, "d")
    await sub.symlink("s", "../target", 0)
    await sub.mknod("fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    await sub.mknod("null", stat.S_IFCHR | 0o666, 1, 3, 0)
    assert set(await list_dir(root, "d")) == {".", "..", "s", "fifo", "null"}
    assert await (await walk(root, "d/s")).readlink() == "../target"
    null = await (await walk(root, "d/null")).getattr(0)
    assert stat.S_ISCHR(null.mode) and (null.rdev >> 8, null.rdev & 0xFF) == (1, 3)
    assert await errno_of(root.unlinkat("d", AT_REMOVEDIR)) == errno.ENOTEMPTY
    assert await errno_of(root.unlinkat("d", 0)) == errno.EISDIR
    for name in ("s", "fifo", "null"):
        await sub.unlinkat(name, 0)
    assert await errno_of(sub.unlinkat("s", 0)) == errno.ENOENT
    await root.unlinkat("d", AT_REMOVEDIR)
    assert set(await list_dir(root)) == {".", ".."}


async def test_hard_links_share_a_qid_and_count_links():
    root = await attach(RamFilesystem())
    file, _ = await root.create("a", OpenFlags.WRONLY, 0o644, 0)
    await file.write(0, memoryview(b"shared"))
    await root.link(file, "b")
    a, b = await walk(root, "a"), await walk(root, "b")
    assert a.qid.path == b.qid.path and (await a.getattr(0)).nlink == 2
    await root.unlinkat("a", 0)
    assert await read_all(root, "b") == b"shared"
    assert await file.read(0, 10) == b"shared"  # an open fid outlives its name
    assert (await b.getattr(0)).nlink == 1
    await file.close()


async def test_rename_rules():
    root = await attach(RamFilesystem())
    await root.mkdir("a", 0o755, 0)
    await root.mkdir("b", 0o755, 0)
    a, b = await walk(root, "a"), await walk(root, "b")
    file, _ = await a.create("f", OpenFlags.WRONLY, 0o644, 0)
    await file.write(0, memoryview(b"x"))
    await a.renameat("f", b, "g")
    assert await read_all(root, "b/g") == b"x"
    assert await errno_of(root.renameat("a", a, "inside")) == errno.EINVAL
    await a.mkdir("full", 0o755, 0)
    await (await walk(root, "a/full")).mkdir("x", 0o755, 0)
    assert await errno_of(b.renameat("g", a, "full")) == errno.EISDIR
    assert await errno_of(root.renameat("b", a, "full")) == errno.ENOTEMPTY
    g = await walk(root, "b/g")
    await g.rename(root, "top")  # Trename moves the fid's own entry
    assert await read_all(root, "top") == b"x"
    await g.remove()
    assert "top" not in await list_dir(root)
    assert await errno_of(g.remove()) == errno.ENOENT


async def test_xattrs_on_ram_nodes_only():
    root = await attach(RamFilesystem())
    await root.xattr_set("user.a", b"1", 0)
    assert await root.xattr_get("user.a") == b"1"
    assert await errno_of(root.xattr_set("user.a", b"2", XATTR_CREATE)) == errno.EEXIST
    assert await root.xattr_list() == ["user.a"]
    await root.xattr_remove("user.a")
    assert await errno_of(root.xattr_get("user.a")) == errno.ENODATA
    static = await attach(Directory({"f": b"x"}))
    assert await errno_of(static.xattr_list()) == errno.EOPNOTSUPP


async def test_ram_directory_mounted_in_a_program_tree():
    tree = Directory({"fixed": b"1", "scratch": RamDirectory(mode=0o777)})
    root = await attach(tree)
    scratch = await walk(root, "scratch")
    new, _ = await scratch.create("tmp", OpenFlags.WRONLY, 0o600, 0)
    await new.write(0, memoryview(b"t"))
    assert await read_all(root, "scratch/tmp") == b"t"
    assert await errno_of(root.create("nope", OpenFlags.WRONLY, 0o600, 0)) == errno.EROFS
