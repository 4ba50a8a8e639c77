"""The pure POSIX lock table: fcntl semantics, owner by owner."""

from ninep.protocol.constants import LockType
from ninep.server.locks import TO_EOF, LockOwner, LockTable

A = LockOwner("conn1", "guest", 100)
B = LockOwner("conn1", "guest", 200)
A_OTHER_CONN = LockOwner("conn2", "guest", 100)
RD, WR, UN = LockType.RDLCK, LockType.WRLCK, LockType.UNLCK


def ranges(table, key="f"):
    return [(h.owner.proc_id, h.type.name, h.start, h.end) for h in table.locks(key)]


def test_readers_share_writers_exclude():
    t = LockTable()
    assert t.set("f", A, RD, 0, 10) == (True, set())
    assert t.set("f", B, RD, 5, 10)[0]
    assert t.set("f", B, WR, 20, 5)[0]
    granted, _ = t.set("f", B, WR, 0, 1)
    assert not granted
    assert ranges(t) == [(100, "RDLCK", 0, 10), (200, "RDLCK", 5, 15), (200, "WRLCK", 20, 25)]


def test_same_pid_other_connection_is_another_owner():
    t = LockTable()
    t.set("f", A, WR, 0, 0)
    assert not t.set("f", A_OTHER_CONN, RD, 100, 1)[0]
    held = t.conflict("f", A_OTHER_CONN, RD, 100, 1)
    assert held is not None and held.owner == A and held.length == 0


def test_same_owner_merges_adjacent_and_overlapping():
    t = LockTable()
    t.set("f", A, RD, 0, 10)
    t.set("f", A, RD, 10, 10)
    t.set("f", A, RD, 5, 30)
    assert ranges(t) == [(100, "RDLCK", 0, 35)]


def test_convert_middle_splits_into_three():
    t = LockTable()
    t.set("f", A, RD, 0, 30)
    granted, released = t.set("f", A, WR, 10, 10)
    assert granted and released == set()
    assert ranges(t) == [(100, "RDLCK", 0, 10), (100, "WRLCK", 10, 20), (100, "RDLCK", 20, 30)]
    # downgrading back releases (a writer waiting elsewhere may now read) and re-merges
    granted, released = t.set("f", A, RD, 10, 10)
    assert released == {"f"}
    assert ranges(t) == [(100, "RDLCK", 0, 30)]


def test_unlock_splits_and_to_eof():
    t = LockTable()
    t.set("f", A, WR, 100, 0)
    assert ranges(t) == [(100, "WRLCK", 100, TO_EOF)]
    granted, released = t.set("f", A, UN, 200, 50)
    assert granted and released == {"f"}
    assert ranges(t) == [(100, "WRLCK", 100, 200), (100, "WRLCK", 250, TO_EOF)]
    assert t.conflict("f", B, RD, 210, 40) is None
    assert t.conflict("f", B, RD, 210, 41).start == 250
    t.set("f", A, UN, 0, 0)
    assert ranges(t) == [] and len(t) == 0


def test_unlock_never_conflicts_and_only_touches_own_ranges():
    t = LockTable()
    t.set("f", A, RD, 0, 10)
    assert t.set("f", B, UN, 0, 0) == (True, set())
    assert ranges(t) == [(100, "RDLCK", 0, 10)]


def test_conflict_reports_the_blocking_lock():
    t = LockTable()
    t.set("f", A, RD, 0, 10)
    assert t.conflict("f", B, RD, 0, 10) is None
    held = t.conflict("f", B, WR, 9, 1)
    assert (held.owner, held.type, held.start, held.length) == (A, RD, 0, 10)


def test_release_by_connection_and_by_key():
    t = LockTable()
    t.set("f", A, WR, 0, 1)
    t.set("g", A, WR, 0, 1)
    t.set("g", A_OTHER_CONN, WR, 5, 1)
    assert t.release("f", "conn2") == set()
    assert t.release("f", "conn1") == {"f"}
    assert t.release_connection("conn1") == {"g"}
    assert ranges(t, "g") == [(100, "WRLCK", 5, 6)]


def test_ranges_clamp_at_the_64_bit_end():
    t = LockTable()
    t.set("f", A, WR, (1 << 64) - 10, 100)
    assert ranges(t) == [(100, "WRLCK", (1 << 64) - 10, TO_EOF)]
