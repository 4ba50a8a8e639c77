"""The server of the VM tests, run as a program by ninep.vm (``server_argv``):

    python vm_union_server.py union ROOTFS_DIR unix:///path/ninepd.sock
        the host root directory with the examples mounted under /run/host
    python vm_union_server.py tarfs ROOTFS.tar unix:///path/ninepd.sock
        the root filesystem served straight from a tar archive (examples/tarfs.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))  # the examples are programs, not a package

import clock  # noqa: E402
import ctl  # noqa: E402
import hello  # noqa: E402
import tarfs  # noqa: E402

from ninep.fs.host import HostFilesystem  # noqa: E402
from ninep.fs.synthetic import Directory  # noqa: E402
from ninep.fs.union import UnionFilesystem  # noqa: E402
from ninep.server import serve  # noqa: E402


async def serve_union(rootfs: str, url: str) -> None:
    clock_tree, events = clock.make_clock(interval=0.5)
    union = UnionFilesystem(HostFilesystem(rootfs, read_only=True), {
        "run/host": Directory({"hello": hello.tree, "clock": clock_tree, "ctl": ctl.make_tree()}),
    })
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.tick_events, events, 1.0)
        await nursery.start(serve, union, url)


async def serve_tar(archive: str, url: str) -> None:
    await serve(tarfs.TarFilesystem(archive), url)


if __name__ == "__main__":
    mode, source, listen = sys.argv[1:4]
    trio.run(serve_union if mode == "union" else serve_tar, source, listen)
