"""Drive a backend through the contract the server uses: attach, walk, open, read."""

from __future__ import annotations

from ninep.fs.backend import Credentials, File, Filesystem
from ninep.protocol.constants import OpenFlags

SERVER_CREDS = Credentials(uid=None, gid=None)


async def walk(root: File, path: str) -> File:
    names = [n for n in path.split("/") if n]
    if not names:
        return await root.clone()
    qids, file = await root.walk(names)
    assert file is not None, f"walk {path} stopped after {len(qids)} names"
    assert len(qids) == len(names)
    return file


async def read_all(root: File, path: str, chunk: int = 8192) -> bytes:
    file = await walk(root, path)
    try:
        await file.open(OpenFlags.RDONLY)
        data = bytearray()
        while True:
            piece = await file.read(len(data), chunk)
            if not piece:
                return bytes(data)
            data += piece
    finally:
        await file.close()


async def write_to(root: File, path: str, data: bytes, flags: int = OpenFlags.WRONLY) -> int:
    file = await walk(root, path)
    try:
        await file.open(flags)
        return await file.write(0, memoryview(data))
    finally:
        await file.close()


async def list_dir(root: File, path: str = "") -> dict[str, object]:
    """name -> Dirent, read in small batches so the offsets are exercised."""
    file = await walk(root, path)
    try:
        await file.open(OpenFlags.RDONLY | OpenFlags.DIRECTORY)
        entries, offset = {}, 0
        while True:
            batch = list(await file.readdir(offset, 64))[:2]
            if not batch:
                return entries
            for dirent in batch:
                entries[dirent.name] = dirent
            offset = batch[-1].offset
    finally:
        await file.close()


async def attach(fs: Filesystem) -> File:
    return await fs.attach("", SERVER_CREDS)


from contextlib import asynccontextmanager  # noqa: E402  (served() below needs the server)

import trio  # noqa: E402


@asynccontextmanager
async def served(filesystem, **client_options):
    """Serve ``filesystem`` on a loopback TCP port; yield a connected client."""
    from ninep.client import connect
    from ninep.server import serve

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, filesystem, "tcp://127.0.0.1:0")
        try:
            async with connect(server.addresses[0], **client_options) as client:
                yield client
        finally:
            server.shutdown()
