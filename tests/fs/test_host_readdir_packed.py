"""The host export's readdir fast path: wire records straight from getdents64.

``readdir_packed`` must list exactly what ``readdir`` lists (same qids, cookies, types),
resume from any cookie without losing or repeating entries, never exceed ``count``,
and skip names that 9P cannot carry (not UTF-8) instead of failing the listing.
"""

import logging
import os

import pytest
import trio

import ninep.server
from ninep.client import connect
from ninep.fs import hostdir
from ninep.fs.hostdir import Listing, ListingCache
from ninep.protocol.codec import pack_dirents, unpack_dirents
from ninep.protocol.constants import OpenFlags


async def opened_dir(root, name):
    _, d = await root.walk([name])
    await d.open(OpenFlags.RDONLY)
    return d


def populate(directory, count):
    for i in range(count):
        (directory / f"entry-{i:04}-{'x' * (i % 37)}").write_bytes(b"")
    (directory / "sub").mkdir()
    os.symlink("nowhere", directory / "link")


async def list_all(d, count, packed):
    """Every entry, resuming from the last cookie of each batch."""
    entries, offset = [], 0
    while True:
        if packed:
            data = await d.readdir_packed(offset, count)
            assert len(data) <= count
            batch = unpack_dirents(data)
        else:
            batch = list(await d.readdir(offset, count))
        if not batch:
            return entries
        entries += batch
        offset = batch[-1].offset


@pytest.mark.parametrize("count", [300, 4096, 1 << 20])
async def test_packed_lists_what_readdir_lists(root, export, count):
    populate(export / "d", 300)
    d = await opened_dir(root, "d")
    try:
        packed = await list_all(d, count, packed=True)
        plain = await list_all(d, count, packed=False)
        assert packed == plain
        names = [e.name for e in packed]
        assert len(names) == len(set(names)) == 300 + 5  # ., .., f, sub, link
        by_name = {e.name: e for e in packed}
        for name in ("sub", "link", "f"):
            qids, f = await root.walk(["d", name])
            # d_ino and d_type give the qid's path and type; version is left 0, as diod.
            assert (by_name[name].qid.type, by_name[name].qid.path) == (qids[-1].type, qids[-1].path)
            await f.close()
        # The records are what pack_dirents makes of the same Dirents.
        first = await d.readdir_packed(0, 4096)
        assert first == pack_dirents(unpack_dirents(first), 4096)[0]
    finally:
        await d.close()


async def test_root_dotdot_is_the_root(root):
    await root.open(OpenFlags.RDONLY)
    entries = {e.name: e for e in unpack_dirents(await root.readdir_packed(0, 8192))}
    assert entries[".."].qid == entries["."].qid == root.qid


async def test_count_too_small_for_one_record(root):
    d = await opened_dir(root, "d")
    try:
        assert await d.readdir_packed(0, 10) == b""
        assert len(await d.readdir(0, 10)) == 1  # the Dirent API still makes progress
    finally:
        await d.close()


async def test_names_that_are_not_utf8_are_skipped_and_logged_once(root, export, caplog):
    bad = os.fsencode(str(export / "d")) + b"/bad\xff"
    open(bad, "wb").close()
    (export / "d" / "good").write_bytes(b"")
    d = await opened_dir(root, "d")
    try:
        with caplog.at_level(logging.DEBUG, logger="ninep.host"):
            for _ in range(2):
                names = {e.name for e in unpack_dirents(await d.readdir_packed(0, 8192))}
                assert names == {".", "..", "f", "good"}
                assert {e.name for e in await d.readdir(0, 8192)} == names
        lines = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
        assert len(lines) == 1 and r"bad\xff" in lines[0].getMessage()
    finally:
        await d.close()


async def test_bad_name_does_not_break_listing_over_the_wire(hostfs, export):
    open(os.fsencode(str(export / "d")) + b"/caf\xe9", "wb").close()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, hostfs, ["tcp://127.0.0.1:0"])
        async with connect(server.addresses[0], msize=8192) as client:
            names = sorted(e.name for e in await client.root.listdir("d"))
        server.shutdown()
    assert "f" in names and not any(n.startswith("caf") for n in names)


# --- the listing cache ----------------------------------------------------------------

def names_of(data) -> set[str]:
    return {e.name for e in unpack_dirents(data)}


@pytest.fixture
def settled_cache(hostfs):
    """A cache that treats every directory as settled (the real one waits 2 s after
    the directory's last change before keeping its listing)."""
    hostfs.listings = ListingCache(settled_ns=0)
    return hostfs.listings


async def test_cached_listing_is_served_and_equals_the_host_listing(root, export, settled_cache):
    populate(export / "d", 120)
    d = await opened_dir(root, "d")
    try:
        first = await list_all(d, 1000, packed=True)  # the first call keeps it all
        hits = settled_cache.hits
        again = await list_all(d, 1000, packed=True)
        assert again == first and settled_cache.hits > hits
        plain = hostdir.list_packed(d._io_fd(), 0, 1 << 20, root._fs.qids,
                                    os.stat(export / "d"), False)[0]
        assert await d.readdir_packed(0, 1 << 20) == plain
        # Resuming from every cookie the cache gave out matches the host.
        for entry in first[:-1:7]:
            cached = await d.readdir_packed(entry.offset, 600)
            host = hostdir.list_packed(d._io_fd(), entry.offset, 600, root._fs.qids,
                                       os.stat(export / "d"), False)[0]
            assert cached == host
    finally:
        await d.close()


@pytest.mark.parametrize("change", ["create", "unlink", "rename", "mkdir"])
async def test_a_changed_directory_is_listed_afresh(root, export, settled_cache, change):
    populate(export / "d", 10)
    d = await opened_dir(root, "d")
    try:
        before = names_of(await d.readdir_packed(0, 8192))
        names_of(await d.readdir_packed(0, 8192))
        hits = settled_cache.hits
        assert hits > 0
        if change == "create":
            (export / "d" / "new").write_bytes(b"")
            expected = before | {"new"}
        elif change == "unlink":
            (export / "d" / "f").unlink()
            expected = before - {"f"}
        elif change == "rename":
            (export / "d" / "f").rename(export / "d" / "g")
            expected = before - {"f"} | {"g"}
        else:
            (export / "d" / "sub2").mkdir()
            expected = before | {"sub2"}
        assert names_of(await d.readdir_packed(0, 8192)) == expected
        assert settled_cache.hits == hits
    finally:
        await d.close()


async def test_a_recently_changed_directory_is_not_kept(root, export, hostfs):
    assert isinstance(hostfs.listings, ListingCache)  # on by default, 2 s settle time
    d = await opened_dir(root, "d")
    try:
        for _ in range(3):
            assert names_of(await d.readdir_packed(0, 8192)) == {".", "..", "f"}
        assert hostfs.listings.hits == 0
    finally:
        await d.close()


async def test_big_directories_are_not_kept(root, export, hostfs):
    hostfs.listings = ListingCache(settled_ns=0, max_entries=50)
    populate(export / "d", 100)
    d = await opened_dir(root, "d")
    try:
        first = await list_all(d, 2000, packed=True)
        assert await list_all(d, 2000, packed=True) == first
        assert len(first) == 105 and hostfs.listings.hits == 0
    finally:
        await d.close()


def test_listing_slices_by_count():
    records = [b"a" * 30, b"b" * 30, b"c" * 30]
    marks, used = [], 0
    for i, record in enumerate(records):
        used += len(record)
        marks.append((100 + i, used))
    listing = Listing(b"".join(records), marks)
    assert listing.records(0, 60, False) == records[0] + records[1]
    assert listing.records(0, 59, False) == records[0]
    assert listing.records(100, 1000, False) == records[1] + records[2]
    assert listing.records(102, 1000, False) == b""  # the end
    assert listing.records(0, 10, False) == b"" and listing.records(0, 10, True) == records[0]
    assert listing.records(7, 1000, False) is None  # a cookie it never gave out
