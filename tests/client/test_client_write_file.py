"""write_file opens an existing file rather than re-creating it, as the kernel does."""

import ninep.client
import ninep.server
from ninep.fs.synthetic import ControlFile, Directory, StaticFile
from ninep.fs.synthetic.ramfs import RamFilesystem


async def test_write_file_reaches_a_control_file_that_refuses_create(nursery):
    received: list[bytes] = []
    tree = Directory({"ctl": ControlFile(on_write=received.append), "ro": StaticFile(b"x")})
    server = await nursery.start(ninep.server.serve, tree, ["tcp://127.0.0.1:0"])
    async with ninep.client.connect(str(server.addresses[0])) as client:
        await client.root.write_file("ctl", b"reload\n")
        assert received == [b"reload\n"]
        # A name that does not exist is created: here the tree refuses, with its errno.
        try:
            await client.root.write_file("new", b"y")
        except OSError as exc:
            assert exc.errno == 30  # EROFS from Tlcreate, not ENOENT from the open
        else:
            raise AssertionError("a program tree accepted a new file")
    server.shutdown()


async def test_write_file_creates_then_truncates(nursery):
    server = await nursery.start(ninep.server.serve, RamFilesystem(), ["tcp://127.0.0.1:0"])
    async with ninep.client.connect(str(server.addresses[0])) as client:
        await client.root.write_file("f", b"longer content")
        await client.root.write_file("f", b"short")
        assert await client.root.read_file("f") == b"short"
    server.shutdown()
