"""The pure POSIX lock table: fcntl semantics, owner by owner."""

import errno
import operator

import pytest

from ninep.protocol.constants import LockType
from ninep.server.locks import TO_EOF, LockLimitError, LockOwner, LockTable

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


def test_conflict_names_another_owners_write_among_many_of_mine():
    """A's write ranges surround B's one write: whatever part of them a query covers,
    the conflict named is B's, never one of A's own (its own locks never conflict)."""
    t = LockTable()
    for i in range(0, 200, 2):
        if i != 120:
            t.set("f", A, WR, i, 1)
    t.set("f", A_OTHER_CONN, WR, 120, 1)
    for lo in range(0, 121, 7):
        for hi in range(121, 200, 9):
            held = t.conflict("f", A, RD, lo, hi - lo)
            assert (held.owner, held.start) == (A_OTHER_CONN, 120)
    assert t.conflict("f", A, WR, 0, 120) is None
    assert t.conflict("f", A, WR, 121, 0) is None


def test_limit_counts_ranges_per_connection():
    t = LockTable()
    t.set("f", A, WR, 0, 1, limit=2)
    t.set("g", B, WR, 0, 1, limit=2)  # another file, another owner: same connection
    with pytest.raises(LockLimitError) as refused:
        t.set("f", A, WR, 10, 1, limit=2)
    assert refused.value.errno == errno.ENOLCK
    assert t.set("f", A, WR, 1, 1, limit=2)[0]  # merges with [0, 1): no new range
    assert t.set("f", A_OTHER_CONN, WR, 10, 1, limit=2)[0]  # another connection
    assert t.set("g", B, WR, 1, 2, limit=2)[0]  # grows [0, 1) to [0, 3): still one
    with pytest.raises(LockLimitError):  # a hole would make three
        t.set("g", B, UN, 1, 1, limit=2)
    assert ranges(t, "g") == [(200, "WRLCK", 0, 3)]
    assert t.held_by("conn1") == 2 and t.held_by("conn2") == 1
    t.release_connection("conn1")
    assert t.held_by("conn1") == 0 and len(t) == 1


class CountingInt(int):
    """An offset that counts the comparisons made with it (bisect, min, max)."""

    compared = 0

    def _count(op):
        def compare(self, other):
            CountingInt.compared += 1
            return op(int(self), int(other))
        return compare

    __lt__, __le__ = _count(operator.lt), _count(operator.le)
    __gt__, __ge__ = _count(operator.gt), _count(operator.ge)

    def __add__(self, other):
        return CountingInt(int(self) + int(other))

    __radd__ = __add__


def comparisons_per_operation(held: int) -> int:
    """Comparisons made by a mix of Tlock/Tgetlock calls with ``held`` of A's write
    ranges on the file (every other byte): the work a call does, however many locks
    there are, without timing anything."""
    t = LockTable()
    for i in range(held):
        t.set("f", A, WR, CountingInt(2 * i), CountingInt(1))
    n = CountingInt
    calls = [
        lambda: t.set("f", B, RD, n(2 * held + 5), n(1)),  # granted, past A's
        lambda: t.set("f", B, WR, n(held), n(0)),  # refused: A's in the way
        lambda: t.conflict("f", B, RD, n(held + 1), n(7)),  # Tgetlock
        lambda: t.set("f", A, WR, n(2 * held + 1), n(1)),  # A's next, merging with the last
        lambda: t.set("f", A, UN, n(held), n(1)),  # A unlocks one of its ranges
        lambda: t.set("f", A, RD, n(held + 20), n(5)),  # converts across three
        lambda: t.conflict("f", A_OTHER_CONN, WR, n(1), n(held)),
    ]
    CountingInt.compared = 0
    for call in calls:
        call()
    return CountingInt.compared


def test_work_per_lock_is_logarithmic_in_the_locks_held():
    small, large = comparisons_per_operation(500), comparisons_per_operation(16000)
    # 32x the locks: logarithmic work grows by 5 steps per search (~1.5x here: 231 ->
    # 356 comparisons), linear work by 32x (the table this one replaced: 9505 at 500).
    assert large < small * 2, (small, large)
    assert large < 500, large
