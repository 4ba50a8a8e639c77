"""examples/tarfs.py: an archive built here, served, and read back with the client."""

import io
import stat
import tarfile

import pytest
import trio

from ninep.client import connect
from ninep.server import serve

import tarfs

BIG = bytes(range(256)) * 1000  # several reads at any msize


def add(archive: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
        **fields) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.mode = fields.pop("mode", 0o644)
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    archive.addfile(info, io.BytesIO(data) if data else None)


def build(path, mode: str = "w") -> None:
    with tarfile.open(path, mode) as archive:
        add(archive, "./", tarfile.DIRTYPE, mode=0o755)
        add(archive, "./etc/", tarfile.DIRTYPE, mode=0o750, uid=0, gid=42)
        add(archive, "./etc/hostname", data=b"tarbox\n", uid=1000, gid=1000)
        add(archive, "./usr/bin/tool", data=BIG, mode=0o755)  # parents not in the archive
        add(archive, "./usr/bin/alias", tarfile.LNKTYPE, linkname="usr/bin/tool")
        add(archive, "./bin", tarfile.SYMTYPE, linkname="usr/bin", mode=0o777)
        add(archive, "./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add(archive, "./run/initctl", tarfile.FIFOTYPE, mode=0o600)
        add(archive, "../escape", data=b"no")


@pytest.mark.parametrize("compression", ["", "gz"])
async def test_tar_archive_served_as_is(tmp_path, compression):
    path = tmp_path / f"root.tar{'.' + compression if compression else ''}"
    build(path, f"w:{compression}" if compression else "w")
    filesystem = tarfs.TarFilesystem(str(path))
    assert (filesystem.archive.fd is None) == bool(compression)
    assert filesystem.skipped == ["../escape"]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, filesystem, "tcp://127.0.0.1:0")
        async with connect(server.addresses[0], msize=8192) as client:
            root = client.root
            assert await root.read_file("etc/hostname") == b"tarbox\n"
            assert await root.read_file("usr/bin/tool") == BIG
            assert await root.read_file("usr/bin/../../etc/hostname") == b"tarbox\n"
            assert await root.readlink("bin") == "usr/bin"
            tool, alias = await root.stat("usr/bin/tool"), await root.stat("usr/bin/alias")
            assert tool.qid == alias.qid and tool.nlink == 2 and tool.size == len(BIG)
            assert stat.S_IMODE(tool.mode) == 0o755 and tool.mtime_sec == 1_700_000_000
            etc = await root.stat("etc")
            assert stat.S_ISDIR(etc.mode) and (stat.S_IMODE(etc.mode), etc.gid) == (0o750, 42)
            hostname = await root.stat("etc/hostname")
            assert (hostname.uid, hostname.gid) == (1000, 1000)
            null = await root.stat("dev/null")
            assert stat.S_ISCHR(null.mode) and null.rdev == (1 << 8 | 3)
            assert stat.S_ISFIFO((await root.stat("run/initctl")).mode)
            names = sorted(e.name for e in await root.listdir(""))
            assert names == [".", "..", "bin", "dev", "etc", "run", "usr"]
            with pytest.raises(OSError):
                await root.open("etc/hostname", 1)  # O_WRONLY: the archive is read-only
        server.shutdown()
    assert filesystem.archive.fd is None  # the server closed the export
