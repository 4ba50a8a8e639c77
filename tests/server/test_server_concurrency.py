"""Tags, Tflush, locks across connections, disconnects, limits, malformed frames."""

import errno
import struct
from contextlib import asynccontextmanager

import trio
import trio.testing

from ninep.protocol import messages as m
from ninep.protocol.constants import LockFlags, LockStatus, LockType, OpenFlags
from ninep.server.connection import LockManager
from ninep.server.session import Limits

from srv_memfs import MemFilesystem
from srv_wire import served

RDWR = int(OpenFlags.RDWR)
WR, RD, UN = int(LockType.WRLCK), int(LockType.RDLCK), int(LockType.UNLCK)


def slow_fs():
    fs = MemFilesystem(slow={"slow": 10.0})
    fs.add("slow", b"late")
    fs.add("fast", b"now")
    return fs


async def open_file(peer, fid, name, tag=100):
    assert isinstance(await peer.rpc(m.Twalk(tag, 0, fid, (name,))), m.Rwalk)
    assert isinstance(await peer.rpc(m.Tlopen(tag, fid, RDWR)), m.Rlopen)


async def test_slow_request_does_not_block_others(autojump_clock):
    fs = slow_fs()
    async with served(fs) as ([peer], _):
        await peer.start()
        await open_file(peer, 1, "slow")
        await open_file(peer, 2, "fast")
        start = trio.current_time()
        await peer.send(m.Tread(5, 1, 0, 100), m.Tread(6, 2, 0, 100))
        assert await peer.recv() == m.Rread(6, b"now")
        assert trio.current_time() - start < 1
        assert await peer.recv() == m.Rread(5, b"late")
        assert trio.current_time() - start >= 10


async def test_flush_cancels_and_the_flushed_request_gets_no_reply(autojump_clock):
    fs = slow_fs()
    async with served(fs) as ([peer], _):
        await peer.start()
        await open_file(peer, 1, "slow")
        await peer.send(m.Tread(5, 1, 0, 100))
        await trio.sleep(1)
        await peer.send(m.Tflush(6, 5))
        assert await peer.recv() == m.Rflush(6)
        assert trio.current_time() < 5  # the flush did not wait the 10 s out
        # The connection goes on; tag 5 is free again.
        assert isinstance(await peer.rpc(m.Tstatfs(5, 1)), m.Rstatfs)


async def test_flush_of_unknown_tag_answers_at_once():
    async with served(MemFilesystem()) as ([peer], _):
        await peer.start()
        assert await peer.rpc(m.Tflush(3, 999)) == m.Rflush(3)


async def test_flush_after_completion_orders_reply_before_rflush(autojump_clock):
    fs = slow_fs()
    async with served(fs) as ([peer], _):
        await peer.start()
        await open_file(peer, 2, "fast")
        # Both in one segment: the read completes without a checkpoint inside the
        # backend, so whichever way the race goes the reply (if any) precedes Rflush.
        await peer.send(m.Tread(5, 2, 0, 100), m.Tflush(6, 5))
        first = await peer.recv()
        if first == m.Rread(5, b"now"):
            first = await peer.recv()
        assert first == m.Rflush(6)
        # A cancel that came too late must not hit the next request on that worker.
        for tag in range(10, 20):
            assert await peer.rpc(m.Tread(tag, 2, 0, 100)) == m.Rread(tag, b"now")


async def test_duplicate_in_flight_tag_is_refused(autojump_clock):
    fs = slow_fs()
    async with served(fs) as ([peer], _):
        await peer.start()
        await open_file(peer, 1, "slow")
        await peer.send(m.Tread(5, 1, 0, 100), m.Tstatfs(5, 1))
        assert await peer.recv() == m.Rlerror(5, errno.EINVAL)
        assert await peer.recv() == m.Rread(5, b"late")


async def test_blocked_lock_is_granted_on_unlock_and_getlock_is_truthful(autojump_clock):
    fs = slow_fs()
    async with served(fs, connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        assert await a.rpc(m.Tlock(1, 1, WR, 0, 10, 5, 42, "hostA")) == m.Rlock(1, LockStatus.SUCCESS)
        # Truthful Tgetlock from the other connection.
        assert await b.rpc(m.Tgetlock(2, 1, RD, 0, 0, 7, "hostB")) == m.Rgetlock(2, WR, 10, 5, 42, "hostA")
        assert await b.rpc(m.Tgetlock(3, 1, RD, 20, 0, 7, "hostB")) == m.Rgetlock(3, UN, 20, 0, 7, "hostB")
        # Without BLOCK: BLOCKED at once.
        assert await b.rpc(m.Tlock(4, 1, WR, 0, 0, 0, 7, "hostB")) == m.Rlock(4, LockStatus.BLOCKED)
        # With BLOCK: the reply waits for the unlock.
        await b.send(m.Tlock(5, 1, WR, LockFlags.BLOCK, 0, 0, 7, "hostB"))
        await trio.sleep(5)
        assert await a.rpc(m.Tlock(6, 1, UN, 0, 0, 0, 42, "hostA")) == m.Rlock(6, LockStatus.SUCCESS)
        assert await b.recv() == m.Rlock(5, LockStatus.SUCCESS)
        assert trio.current_time() >= 5
        assert await a.rpc(m.Tgetlock(7, 1, RD, 0, 0, 42, "hostA")) == m.Rgetlock(7, WR, 0, 0, 7, "hostB")


async def test_flush_of_a_blocked_lock(autojump_clock):
    async with served(slow_fs(), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        await a.rpc(m.Tlock(1, 1, WR, 0, 0, 0, 1, "a"))
        await b.send(m.Tlock(2, 1, WR, LockFlags.BLOCK, 0, 0, 2, "b"))
        await trio.sleep(1)
        assert await b.rpc(m.Tflush(3, 2)) == m.Rflush(3)
        # The flushed waiter took nothing: a's lock stands, b is still refused.
        assert await b.rpc(m.Tlock(4, 1, RD, 0, 0, 0, 2, "b")) == m.Rlock(4, LockStatus.BLOCKED)


async def test_getlock_of_type_unlck_reports_other_owners_locks(autojump_clock):
    """Linux's F_GETLK sends Tgetlock with type UNLCK (v9fs_file_getlock drops the
    asked type): it must still learn about another guest's lock, even a read lock."""
    async with served(slow_fs(), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        assert await b.rpc(m.Tgetlock(1, 1, UN, 0, 0, 7, "hostB")) == m.Rgetlock(1, UN, 0, 0, 7, "hostB")
        await a.rpc(m.Tlock(2, 1, RD, 0, 100, 10, 42, "hostA"))
        assert await b.rpc(m.Tgetlock(3, 1, UN, 0, 0, 7, "hostB")) == m.Rgetlock(3, RD, 100, 10, 42, "hostA")
        assert await b.rpc(m.Tgetlock(4, 1, UN, 0, 50, 7, "hostB")) == m.Rgetlock(4, UN, 0, 50, 7, "hostB")
        # The owner's own locks are never in its way.
        assert await a.rpc(m.Tgetlock(5, 1, UN, 0, 0, 42, "hostA")) == m.Rgetlock(5, UN, 0, 0, 42, "hostA")


async def test_blocking_lock_that_would_deadlock_gets_edeadlk(autojump_clock):
    """A waits for B's range, then B asks, blocking, for A's range: B gets EDEADLK
    (Rlerror, which the kernel hands to fcntl) instead of both waiting forever."""
    async with served(slow_fs(), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        assert await a.rpc(m.Tlock(1, 1, WR, 0, 0, 10, 1, "a")) == m.Rlock(1, LockStatus.SUCCESS)
        assert await b.rpc(m.Tlock(2, 1, WR, 0, 20, 10, 2, "b")) == m.Rlock(2, LockStatus.SUCCESS)
        await a.send(m.Tlock(3, 1, WR, LockFlags.BLOCK, 20, 10, 1, "a"))  # A waits for B
        await trio.sleep(1)
        with trio.fail_after(60):  # without detection this would wait forever
            assert await b.rpc(m.Tlock(4, 1, WR, LockFlags.BLOCK, 0, 10, 2, "b")) == m.Rlerror(4, errno.EDEADLK)
        # B gives up its range: A's wait ends normally.
        assert await b.rpc(m.Tlock(5, 1, UN, 0, 20, 10, 2, "b")) == m.Rlock(5, LockStatus.SUCCESS)
        assert await a.recv() == m.Rlock(3, LockStatus.SUCCESS)


async def test_lock_handed_over_then_asked_back_is_no_deadlock(autojump_clock):
    """B waits for A's range; A unlocks it, B gets it, then A asks (blocking) for a
    range B held all along: an ordinary wait, not EDEADLK."""
    async with served(slow_fs(), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        await a.rpc(m.Tlock(1, 1, WR, 0, 0, 10, 1, "a"))
        await b.rpc(m.Tlock(2, 1, WR, 0, 20, 10, 2, "b"))
        await b.send(m.Tlock(3, 1, WR, LockFlags.BLOCK, 0, 10, 2, "b"))  # B waits for A
        await trio.sleep(1)
        assert await a.rpc(m.Tlock(4, 1, UN, 0, 0, 10, 1, "a")) == m.Rlock(4, LockStatus.SUCCESS)
        assert await b.recv() == m.Rlock(3, LockStatus.SUCCESS)
        await a.send(m.Tlock(5, 1, WR, LockFlags.BLOCK, 20, 10, 1, "a"))
        await trio.sleep(1)
        assert await b.rpc(m.Tlock(6, 1, UN, 0, 20, 10, 2, "b")) == m.Rlock(6, LockStatus.SUCCESS)
        assert await a.recv() == m.Rlock(5, LockStatus.SUCCESS)


def test_deadlock_search_recomputes_every_wait_from_the_table():
    """The cycle A -> B -> A exists only while A still holds what B waits for. A
    waiter whose lock was just released (woken, not yet run) waits for nobody."""
    from ninep.server.locks import LockOwner, LockTable

    table = LockTable()
    a, b = LockOwner("c1", "a", 1), LockOwner("c2", "b", 2)
    assert table.set("f", a, WR, 0, 10)[0] and table.set("f", b, WR, 20, 10)[0]
    assert table.begin_wait(b, ("f", WR, 0, 10))  # B is waiting for A's range
    assert not table.begin_wait(a, ("f", WR, 20, 10))  # A -> B -> A: refused
    table.set("f", a, UN, 0, 10)  # A lets go; B has not run yet, its wait is stale
    assert table.begin_wait(a, ("f", WR, 20, 10))
    table.end_wait(a, ("f", WR, 20, 10))
    table.end_wait(b, ("f", WR, 0, 10))
    # A longer chain: A -> B -> C -> A.
    c = LockOwner("c3", "c", 3)
    table.set("f", a, WR, 0, 10)
    table.set("f", c, WR, 40, 10)
    assert table.begin_wait(b, ("f", WR, 40, 10)) and table.begin_wait(c, ("f", RD, 5, 1))
    assert not table.begin_wait(a, ("f", WR, 20, 10))
    assert not table.begin_wait(c, ("f", WR, 20, 10))  # C -> B -> C
    # D, waited for by nobody, meets the chain B -> C -> A and ends there: no cycle.
    d = LockOwner("c4", "d", 4)
    assert table.begin_wait(d, ("f", WR, 20, 10))
    # A connection that is gone takes its waits along.
    table.end_waits_of("c4")
    assert table.connections() == {"c1", "c2", "c3"}


@asynccontextmanager
async def a_with_two_fids_and_b_with_one(**served_options):
    """Two clients with fid 1 open on the same file; a also has it open as fid 2."""
    async with served(slow_fs(), connections=2, **served_options) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
            await open_file(peer, 1, "fast")
        await open_file(a, 2, "fast")
        yield a, b


async def test_locks_die_with_last_fid_and_with_connection(autojump_clock):
    locks = LockManager()
    async with a_with_two_fids_and_b_with_one(locks=locks) as (a, b):
        await a.rpc(m.Tlock(1, 1, WR, 0, 0, 0, 1, "a"))
        await a.rpc(m.Tclunk(2, 2))  # not the last fid there: the lock stays
        assert await b.rpc(m.Tlock(3, 1, RD, 0, 0, 0, 2, "b")) == m.Rlock(3, LockStatus.BLOCKED)
        await b.send(m.Tlock(4, 1, RD, LockFlags.BLOCK, 0, 0, 2, "b"))
        await a.rpc(m.Tclunk(5, 1))  # last fid: close releases, the waiter is granted
        assert await b.recv() == m.Rlock(4, LockStatus.SUCCESS)
        # b's lock dies with b's connection.
        assert len(locks.table) == 1
        await b.stream.aclose()
        await trio.sleep(1)
        assert len(locks.table) == 0


async def test_disconnect_with_requests_in_flight_costs_only_those(autojump_clock):
    fs = slow_fs()
    async with served(fs, connections=2) as ([a, b], conns):
        for peer in (a, b):
            await peer.start()
        await open_file(a, 1, "slow")
        await a.send(*(m.Tread(10 + i, 1, 0, 10) for i in range(5)))
        await trio.sleep(1)
        await a.stream.aclose()
        await trio.sleep(1)
        assert conns[0].session.fids == {}
        assert fs.open_files == 1  # only b's root fid is left
        assert isinstance(await b.rpc(m.Tstatfs(1, 0)), m.Rstatfs)


async def test_in_flight_limit_stops_reading(autojump_clock):
    fs = slow_fs()
    async with served(fs, limits=Limits(max_in_flight=2)) as ([peer], conns):
        await peer.start()
        await open_file(peer, 1, "slow")
        await peer.send(*(m.Tread(10 + i, 1, 0, 10) for i in range(4)))
        await trio.sleep(1)
        assert len(conns[0].rules.in_flight) == 2  # the rest wait unread
        replies = {(await peer.recv()).tag for _ in range(4)}
        assert replies == {10, 11, 12, 13}
        assert trio.current_time() >= 20  # two rounds of 10 s


async def test_malformed_frame_ends_only_that_connection(autojump_clock, caplog):
    async with served(MemFilesystem(), connections=2) as ([a, b], _):
        for peer in (a, b):
            await peer.start()
        await a.send_raw(struct.pack("<IBH", 5, 100, 0))  # size below the header
        assert await a.at_eof()
        lines = [r for r in caplog.records if r.name.startswith("ninep")]
        assert len(lines) == 1 and "malformed frame" in lines[0].getMessage()
        assert isinstance(await b.rpc(m.Tstatfs(1, 0)), m.Rstatfs)
        # Too big for the negotiated msize: also the end.
        await b.send_raw(struct.pack("<IBH", 1 << 30, 118, 1))
        assert await b.at_eof()


async def test_garbage_body_fails_only_that_request():
    # The frame is intact, only its body is bad: Rlerror on its tag, and serving goes
    # on (tests/server/test_server_badbody.py has the cases).
    async with served(MemFilesystem()) as ([peer], _):
        await peer.start()
        await peer.send_raw(struct.pack("<IBHI", 11, 110, 1, 0))  # Twalk cut short
        assert await peer.recv() == m.Rlerror(1, errno.EINVAL)
        assert isinstance(await peer.rpc(m.Tstatfs(2, 0)), m.Rstatfs)


async def test_clunking_the_locking_fid_releases_like_flock(autojump_clock):
    """flock(2): the lock belongs to the open file; its last close may come from
    another pid (the kernel sends that pid's UNLCK, which matches nothing), then the
    fid is clunked -- and that must free the lock even though other fids remain."""
    async with a_with_two_fids_and_b_with_one() as (a, b):
        assert await a.rpc(m.Tlock(1, 2, WR, 0, 0, 0, 100, "a")) == m.Rlock(1, LockStatus.SUCCESS)
        assert await a.rpc(m.Tlock(2, 2, UN, 0, 0, 0, 101, "a")) == m.Rlock(2, LockStatus.SUCCESS)
        assert await b.rpc(m.Tlock(3, 1, WR, 0, 0, 0, 7, "b")) == m.Rlock(3, LockStatus.BLOCKED)
        await a.rpc(m.Tclunk(4, 2))  # fid 1 of connection a still refers to the file
        assert await b.rpc(m.Tlock(5, 1, WR, 0, 0, 0, 7, "b")) == m.Rlock(5, LockStatus.SUCCESS)


async def test_a_reply_the_wire_cannot_carry_fails_only_that_request():
    fs = MemFilesystem()
    link = fs.add("link", mode=0o120777)
    link.target = "bad\0target"  # NUL cannot be encoded in a 9P string
    async with served(fs) as ([peer], _):
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("link",)))
        assert await peer.rpc(m.Treadlink(2, 1)) == m.Rlerror(2, errno.EIO)
        assert isinstance(await peer.rpc(m.Tstatfs(3, 0)), m.Rstatfs)
