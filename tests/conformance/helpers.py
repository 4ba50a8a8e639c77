"""Small async helpers over the File contract, shared by the conformance tests."""

from __future__ import annotations

import errno
from contextlib import asynccontextmanager

import pytest

from ninep.fs.backend import File
from ninep.protocol.messages import Dirent


async def walk_to(start: File, path: str) -> File:
    """Walk every component of ``path``; fail the test unless all were walked."""
    names = [n for n in path.split("/") if n]
    if not names:
        return await start.clone()
    qids, new = await start.walk(names)
    assert new is not None and len(qids) == len(names), f"partial walk to {path}"
    return new


@asynccontextmanager
async def walked(start: File, path: str, open_flags: int | None = None):
    file = await walk_to(start, path)
    try:
        if open_flags is not None:
            await file.open(open_flags)
        yield file
    finally:
        await file.close()


async def read_all(file: File, chunk: int = 8192) -> bytes:
    out = bytearray()
    while True:
        data = await file.read(len(out), chunk)
        if not data:
            return bytes(out)
        out += data


async def list_dir(directory: File, count: int = 65536) -> list[Dirent]:
    """Every entry, resuming from each batch's last offset as a client would."""
    entries: list[Dirent] = []
    offset = 0
    while batch := list(await directory.readdir(offset, count)):
        entries.extend(batch)
        offset = batch[-1].offset
        assert len(entries) < 100_000, "readdir does not advance"
    return entries


def raises_errno(*codes: int):
    """pytest.raises(OSError) whose errno must be one of ``codes``."""
    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(OSError)
            self._info = self._ctx.__enter__()
            return self._info

        def __exit__(self, *exc):
            result = self._ctx.__exit__(*exc)
            got = self._info.value.errno
            assert got in codes, f"errno {errno.errorcode.get(got, got)}, expected " + \
                "/".join(errno.errorcode[c] for c in codes)
            return result
    return _Check()
