"""Replies the Linux client cannot take must become errors, not wedge or drop the mount."""

import errno
import stat

from ninep.protocol import messages as m
from ninep.protocol.constants import OpenFlags

from srv_memfs import MemFile, MemFilesystem
from srv_wire import served

MSIZE = 8192


class ZeroWriteFile(MemFile):
    async def write(self, offset, data):
        return 0


async def test_reply_of_exactly_msize_becomes_erange():
    """net/9p/trans_fd.c fails the whole mount (EIO) on a reply whose size is >= msize."""
    fs = MemFilesystem()
    header = 4 + 1 + 2 + 2  # size type tag, then the string's length prefix
    for length in (MSIZE - header - 1, MSIZE - header):
        link = fs.add(f"link{length}", mode=stat.S_IFLNK | 0o777)
        link.target = "x" * length
    async with served(fs) as ([peer], _):
        await peer.start(msize=MSIZE)
        for tag, length, fits in ((2, MSIZE - header - 1, True), (3, MSIZE - header, False)):
            assert isinstance(await peer.rpc(m.Twalk(tag, 0, tag, (f"link{length}",))), m.Rwalk)
            reply = await peer.rpc(m.Treadlink(tag, tag))
            if fits:
                assert reply == m.Rreadlink(tag, "x" * length)
            else:
                assert reply == m.Rlerror(tag, errno.ERANGE)


async def test_write_of_nothing_for_data_is_an_error(monkeypatch):
    """Linux retries short writes: an Rwrite(0) for a non-empty Twrite loops forever."""
    fs = MemFilesystem()
    fs.add("f", b"")
    async with served(fs) as ([peer], _):
        await peer.start()
        monkeypatch.setattr(MemFile, "write", ZeroWriteFile.write)
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, int(OpenFlags.WRONLY))), m.Rlopen)
        assert await peer.rpc(m.Twrite(4, 1, 0, b"data")) == m.Rlerror(4, errno.EIO)
        assert await peer.rpc(m.Twrite(5, 1, 0, b"")) == m.Rwrite(5, 0)
