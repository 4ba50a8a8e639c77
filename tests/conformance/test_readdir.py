"""readdir: ".", "..", types, qids, offsets that resume, the end."""

import pytest

from ninep.protocol.constants import DirentType, OpenFlags, QidType

from .helpers import list_dir, walk_to, walked


async def test_lists_dot_dotdot_and_children(root, backend):
    async with walked(root, "", OpenFlags.RDONLY) as d:
        names = {e.name for e in await list_dir(d)}
    expected = {".", "..", "dir", "emptydir", "empty", "big"}
    if backend.caps.symlinks:
        expected.add("link")
    assert expected <= names
    assert names - expected <= {".xattr-probe"}


async def test_entry_types_and_qids_match_walk(root, backend):
    async with walked(root, "", OpenFlags.RDONLY) as d:
        entries = {e.name: e for e in await list_dir(d)}
    assert entries["dir"].type == DirentType.DIR and entries["dir"].qid.type & QidType.DIR
    assert entries["big"].type == DirentType.REG
    if backend.caps.symlinks:
        assert entries["link"].type == DirentType.LNK
        assert entries["link"].qid.type == QidType.SYMLINK
    for name in ("dir", "big"):
        f = await walk_to(root, name)
        assert entries[name].qid.path == f.qid.path
        await f.close()
    assert entries["."].qid.path == root.qid.path
    assert entries[".."].qid.path == root.qid.path  # the root's parent is itself


async def test_subdirectory_dotdot_is_parent(root):
    async with walked(root, "dir", OpenFlags.RDONLY) as d:
        entries = {e.name: e for e in await list_dir(d)}
    assert entries[".."].qid.path == root.qid.path
    assert set(entries) == {".", "..", "file.txt", "sub"}


async def test_small_counts_resume_without_loss_or_repeat(root):
    async with walked(root, "", OpenFlags.RDONLY) as d:
        whole = [e.name for e in await list_dir(d)]
        piecewise = [e.name for e in await list_dir(d, count=40)]  # ~one entry a call
    assert piecewise == whole
    assert len(set(whole)) == len(whole)


async def test_resume_from_every_offset(root):
    async with walked(root, "", OpenFlags.RDONLY) as d:
        whole = await list_dir(d)
        for i, entry in enumerate(whole):
            rest = [e.name for e in await list_dir_from(d, entry.offset)]
            assert rest == [e.name for e in whole[i + 1:]]


async def list_dir_from(d, offset):
    out = []
    while batch := list(await d.readdir(offset, 4096)):
        out.extend(batch)
        offset = batch[-1].offset
    return out


async def test_empty_directory_has_only_dots(root):
    async with walked(root, "emptydir", OpenFlags.RDONLY) as d:
        assert sorted(e.name for e in await list_dir(d)) == [".", ".."]


@pytest.mark.needs("writable")
async def test_new_entries_appear(root, backend):
    emptydir = await walk_to(root, "emptydir")
    await emptydir.mkdir("fresh", 0o755, 0)
    await emptydir.close()
    async with walked(root, "emptydir", OpenFlags.RDONLY) as d:
        assert "fresh" in {e.name for e in await list_dir(d)}
