"""open modes, read, write, fsync; read-only backends refuse writes."""

import errno

import pytest

from ninep.fs.backend import SetAttr
from ninep.protocol.constants import OpenFlags, SetattrMask

from .backends import SEED_FILES
from .helpers import raises_errno, read_all, walk_to, walked


async def test_read_whole_and_at_offsets(root):
    async with walked(root, "dir/file.txt", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 4096)) == SEED_FILES["dir/file.txt"]
        assert bytes(await f.read(7, 2)) == b"9p"
        assert bytes(await f.read(1000, 10)) == b""


async def test_read_large_file_in_chunks(root):
    async with walked(root, "big", OpenFlags.RDONLY) as f:
        assert await read_all(f, 8192) == SEED_FILES["big"]
        assert bytes(await f.read(0, len(SEED_FILES["big"]))) == SEED_FILES["big"]
        # msize-sized requests on a smaller file: exactly what is there
        assert bytes(await f.read(0, 1 << 20)) == SEED_FILES["big"]
        assert bytes(await f.read(100_000, 1 << 20)) == SEED_FILES["big"][100_000:]
        assert bytes(await f.read(len(SEED_FILES["big"]), 1 << 20)) == b""


async def test_empty_file_reads_nothing(root):
    async with walked(root, "empty", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 100)) == b""


@pytest.mark.needs("writable")
async def test_write_then_read_back(root, backend):
    async with walked(root, "dir/file.txt", OpenFlags.RDWR) as f:
        assert await f.write(0, memoryview(b"HELLO")) == 5
        await f.fsync(False)
        await f.fsync(True)
        assert bytes(await f.read(0, 100)) == b"HELLO, 9p\n"
        assert await f.write(100, memoryview(b"!")) == 1  # sparse extension
        assert len(await f.read(0, 200)) == 101


@pytest.mark.needs("writable")
async def test_open_truncate(root, backend):
    async with walked(root, "dir/file.txt", OpenFlags.WRONLY | OpenFlags.TRUNC) as f:
        assert (await f.getattr(0)).size == 0


@pytest.mark.needs("writable")
async def test_append_writes_at_end(root, backend):
    async with walked(root, "dir/file.txt", OpenFlags.WRONLY | OpenFlags.APPEND) as f:
        await f.write(0, memoryview(b"tail"))
    async with walked(root, "dir/file.txt", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 100)) == SEED_FILES["dir/file.txt"] + b"tail"


@pytest.mark.needs("writable")
async def test_own_changes_keep_the_qid(root, backend):
    """The Linux client takes a new qid.version for a new inode: a client's own
    write, truncate, chmod or entry change must not change it, or a guest that looks
    the file up again loses sight of bytes it wrote (issue 15)."""
    async with walked(root, "empty", OpenFlags.WRONLY) as f:
        before = (await f.getattr(0)).qid
        await f.write(0, memoryview(b"x" * 10))
        await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=3))
        await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o600))
        assert (await f.getattr(0)).qid == before
    again = await walk_to(root, "empty")
    assert again.qid == before
    await again.close()
    directory = await walk_to(root, "dir")
    dir_before = (await directory.getattr(0)).qid
    await directory.mkdir("made-here", 0o755, 0)
    assert (await directory.getattr(0)).qid == dir_before
    await directory.close()


async def test_read_only_backend_refuses_writes(root, backend):
    if backend.caps.writable:
        return
    for flags in (OpenFlags.WRONLY, OpenFlags.RDWR, OpenFlags.RDONLY | OpenFlags.TRUNC):
        f = await walk_to(root, "dir/file.txt")
        with raises_errno(errno.EROFS):
            await f.open(flags)
        await f.close()
    f = await walk_to(root, "dir/file.txt")
    with raises_errno(errno.EROFS):
        await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=0))
    for op in (lambda: root.mkdir("x", 0o755, 0),
               lambda: root.create("x", OpenFlags.RDWR, 0o644, 0),
               lambda: root.symlink("x", "y", 0), lambda: root.unlinkat("empty", 0),
               lambda: f.xattr_set("user.x", b"1", 0), lambda: f.remove()):
        with raises_errno(errno.EROFS):
            await op()
    await f.close()


async def test_open_directory_for_writing_fails(root):
    d = await walk_to(root, "dir")
    with raises_errno(errno.EISDIR, errno.EROFS):
        await d.open(OpenFlags.WRONLY)
    await d.close()


async def test_concurrent_reads_and_walks_on_one_fid(root):
    import trio
    big = SEED_FILES["big"]
    chunk = 8192
    results: dict[int, bytes] = {}
    async with walked(root, "big", OpenFlags.RDONLY) as f:
        async def read_at(offset: int) -> None:
            results[offset] = bytes(await f.read(offset, chunk))

        async def walk_and_close() -> None:
            new = await walk_to(root, "dir/file.txt")
            await new.close()

        async with trio.open_nursery() as nursery:
            for offset in range(0, len(big), chunk):
                nursery.start_soon(read_at, offset)
                nursery.start_soon(walk_and_close)
    assert b"".join(results[o] for o in sorted(results)) == big
