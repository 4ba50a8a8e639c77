"""Every handler's checks and books, over an in-memory connection with MemFilesystem."""

import errno
import stat

import pytest

from ninep.fs.backend import Credentials
from ninep.protocol import messages as m
from ninep.protocol.codec import unpack_dirents
from ninep.protocol.constants import NOFID, NONUNAME, OpenFlags
from ninep.server.session import Export, Limits

from srv_memfs import MemFilesystem
from srv_wire import served

RDONLY, WRONLY, RDWR = int(OpenFlags.RDONLY), int(OpenFlags.WRONLY), int(OpenFlags.RDWR)


def err(code):
    return lambda reply: reply == m.Rlerror(reply.tag, code)


@pytest.fixture
def fs():
    fs = MemFilesystem()
    fs.add("etc/passwd", b"root:x:0:0")
    fs.add("etc/hosts", b"127.0.0.1 localhost")
    fs.add("bin/sh", b"ELF")
    return fs


async def test_version_negotiation():
    async with served(MemFilesystem(), limits=Limits(max_msize=8192)) as ([peer], _):
        assert await peer.rpc(m.Tversion(0xFFFF, 1 << 20, "9P2000.L")) == m.Rversion(0xFFFF, 8192, "9P2000.L")
        assert await peer.rpc(m.Tversion(0xFFFF, 4096, "9P2000.L")) == m.Rversion(0xFFFF, 4096, "9P2000.L")
        assert await peer.rpc(m.Tversion(0xFFFF, 8192, "9P2000.L.google")) == m.Rversion(0xFFFF, 8192, "unknown")
        assert await peer.rpc(m.Tversion(0xFFFF, 8192, "9P2000.u")) == m.Rversion(0xFFFF, 8192, "unknown")
        # Not negotiated: everything else is refused.
        assert err(errno.EPROTO)(await peer.rpc(m.Tattach(1, 0, NOFID, "", "", 0)))


async def test_version_below_4096_is_refused_never_enlarged():
    """The reply's msize may not exceed the client's: an msize below 4096 (which the
    kernel never sends) gets Rversion(its own msize, "unknown"), and the session
    speaks nothing until a Tversion with a usable msize."""
    async with served(MemFilesystem()) as ([peer], _):
        assert await peer.rpc(m.Tversion(0xFFFF, 4095, "9P2000.L")) == m.Rversion(0xFFFF, 4095, "unknown")
        assert err(errno.EPROTO)(await peer.rpc(m.Tattach(1, 0, NOFID, "", "", 0)))
        assert await peer.rpc(m.Tversion(0xFFFF, 512, "9P2000.L")) == m.Rversion(0xFFFF, 512, "unknown")
        await peer.start(msize=8192)  # a usable msize afterwards works
        assert isinstance(await peer.rpc(m.Tgetattr(2, 0, 0x7FF)), m.Rgetattr)
    # Too small for any Rversion: Rlerror(ERANGE), and the next frame is too big.
    async with served(MemFilesystem()) as ([peer], _):
        assert await peer.rpc(m.Tversion(0xFFFF, 0, "9P2000.L")) == m.Rlerror(0xFFFF, errno.ERANGE)
        await peer.send(m.Tversion(0xFFFF, 8192, "9P2000.L"))
        assert await peer.at_eof()


async def test_tversion_clunks_every_fid(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("etc",))), m.Rwalk)
        assert fs.open_files == 2
        await peer.rpc(m.Tversion(0xFFFF, 65536, "9P2000.L"))
        assert fs.open_files == 0
        assert err(errno.EBADF)(await peer.rpc(m.Tgetattr(3, 0, 0x7FF)))


async def test_attach_identity_and_export_selection(fs):
    other = MemFilesystem()
    exports = {"main": Export(fs), "squashed": Export(other, squash=Credentials(1000, 1000))}
    async with served(exports) as ([peer], _):
        await peer.start(n_uname=NONUNAME)
        assert fs.attaches[-1] == Credentials(None, None)
        assert isinstance(await peer.rpc(m.Tattach(2, 1, NOFID, "root", "/main", 0)), m.Rattach)
        assert fs.attaches[-1].uid == 0 and fs.attaches[-1].gid == 0
        assert isinstance(await peer.rpc(m.Tattach(3, 2, NOFID, "root", "squashed", 0)), m.Rattach)
        assert other.attaches == [Credentials(1000, 1000)]
        assert err(errno.ENOENT)(await peer.rpc(m.Tattach(4, 3, NOFID, "root", "nope", 0)))
        assert err(errno.EBADF)(await peer.rpc(m.Tattach(5, 0, NOFID, "root", "", 0)))  # fid 0 in use
        assert err(errno.ENOSYS)(await peer.rpc(m.Tauth(6, 9, "root", "", 0)))
        assert err(errno.EBADF)(await peer.rpc(m.Tattach(7, 9, 8, "root", "", 0)))  # afid


async def test_unknown_uid_falls_back_to_gid_equal_uid(fs):
    async with served(fs) as ([peer], _):
        await peer.start(n_uname=54321)
        assert fs.attaches[-1] == Credentials(54321, 54321)


async def test_walk_full_partial_and_failed(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        reply = await peer.rpc(m.Twalk(1, 0, 1, ("etc", "passwd")))
        assert len(reply.qids) == 2 and reply.qids[0].type == 0x80
        # Partial: fewer qids and newfid not created.
        reply = await peer.rpc(m.Twalk(2, 0, 2, ("etc", "missing", "x")))
        assert isinstance(reply, m.Rwalk) and len(reply.qids) == 1
        assert err(errno.EBADF)(await peer.rpc(m.Tgetattr(3, 2, 0x7FF)))
        # First element fails: Rlerror.
        assert err(errno.ENOENT)(await peer.rpc(m.Twalk(4, 0, 2, ("missing",))))
        # newfid in use.
        assert err(errno.EBADF)(await peer.rpc(m.Twalk(5, 0, 1, ("bin",))))
        # newfid == fid: replaced only on full success.
        await peer.rpc(m.Twalk(6, 0, 4, ("etc",)))
        assert len((await peer.rpc(m.Twalk(7, 4, 4, ("passwd", "missing")))).qids) == 1
        assert stat.S_ISDIR((await peer.rpc(m.Tgetattr(8, 4, 0x7FF))).mode)
        assert len((await peer.rpc(m.Twalk(9, 4, 4, ("passwd",)))).qids) == 1
        assert (await peer.rpc(m.Tgetattr(9, 4, 0x7FF))).size == len(b"root:x:0:0")
        await peer.rpc(m.Tclunk(9, 4))
        # Bad names: first -> error, later -> partial walk.
        assert err(errno.ENOENT)(await peer.rpc(m.Twalk(10, 0, 3, ("a/b",))))
        assert len((await peer.rpc(m.Twalk(11, 0, 3, ("etc", "", "x")))).qids) == 1
        assert err(errno.EBADF)(await peer.rpc(m.Tgetattr(12, 3, 0x7FF)))
        # Clone with no names.
        assert await peer.rpc(m.Twalk(13, 0, 4, ())) == m.Rwalk(13, ())
        assert fs.open_files == 3  # fids 0, 1, 4


async def test_open_modes_and_counts(fs):
    async with served(fs) as ([peer], _):
        await peer.start(msize=4096)
        await peer.rpc(m.Twalk(1, 0, 1, ("etc", "passwd")))
        assert err(errno.EBADF)(await peer.rpc(m.Tread(2, 1, 0, 10)))  # not open
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, RDONLY)), m.Rlopen)
        assert err(errno.EINVAL)(await peer.rpc(m.Tlopen(4, 1, RDONLY)))  # already open
        assert err(errno.EBADF)(await peer.rpc(m.Twalk(5, 1, 1, ())))  # opened fid onto itself
        assert err(errno.EBADF)(await peer.rpc(m.Twrite(6, 1, 0, b"x")))  # O_RDONLY
        assert await peer.rpc(m.Tread(7, 1, 5, 100)) == m.Rread(7, b"x:0:0")
        # Count is clamped to msize - 24.
        fs.add("big", b"z" * 10000)
        await peer.rpc(m.Twalk(9, 0, 2, ("big",)))
        await peer.rpc(m.Tlopen(10, 2, RDWR))
        assert len((await peer.rpc(m.Tread(11, 2, 0, 1 << 20))).data) == 4096 - 24
        assert await peer.rpc(m.Twrite(12, 2, 10000, b"tail")) == m.Rwrite(12, 4)


async def test_create_mkdir_readdir_and_names(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ()))
        for i, bad in enumerate(["", ".", "..", "a/b", "x" * 256]):
            reply = await peer.rpc(m.Tlcreate(10 + i, 1, bad, RDWR, 0o644, 0))
            assert isinstance(reply, m.Rlerror) and reply.ecode in (errno.EINVAL, errno.ENOENT, errno.ENAMETOOLONG)
        reply = await peer.rpc(m.Tlcreate(2, 1, "new", RDWR, 0o644, 0))
        assert isinstance(reply, m.Rlcreate)
        assert await peer.rpc(m.Twrite(3, 1, 0, b"hello")) == m.Rwrite(3, 5)
        assert await peer.rpc(m.Tread(4, 1, 0, 100)) == m.Rread(4, b"hello")
        assert isinstance(await peer.rpc(m.Tmkdir(5, 0, "dir", 0o755, 0)), m.Rmkdir)
        assert err(errno.EINVAL)(await peer.rpc(m.Tmkdir(6, 0, "..", 0o755, 0)))
        await peer.rpc(m.Twalk(7, 0, 2, ()))
        assert err(errno.EBADF)(await peer.rpc(m.Treaddir(8, 2, 0, 4096)))  # not open
        await peer.rpc(m.Tlopen(9, 2, RDONLY))
        names = [d.name for d in unpack_dirents((await peer.rpc(m.Treaddir(20, 2, 0, 4096))).data)]
        assert names == [".", "..", "etc", "bin", "new", "dir"]
        # A small count packs only what fits; the cookie resumes.
        first = unpack_dirents((await peer.rpc(m.Treaddir(21, 2, 0, 60))).data)
        assert [d.name for d in first] == [".", ".."]
        rest = unpack_dirents((await peer.rpc(m.Treaddir(22, 2, first[-1].offset, 4096))).data)
        assert rest[0].name == "etc"


async def test_remove_rename_unlink_link_symlink(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("etc", "hosts")))
        await peer.rpc(m.Twalk(2, 0, 2, ("bin",)))
        assert isinstance(await peer.rpc(m.Trename(3, 1, 2, "hosts2")), m.Rrename)
        assert "hosts2" in fs.root.children["bin"].children
        assert isinstance(await peer.rpc(m.Trenameat(4, 2, "hosts2", 0, "h")), m.Rrenameat)
        assert err(errno.EINVAL)(await peer.rpc(m.Trenameat(5, 0, "h", 2, ".")))
        assert isinstance(await peer.rpc(m.Tsymlink(6, 0, "link", "/etc/passwd", 0)), m.Rsymlink)
        await peer.rpc(m.Twalk(7, 0, 3, ("link",)))
        assert await peer.rpc(m.Treadlink(8, 3)) == m.Rreadlink(8, "/etc/passwd")
        assert isinstance(await peer.rpc(m.Tunlinkat(9, 0, "link", 0)), m.Runlinkat)
        assert err(errno.ENOENT)(await peer.rpc(m.Tunlinkat(10, 0, "link", 0)))
        # Tremove clunks the fid even when the remove fails.
        assert isinstance(await peer.rpc(m.Tremove(11, 1)), m.Rremove)
        assert err(errno.ENOENT)(await peer.rpc(m.Tremove(12, 3)))
        assert err(errno.EBADF)(await peer.rpc(m.Tclunk(13, 3)))
        assert err(errno.EROFS)(await peer.rpc(m.Tlink(14, 0, 2, "hard")))  # default refuses
        assert err(errno.EROFS)(await peer.rpc(m.Tmknod(15, 0, "dev", 0o20644, 1, 3, 0)))
        assert (await peer.rpc(m.Tstatfs(16, 0))).bfree == 50
        assert isinstance(await peer.rpc(m.Tsetattr(17, 2, 1, 0o700, 0, 0, 0, 0, 0, 0, 0)), m.Rsetattr)
        assert isinstance(await peer.rpc(m.Tfsync(18, 2, 0)), m.Rfsync)
        assert fs.open_files == 2  # fids 0 and 2


async def test_xattrs(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("etc",)))
        assert isinstance(await peer.rpc(m.Txattrcreate(2, 1, "user.acl", 6, 0)), m.Rxattrcreate)
        assert err(errno.EBADF)(await peer.rpc(m.Tread(3, 1, 0, 10)))  # write-only
        assert await peer.rpc(m.Twrite(4, 1, 0, b"abc")) == m.Rwrite(4, 3)
        assert err(errno.EINVAL)(await peer.rpc(m.Twrite(5, 1, 0, b"def")))  # not sequential
        assert await peer.rpc(m.Twrite(6, 1, 3, b"def")) == m.Rwrite(6, 3)
        assert fs.root.children["etc"].xattrs == {}  # committed only at clunk
        assert isinstance(await peer.rpc(m.Tclunk(7, 1)), m.Rclunk)
        assert fs.root.children["etc"].xattrs == {"user.acl": b"abcdef"}
        # Read it back, and the list.
        await peer.rpc(m.Twalk(8, 0, 1, ("etc",)))
        assert await peer.rpc(m.Txattrwalk(9, 1, 2, "user.acl")) == m.Rxattrwalk(9, 6)
        assert await peer.rpc(m.Tread(10, 2, 2, 3)) == m.Rread(10, b"cde")
        assert err(errno.EBADF)(await peer.rpc(m.Twrite(11, 2, 0, b"x")))
        assert err(errno.EBADF)(await peer.rpc(m.Tgetattr(12, 2, 0x7FF)))
        assert await peer.rpc(m.Txattrwalk(13, 1, 3, "")) == m.Rxattrwalk(13, len(b"user.acl\0"))
        assert await peer.rpc(m.Tread(14, 3, 0, 100)) == m.Rread(14, b"user.acl\0")
        assert err(errno.ENODATA)(await peer.rpc(m.Txattrwalk(15, 1, 4, "user.none")))
        # Commit errors come back on Rclunk; size 0 removes.
        await peer.rpc(m.Twalk(16, 0, 5, ("etc",)))
        await peer.rpc(m.Txattrcreate(17, 5, "forbidden.x", 1, 0))
        await peer.rpc(m.Twrite(18, 5, 0, b"x"))
        assert err(errno.EPERM)(await peer.rpc(m.Tclunk(19, 5)))
        await peer.rpc(m.Twalk(20, 0, 5, ("etc",)))
        await peer.rpc(m.Txattrcreate(21, 5, "user.acl", 0, 0))
        assert isinstance(await peer.rpc(m.Tclunk(22, 5)), m.Rclunk)
        assert fs.root.children["etc"].xattrs == {}
        assert err(errno.E2BIG)(await peer.rpc(m.Txattrcreate(23, 1, "user.big", 65537, 0)))


async def test_protocol_misuse_gets_errors_not_crashes(fs):
    async with served(fs) as ([peer], _):
        await peer.start()
        assert err(errno.EBADF)(await peer.rpc(m.Tgetattr(1, 77, 0x7FF)))
        assert err(errno.EBADF)(await peer.rpc(m.Tclunk(2, 77)))
        assert err(errno.ENOSYS)(await peer.rpc(m.Topen(3, 0, 0)))
        assert err(errno.ENOSYS)(await peer.rpc(m.Tstat(4, 0)))
        assert err(errno.EINVAL)(await peer.rpc(m.Rclunk(5)))
        assert err(errno.EINVAL)(await peer.rpc(m.Rlerror(6, 2)))
        assert err(errno.EINVAL)(await peer.rpc(m.Tlock(7, 0, 9, 0, 0, 0, 1, "x")))
        assert isinstance(await peer.rpc(m.Tgetattr(8, 0, 0x7FF)), m.Rgetattr)


async def test_fid_limit(fs):
    async with served(fs, limits=Limits(max_fids=3)) as ([peer], _):
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ()))
        await peer.rpc(m.Twalk(2, 0, 2, ()))
        assert err(errno.EMFILE)(await peer.rpc(m.Twalk(3, 0, 3, ())))
        await peer.rpc(m.Tclunk(4, 2))
        assert isinstance(await peer.rpc(m.Twalk(5, 0, 3, ())), m.Rwalk)
