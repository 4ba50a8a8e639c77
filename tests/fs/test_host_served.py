"""The host export behind the real server and client: the contract as the wire sees it."""

import errno
import os

import pytest
import trio

import ninep.server
from ninep.client import connect


@pytest.fixture
async def client(hostfs):
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, hostfs, ["tcp://127.0.0.1:0"])
        async with connect(server.addresses[0], msize=65536 + 24) as c:
            yield c
        server.shutdown()


async def test_files_and_directories_over_the_wire(client, export):
    root = client.root
    await root.write_file("d/new", b"over 9p")
    assert (export / "d" / "new").read_bytes() == b"over 9p"
    assert await root.read_file("d/f") == b"inside\n"
    for i in range(400):  # more than one Rreaddir at this msize
        (export / "d" / f"entry-{i:04}-with-a-longish-name").write_bytes(b"")
    names = [e.name for e in await root.listdir("d")]
    assert len(names) == len(set(names)) == 400 + 2 + 2  # f, new, ".", ".."
    await root.mkdir("d/sub")
    await root.rename("d/new", "d/sub/moved")
    assert (export / "d" / "sub" / "moved").exists()
    await root.unlink("d/sub/moved")
    await root.rmdir("d/sub")
    assert not (export / "d" / "sub").exists() and not (export / "d" / "new").exists()


async def test_big_reads_over_the_wire(client, export):
    data = os.urandom(3 * 65536 + 17)
    (export / "big").write_bytes(data)
    assert await client.root.read_file("big") == data


async def test_escape_refused_over_the_wire(client, export, outside):
    os.symlink(str(outside), export / "out")
    with pytest.raises(OSError) as info:
        await client.root.read_file("out/secret")
    assert info.value.errno in (errno.ENOTDIR, errno.ENOENT, errno.ELOOP)
    assert await client.root.readlink("out") == str(outside)
    assert await client.root.read_file("../../d/f") == b"inside\n"
