"""RemoteFile helpers against the fake server: walks, read/write loops, readdir, fallbacks."""

import errno

import pytest
import trio

from client_fake_server import served
from ninep.client import split_path
from ninep.client.remote_file import split_parent
from ninep.protocol import messages as m
from ninep.protocol.constants import IOHDRSZ, AT_REMOVEDIR


def deep_tree(depth: int) -> tuple[dict, str]:
    tree: dict = {}
    node = tree
    names = [f"d{i}" for i in range(depth)]
    for name in names[:-1]:
        node[name] = {}
        node = node[name]
    node[names[-1]] = bytearray(b"bottom")
    return tree, "/".join(names)


def test_split_path_drops_empty_and_dot_names():
    assert split_path("a//b/./c/") == ["a", "b", "c"]
    assert split_path("/") == [] and split_path("") == []
    assert split_path("../x") == ["..", "x"]
    assert split_parent("a/b/c") == ("a/b", "c")
    assert split_parent("c") == ("", "c")
    for bad in ("", "/", ".", "a/.."):
        with pytest.raises(OSError) as caught:
            split_parent(bad)
        assert caught.value.errno == errno.EINVAL


async def test_long_walks_are_split_into_twalks_of_sixteen():
    tree, path = deep_tree(37)
    async with served(tree=tree) as (server, client):
        assert await client.root.read_file(path) == b"bottom"
        walks = server.requests(m.Twalk)
        assert [len(w.wnames) for w in walks] == [16, 16, 5]
        assert walks[1].fid == walks[1].newfid == walks[0].newfid  # later chunks walk in place
        assert set(server.fids) == {client.root.fid} and len(client.fids) == 1


async def test_short_walk_raises_enoent_and_leaks_no_fid():
    tree, path = deep_tree(20)
    async with served(tree=tree) as (server, client):
        for missing in ("d0/nope", path.replace("d18", "nope")):
            with pytest.raises(FileNotFoundError) as caught:
                await client.root.walk(missing)
            assert caught.value.filename == missing
        assert set(server.fids) == {client.root.fid} and len(client.fids) == 1


async def test_walk_of_empty_path_clones_and_async_with_clunks():
    async with served(tree={"f": bytearray(b"x")}) as (server, client):
        async with client.root.walk() as clone:
            assert clone.fid != client.root.fid and clone.qid == client.root.qid
            assert clone.fid in server.fids
        assert clone.fid not in server.fids and clone.clunked
        await clone.clunk()  # idempotent
        assert len(server.requests(m.Tclunk)) == 1


async def test_read_all_loops_by_iounit_until_an_empty_read():
    content = bytes(range(256)) * 4
    async with served(iounit=100, tree={"f": bytearray(content)}) as (server, client):
        async with client.root.open("f") as opened:
            assert opened.iounit == 100
            assert await opened.read_all() == content
            assert await opened.read_all(offset=1000) == content[1000:]
        reads = server.requests(m.Tread)
        assert [r.count for r in reads] == [100] * 14
        assert [r.offset for r in reads[:11]] == list(range(0, 1100, 100))


async def test_read_all_without_iounit_uses_msize():
    content = b"y" * 10000
    async with served(msize=4096, tree={"f": bytearray(content)}) as (server, client):
        assert await client.root.read_file("f") == content
        assert {r.count for r in server.requests(m.Tread)} == {4096 - IOHDRSZ}


async def test_write_is_split_by_iounit_and_short_writes_resumed():
    async with served(iounit=1000, tree={"f": bytearray()}) as (server, client):
        handle_write = server.handlers[m.Twrite]

        async def accept_at_most_300(request):
            return await handle_write(m.Twrite(request.tag, request.fid, request.offset,
                                               request.data[:300]))

        server.handlers[m.Twrite] = accept_at_most_300
        payload = bytes(range(256)) * 10
        async with client.root.open("f") as opened:
            assert await opened.write(payload, offset=5) == len(payload)
        assert bytes(server.tree["f"][5:]) == payload
        assert max(len(w.data) for w in server.requests(m.Twrite)) <= 1000


async def test_write_that_makes_no_progress_is_an_error():
    async with served(tree={"f": bytearray()}) as (server, client):
        async def accept_nothing(request):
            return m.Rwrite(request.tag, 0)

        server.handlers[m.Twrite] = accept_nothing
        async with client.root.open("f") as opened:
            with pytest.raises(OSError) as caught:
                await opened.write(b"data")
        assert caught.value.errno == errno.EIO


async def test_write_file_creates_and_read_file_reads_back():
    async with served(tree={"dir": {}}) as (server, client):
        await client.root.write_file("dir/new", b"hello", mode=0o600)
        (create,) = server.requests(m.Tlcreate)
        assert (create.name, create.mode) == ("new", 0o600)
        assert await client.root.read_file("dir/new") == b"hello"
        assert (await client.root.stat("dir/new")).size == 5
        assert set(server.fids) == {client.root.fid}


async def test_listdir_pages_through_treaddir_offsets():
    names = [f"entry-with-a-long-name-{i:03d}" for i in range(200)]
    tree = {"big": {name: bytearray() for name in names}}
    async with served(msize=4096, tree=tree) as (server, client):
        entries = await client.root.listdir("big")
        assert [e.name for e in entries] == names
        readdirs = server.requests(m.Treaddir)
        assert len(readdirs) > 2  # several pages plus the empty one that ends it
        offsets = [r.offset for r in readdirs]
        assert offsets == sorted(set(offsets)) and offsets[0] == 0  # always forward
        assert set(offsets[1:]) <= {e.offset for e in entries}
        assert offsets[-1] == entries[-1].offset  # the last, empty page starts after it


@pytest.mark.parametrize("supported", [True, False])
async def test_unlink_uses_unlinkat_or_falls_back_to_remove(supported):
    async with served(tree={"d": {"f": bytearray(), "sub": {}}}) as (server, client):
        server.supports_unlinkat = supported
        await client.root.unlink("d/f")
        await client.root.rmdir("d/sub")
        assert server.tree == {"d": {}}
        if supported:
            flags = [r.flags for r in server.requests(m.Tunlinkat)]
            assert flags == [0, AT_REMOVEDIR] and not server.requests(m.Tremove)
        else:
            assert len(server.requests(m.Tremove)) == 2
        assert set(server.fids) == {client.root.fid} and len(client.fids) == 1


async def test_remove_fallback_refuses_the_wrong_kind_of_file():
    async with served(tree={"d": {"f": bytearray(), "sub": {}}}) as (server, client):
        server.supports_unlinkat = False
        with pytest.raises(IsADirectoryError):
            await client.root.unlink("d/sub")
        with pytest.raises(NotADirectoryError):
            await client.root.rmdir("d/f")
        assert server.tree == {"d": {"f": bytearray(), "sub": {}}}
        assert set(server.fids) == {client.root.fid}


@pytest.mark.parametrize("supported", [True, False])
async def test_rename_uses_renameat_or_falls_back_to_trename(supported):
    async with served(tree={"a": {"f": bytearray(b"1")}, "b": {}}) as (server, client):
        server.supports_renameat = supported
        await client.root.rename("a/f", "b/g")
        assert server.tree == {"a": {}, "b": {"g": bytearray(b"1")}}
        assert bool(server.requests(m.Trename)) != supported
        assert set(server.fids) == {client.root.fid}


async def test_mkdir_sends_mode_and_default_gid():
    async with served() as (server, client):
        await client.root.mkdir("new", 0o750)
        (mkdir,) = server.requests(m.Tmkdir)
        assert (mkdir.name, mkdir.mode, mkdir.gid) == ("new", 0o750, client.default_gid)
        assert server.tree == {"new": {}}


async def test_cancelled_helper_leaves_no_fid_behind():
    async with served(tree={"f": bytearray(b"data")}) as (server, client):
        arrived = trio.Event()

        async def stall(request):
            arrived.set()
            await trio.sleep_forever()

        server.handlers[m.Tread] = stall
        with trio.move_on_after(1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.root.read_file, "f")
                await arrived.wait()
                nursery.cancel_scope.cancel()
        assert set(server.fids) == {client.root.fid} and len(client.fids) == 1


async def test_an_iounit_larger_than_msize_allows_is_clamped():
    content = b"z" * 20000
    async with served(msize=4096, iounit=1 << 20, tree={"f": bytearray(content)}) as (server,
                                                                                      client):
        assert await client.root.read_file("f") == content
        assert max(r.count for r in server.requests(m.Tread)) == 4096 - IOHDRSZ


@pytest.mark.parametrize("length", [0, 99, 100, 1000, 1234])
async def test_windowed_read_all_keeps_reads_in_flight_and_returns_the_file(length):
    content = bytes(i % 251 for i in range(length))
    async with served(iounit=100, tree={"f": bytearray(content)}) as (server, client):
        handle_read = server.handlers[m.Tread]

        async def slow_read(request):
            await trio.sleep(0.001)
            return await handle_read(request)

        server.handlers[m.Tread] = slow_read
        assert await client.root.read_file("f", window=4) == content
        if length >= 400:
            assert server.max_in_flight == 4
        assert client.in_flight == 0 and len(client.fids) == 1


async def test_windowed_read_survives_short_reads_in_the_middle():
    content = bytes(range(256)) * 8
    async with served(iounit=100, tree={"f": bytearray(content)}) as (server, client):
        handle_read = server.handlers[m.Tread]

        async def short_at_300(request):
            reply = await handle_read(request)
            return m.Rread(reply.tag, reply.data[:10]) if request.offset == 300 else reply

        server.handlers[m.Tread] = short_at_300
        assert await client.root.read_file("f", window=3) == content


async def test_windowed_read_raises_the_servers_error_unwrapped():
    async with served(tree={"f": bytearray(b"x" * 50000)}) as (server, client):
        handle_read = server.handlers[m.Tread]

        async def fail_later(request):
            if request.offset > 0:
                raise OSError(errno.EIO, "disk on fire")
            return await handle_read(request)

        server.handlers[m.Tread] = fail_later
        with pytest.raises(OSError) as caught:
            await client.root.read_file("f", window=4)
        assert caught.value.errno == errno.EIO and caught.value.filename == "f"
        with trio.fail_after(1):
            while client.in_flight or len(client.fids) != 1:
                await trio.sleep(0.001)
