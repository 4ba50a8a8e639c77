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


@pytest.fixture
async def mapped_client(export):
    from ninep.fs.host import HostFilesystem
    try:
        os.setxattr(export, "user.probe", b"1")
    except OSError:
        pytest.skip("no user xattrs here")
    fs = HostFilesystem(str(export), identity="mapped")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, fs, ["tcp://127.0.0.1:0"])
        async with connect(server.addresses[0], msize=65536 + 24) as c:
            yield c
        server.shutdown()
    await fs.aclose()


async def test_mapped_reserved_xattrs_and_devices_over_the_wire(mapped_client, export):
    """A hostile client on a mapped export: no way to read or forge user.virtfs.*
    (Txattrwalk, Txattrcreate+clunk, listing), and a device node it makes is a plain
    host file that is never opened."""
    import stat
    root = mapped_client.root
    await root.write_file("f", b"x")
    before = os.getxattr(export / "f", "user.virtfs.uid")
    await root.mknod("null", stat.S_IFCHR | 0o666, 1, 3)
    assert stat.S_ISREG(os.lstat(export / "null").st_mode)
    for name in ("user.virtfs.uid", "user.virtfs.mode"):
        with pytest.raises(OSError) as info:
            await root.get_xattr(name, "f")
        assert info.value.errno == errno.ENODATA
        with pytest.raises(OSError) as info:
            await root.set_xattr(name, b"\x39\x05\0\0", path="f")
        assert info.value.errno == errno.EACCES
    assert not [n for n in await root.list_xattrs("f") if n.startswith("user.virtfs.")]
    assert os.getxattr(export / "f", "user.virtfs.uid") == before
    assert (await root.stat("f")).uid == int.from_bytes(before, "little") != 1337
    with pytest.raises(OSError) as info:
        await root.read_file("null")
    assert info.value.errno == errno.ENXIO
    assert (await root.stat("null")).mode == stat.S_IFCHR | 0o666
