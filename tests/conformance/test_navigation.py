"""attach, walk (full, partial, "..", bad names), clone, close."""

import errno

import pytest

from ninep.protocol.constants import QidType

from .helpers import raises_errno, walk_to


async def test_attach_gives_a_directory(root):
    assert root.qid.type & QidType.DIR


async def test_walk_returns_one_qid_per_name(root):
    qids, new = await root.walk(["dir", "sub"])
    assert new is not None and len(qids) == 2
    assert all(q.type & QidType.DIR for q in qids)
    assert new.qid.path == qids[-1].path
    await new.close()


async def test_walk_to_a_file(root):
    qids, new = await root.walk(["dir", "file.txt"])
    assert qids[-1].type == QidType.FILE
    await new.close()


async def test_first_name_missing_raises(root):
    with raises_errno(errno.ENOENT):
        await root.walk(["no-such-name"])


async def test_partial_walk_returns_prefix_and_no_file(root):
    qids, new = await root.walk(["dir", "missing", "deeper"])
    assert new is None and len(qids) == 1
    qids, new = await root.walk(["dir", "file.txt", "below-a-file"])
    assert new is None and len(qids) == 2


async def test_walk_below_a_file_is_enotdir(root):
    file = await walk_to(root, "dir/file.txt")
    with raises_errno(errno.ENOTDIR):
        await file.walk(["x"])
    await file.close()


async def test_dotdot_at_root_stays_at_root(root):
    qids, new = await root.walk(["..", ".."])
    assert [q.path for q in qids] == [root.qid.path] * 2
    qids2, inner = await new.walk(["dir"])
    assert inner is not None
    await inner.close()
    await new.close()


async def test_dotdot_goes_up(root):
    qids, new = await root.walk(["dir", "sub", "..", ".."])
    assert qids[2].path == qids[0].path
    assert qids[3].path == root.qid.path
    await new.close()


async def test_qid_path_is_stable_and_distinct(root):
    a1 = await walk_to(root, "dir/file.txt")
    a2 = await walk_to(root, "dir/file.txt")
    b = await walk_to(root, "empty")
    assert a1.qid.path == a2.qid.path != b.qid.path
    for f in (a1, a2, b):
        await f.close()


async def test_names_with_slash_or_nul_are_refused(root):
    for bad in ("dir/file.txt", "a\0b", ""):
        with raises_errno(errno.EINVAL, errno.ENOENT):
            await root.walk([bad])


async def test_clone_is_independent(root):
    clone = await root.clone()
    assert clone.qid.path == root.qid.path
    await clone.close()
    again = await walk_to(root, "dir")  # the original still works
    await again.close()


@pytest.mark.needs("symlinks")
async def test_walk_to_symlink_gives_the_link(root, backend):
    qids, new = await root.walk(["link"])
    assert qids[0].type == QidType.SYMLINK
    assert await new.readlink() == "dir/file.txt"
    await new.close()


async def test_readlink_of_non_link_is_einval(root):
    file = await walk_to(root, "dir/file.txt")
    with raises_errno(errno.EINVAL):
        await file.readlink()
    await file.close()
