"""Per-connection limits on what one client can make the server hold: xattr values in
fids, lock ranges, fids. Each is refused with its errno and a rate-limited log line,
frees up again when the client lets go, and never touches another connection."""

import errno
import logging

import pytest

from ninep.protocol import messages as m
from ninep.protocol.constants import LockStatus, LockType, OpenFlags
from ninep.server.locks import LockOwner
from ninep.server.session import Limits

from srv_memfs import MemFilesystem
from srv_wire import served

WR, UN = LockType.WRLCK, LockType.UNLCK


def err(code):
    return lambda reply: reply == m.Rlerror(reply.tag, code)


@pytest.fixture
def fs():
    fs = MemFilesystem()
    fs.add("f", b"data")
    return fs


async def test_pending_xattr_bytes_are_capped_per_connection(fs, caplog):
    limits = Limits(max_xattr_bytes=3 * 1000)
    async with served(fs, limits=limits, connections=2) as ([a, b], conns):
        await a.start()
        await b.start()
        for fid in (1, 2, 3, 4):
            assert isinstance(await a.rpc(m.Twalk(1, 0, fid, ("f",))), m.Rwalk)
        for fid in (1, 2, 3):
            assert await a.rpc(m.Txattrcreate(2, fid, f"user.{fid}", 1000, 0)) == m.Rxattrcreate(2)
        with caplog.at_level(logging.WARNING, "ninep.server"):
            assert err(errno.EDQUOT)(await a.rpc(m.Txattrcreate(3, 4, "user.4", 1, 0)))
        assert "refused (xattr limit)" in caplog.text
        # Another connection has its own budget.
        assert isinstance(await b.rpc(m.Twalk(4, 0, 1, ("f",))), m.Rwalk)
        assert await b.rpc(m.Txattrcreate(5, 1, "user.b", 1000, 0)) == m.Rxattrcreate(5)
        # Writing the value and clunking (the commit) gives the bytes back.
        assert await a.rpc(m.Twrite(6, 1, 0, b"x" * 1000)) == m.Rwrite(6, 1000)
        assert await a.rpc(m.Tclunk(7, 1)) == m.Rclunk(7)
        assert fs.root.children["f"].xattrs["user.1"] == b"x" * 1000
        assert await a.rpc(m.Txattrcreate(8, 4, "user.4", 1000, 0)) == m.Rxattrcreate(8)
        # Values read by Txattrwalk are held too (until the clunk): ENOMEM past it.
        assert isinstance(await a.rpc(m.Twalk(9, 0, 5, ("f",))), m.Rwalk)
        assert err(errno.ENOMEM)(await a.rpc(m.Txattrwalk(10, 5, 6, "user.1")))
        for tag, fid in ((11, 2), (12, 3)):
            await a.rpc(m.Tclunk(tag, fid))  # never written: a failed commit, but freed
        assert await a.rpc(m.Txattrwalk(13, 5, 6, "user.1")) == m.Rxattrwalk(13, 1000)
        assert await a.rpc(m.Tread(14, 6, 0, 2000)) == m.Rread(14, b"x" * 1000)
        assert conns[0].session.xattr_bytes == 2000
        assert conns[1].session.xattr_bytes == 1000


async def test_lock_ranges_are_capped_per_connection(fs, caplog):
    async with served(fs, limits=Limits(max_locks=10), connections=2) as ([a, b], conns):
        for peer in (a, b):
            await peer.start()
            assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await peer.rpc(m.Tlopen(2, 1, OpenFlags.RDWR)), m.Rlopen)
        for i in range(10):
            assert await a.rpc(m.Tlock(3, 1, WR, 0, 10 * i, 5, 1, "a")) == m.Rlock(3, LockStatus.SUCCESS)
        with caplog.at_level(logging.WARNING, "ninep.server"):
            assert err(errno.ENOLCK)(await a.rpc(m.Tlock(4, 1, WR, 0, 200, 1, 1, "a")))
            # Another process of the same client counts against the same connection.
            assert err(errno.ENOLCK)(await a.rpc(m.Tlock(5, 1, WR, 0, 1000, 9, 2, "a")))
            # A hole punched in a range would add one too (POSIX allows ENOLCK there).
            assert err(errno.ENOLCK)(await a.rpc(m.Tlock(5, 1, UN, 0, 2, 1, 1, "a")))
        assert "refused (lock limit)" in caplog.text
        # Growing a range it holds, or another client, is fine.
        assert await a.rpc(m.Tlock(6, 1, WR, 0, 1, 5, 1, "a")) == m.Rlock(6, LockStatus.SUCCESS)
        assert await b.rpc(m.Tlock(7, 1, WR, 0, 500, 1, 7, "b")) == m.Rlock(7, LockStatus.SUCCESS)
        # Unlocking frees the room again.
        assert await a.rpc(m.Tlock(8, 1, UN, 0, 0, 0, 1, "a")) == m.Rlock(8, LockStatus.SUCCESS)
        assert await a.rpc(m.Tlock(9, 1, WR, 0, 200, 1, 1, "a")) == m.Rlock(9, LockStatus.SUCCESS)
        table = conns[0].locks.table
        assert table.held_by(conns[0].session.connection_id) == 1


async def test_fid_limit_is_emfile_with_a_log_line(fs, caplog):
    async with served(fs, limits=Limits(max_fids=2)) as ([peer], _):
        await peer.start()
        assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ())), m.Rwalk)
        with caplog.at_level(logging.WARNING, "ninep.server"):
            for tag in range(2, 12):
                assert err(errno.EMFILE)(await peer.rpc(m.Twalk(tag, 0, 2, ())))
        lines = [r for r in caplog.records if "fid limit" in r.getMessage()]
        assert len(lines) == 3  # the first few; the rest are counted, not written


def test_limits_come_from_the_config_and_the_command_line(tmp_path):
    from ninep.cli import parse_limits
    from ninep.config import ConfigError, parse_config

    config = parse_config("exports: {a: {path: /a}}\nmax_locks: 100\nmax_xattr_bytes: 2M\n")
    assert config.limits == {"max_locks": 100, "max_xattr_bytes": 2 << 20}
    assert parse_limits(["max_fids=10", "max_xattr_bytes=64K"]) == {
        "max_fids": 10, "max_xattr_bytes": 65536}
    with pytest.raises(ValueError):
        parse_limits(["max_lock=1"])
    with pytest.raises(ConfigError, match="max_locks: must be at least 1"):
        parse_config("exports: {a: {path: /a}}\nmax_locks: 0\n")
    limits = Limits(**config.limits)
    assert (limits.max_locks, limits.max_fids) == (100, Limits().max_fids)


async def test_twenty_thousand_locks_on_one_file_stay_correct(fs):
    """A piles up 20,000 ranges on one file (pipelined) while B keeps asking for
    getattrs; then B's Tgetlock names the right range among them, B's Tlock in a gap
    is granted, B's blocking Tlock across A's waits, and A's clunk (its last fid there)
    frees all 20,000 at once and wakes it. The cost per call is
    benchmarks/locks.py's business; the count of work per call is test_server_locks'."""
    from ninep.protocol.constants import LockFlags

    RD = LockType.RDLCK
    async with served(fs, connections=2) as ([a, b], conns):
        for peer in (a, b):
            await peer.start()
            assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await peer.rpc(m.Tlopen(2, 1, OpenFlags.RDWR)), m.Rlopen)
        for first in range(0, 20000, 200):
            await a.send(*(m.Tlock(i % 200 + 10, 1, WR, 0, 4 * i, 2, 1, "a")
                           for i in range(first, first + 200)))
            assert isinstance(await b.rpc(m.Tgetattr(3, 1, 0x7FF)), m.Rgetattr)
            for _ in range(200):
                reply = await a.recv()
                assert reply == m.Rlock(reply.tag, LockStatus.SUCCESS), reply
        table = conns[0].locks.table
        assert table.held_by(conns[0].session.connection_id) == 20000
        assert await b.rpc(m.Tgetlock(4, 1, RD, 40001, 100, 2, "b")) == \
            m.Rgetlock(4, WR, 40000, 2, 1, "a")
        assert await b.rpc(m.Tlock(5, 1, WR, 0, 40002, 2, 2, "b")) == m.Rlock(5, LockStatus.SUCCESS)
        assert await b.rpc(m.Tlock(6, 1, RD, 0, 0, 0, 2, "b")) == m.Rlock(6, LockStatus.BLOCKED)
        await b.send(m.Tlock(7, 1, RD, LockFlags.BLOCK, 0, 0, 2, "b"))
        assert await a.rpc(m.Tclunk(8, 1)) == m.Rclunk(8)
        assert await b.recv() == m.Rlock(7, LockStatus.SUCCESS)
        assert table.held_by(conns[0].session.connection_id) == 0
        assert [(h.type, h.start, h.length) for h in table.locks(next(iter(table._files)))] == \
            [(RD, 0, 0)]


async def test_one_client_cannot_take_every_fid_of_the_process(fs, monkeypatch):
    """The process's fids (fds, for a host export) are one budget: a heavy client is
    refused with ENFILE while a quarter is left, which light clients may still use;
    letting go makes room again."""
    from ninep.server import session as session_module

    monkeypatch.setattr(session_module.PROCESS_FIDS, "limit", 64)
    monkeypatch.setattr(session_module.PROCESS_FIDS, "used", 0)
    async with served(fs, connections=2) as ([a, b], _):
        await a.start()
        replies = [await a.rpc(m.Twalk(tag, 0, tag, ())) for tag in range(1, 80)]
        taken = sum(isinstance(r, m.Rwalk) for r in replies)
        assert taken == 47  # 48 with the root fid: 16 of 64 left
        assert all(err(errno.ENFILE)(r) for r in replies[taken:])
        await b.start()  # a light client still gets its fids
        assert [isinstance(await b.rpc(m.Twalk(2, 0, n, ())), m.Rwalk) for n in (1, 2, 3, 4)] == \
            [True, True, True, False]  # 4 = light: now b shares what is left, as a
        for n in range(1, 5):  # 52 -> 48 in use: still only a quarter left
            assert await a.rpc(m.Tclunk(90, n)) == m.Rclunk(90)
        assert err(errno.ENFILE)(await a.rpc(m.Twalk(91, 0, 1, ())))
        assert await a.rpc(m.Tclunk(92, 5)) == m.Rclunk(92)
        assert isinstance(await a.rpc(m.Twalk(93, 0, 1, ())), m.Rwalk)
    assert session_module.PROCESS_FIDS.used == 0  # every session gave its fids back


async def test_lock_owners_cost_what_their_ranges_do(fs):
    """What a Tlock's owner makes the server keep is bounded too: its client_id (up to
    64 KiB) counts against max_locks, one range per 256 characters, as long as the
    owner holds anything; one owner's ranges share one copy of it (each Tlock decodes
    its own); and a client locking and unlocking under ever new proc_ids does not grow
    the fid's list of owners to unlock at its close."""
    async with served(fs, limits=Limits(max_locks=1000)) as ([peer], conns):
        await peer.start(msize=1 << 20)
        assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(2, 1, OpenFlags.RDWR)), m.Rlopen)
        table, me = conns[0].locks.table, conns[0].session.connection_id
        big = "n" * 65535  # 255 ranges' worth
        for pid in (1, 2, 3):
            assert await peer.rpc(m.Tlock(3, 1, WR, 0, pid, 1, pid, big)) == m.Rlock(3, LockStatus.SUCCESS)
        assert table.held_by(me) == 3 * 256
        assert err(errno.ENOLCK)(await peer.rpc(m.Tlock(3, 1, WR, 0, 9, 1, 4, big)))
        assert await peer.rpc(m.Tlock(3, 1, UN, 0, 0, 0, 3, big)) == m.Rlock(3, LockStatus.SUCCESS)
        assert table.held_by(me) == 2 * 256
        for i in range(200):  # one owner, many ranges: one copy of its name
            assert await peer.rpc(m.Tlock(4, 1, WR, 0, 100 + 4 * i, 1, 1, big)) == \
                m.Rlock(4, LockStatus.SUCCESS)
        (file,) = table._files.values()
        assert len({id(o.client_id) for o in file.w_owners}) == 2
        assert table.held_by(me) == 2 * 256 + 200
        for pid in range(10, 1010):
            assert await peer.rpc(m.Tlock(5, 1, WR, 0, 5000, 1, pid, "h")) == m.Rlock(5, LockStatus.SUCCESS)
            assert await peer.rpc(m.Tlock(6, 1, UN, 0, 5000, 1, pid, "h")) == m.Rlock(6, LockStatus.SUCCESS)
        fid = conns[0].session.fids[1]
        assert len(fid.lock_owners) < 128
        assert LockOwner(me, big, 1) in fid.lock_owners
        assert await peer.rpc(m.Tclunk(7, 1)) == m.Rclunk(7)
        assert table.held_by(me) == 0 and len(table) == 0
