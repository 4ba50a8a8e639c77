"""POSIX byte-range locks for Tlock/Tgetlock: a pure table, no I/O, no trio.

Semantics follow fcntl(F_SETLK/F_GETLK) as POSIX describes them:

* a lock belongs to an owner; 9P names the owner (client_id, proc_id) and we add the
  connection, so two guests whose kernels pick the same pid never share locks;
* locks of one owner never conflict with each other: setting a range replaces whatever
  that owner held there (converting read <-> write, splitting a larger range), and
  adjacent or overlapping ranges of the same type merge;
* an unlock of part of a range splits it;
* length 0 means "to end of file, however large it grows"; ranges are half-open here
  with ``TO_EOF`` as the end;
* two locks conflict when their owners differ, their ranges overlap and at least one
  of them is a write lock.

The table only answers and records. Waiting for a conflicting lock to go away is the
trio layer's business: every mutating call returns the set of keys whose locks were
released or shrunk, so the caller knows whom to wake.

Cost. The table runs on the event loop, so one client's locks must not slow the
others: every call is a few binary searches, not a walk over the file's locks. Per
file, each owner keeps its read ranges and its write ranges as two sorted lists of
disjoint ranges (``_Spans``), and the file keeps two indexes over all owners:

* every write range of the file, sorted: write ranges of different owners never
  overlap (they would conflict), and one owner's never do, so the list is disjoint and
  "which write ranges meet [lo, hi)" is two bisects;
* the starts and the ends of every read range, each sorted: read ranges of different
  owners do overlap, but the number meeting [lo, hi) is still
  ``#(start < hi) - #(end <= lo)``.

A conflict exists exactly when these counts exceed the asker's own ranges there (also
two bisects). Only when one exists is it looked for (to name it, as F_GETLK does):
among writes by a binary search over counts; among reads by asking each other owner
of the file, a bisect each. Inserting into a Python list moves pointers (memmove), a
few microseconds at 100,000 entries; changes of many ranges at once (a release, one
lock covering thousands of the owner's ranges) rebuild the file's indexes instead.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from itertools import chain
from typing import Hashable, Protocol

from ..protocol.constants import LockType

TO_EOF = 1 << 64  # one past the largest 64-bit offset: "to end of file"

_READ, _WRITE, _OWNER = 0, 1, 2  # index into an owner's (reads, writes, owner)
_KIND = {LockType.RDLCK: _READ, LockType.WRLCK: _WRITE}
_TYPE = (LockType.RDLCK, LockType.WRLCK)
# Changes to more ranges than this at once rebuild the file's indexes (O(n)) rather
# than delete entries one by one (O(n) memmove each).
_REBUILD_AT = 32


@dataclass(frozen=True, slots=True)
class LockOwner:
    """Who holds a lock: the connection plus what the client says (Tlock's fields)."""

    connection: Hashable
    client_id: str
    proc_id: int


@dataclass(frozen=True, slots=True)
class HeldLock:
    owner: LockOwner
    type: LockType  # RDLCK or WRLCK, never UNLCK
    start: int
    end: int  # exclusive; TO_EOF for "to end of file"

    @property
    def length(self) -> int:
        """The 9P length: 0 for to-EOF."""
        return 0 if self.end >= TO_EOF else self.end - self.start


def lock_range(start: int, length: int) -> tuple[int, int]:
    """Half-open [start, end) for a 9P (start, length); length 0 reaches EOF."""
    if length == 0:
        return start, TO_EOF
    return start, min(start + length, TO_EOF)


def owner_cost(owner: LockOwner) -> int:
    """What holding anything costs an owner beyond its ranges, in ranges: the table
    keeps its client_id (up to 64 KiB; Linux sends the host name), so every 256
    characters count as one more range against the connection's limit."""
    return len(owner.client_id) // 256


class LockLimitError(OSError):
    """A connection asked to hold more lock ranges than its limit (ENOLCK)."""

    def __init__(self, limit: int) -> None:
        super().__init__(errno.ENOLCK, f"more than {limit} lock ranges on this connection")
        self.limit = limit


class _Spans:
    """One owner's ranges of one type on one file: sorted, disjoint, and no two
    touching (those merge). Ends are sorted too, since the ranges are disjoint."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def meeting(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of the ranges that overlap [lo, hi)."""
        return bisect_right(self.ends, lo), bisect_left(self.starts, hi)

    def touching(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of the ranges that overlap or touch [lo, hi)."""
        return bisect_left(self.ends, lo), bisect_right(self.starts, hi)


class _File:
    """The locks of one file: per owner (reads, writes), plus the indexes over all."""

    __slots__ = ("owners", "w_starts", "w_ends", "w_owners", "r_starts", "r_ends")

    def __init__(self) -> None:
        self.owners: dict[LockOwner, tuple[_Spans, _Spans, LockOwner]] = {}
        self.w_starts: list[int] = []  # every write range, disjoint, sorted
        self.w_ends: list[int] = []
        self.w_owners: list[LockOwner] = []
        self.r_starts: list[int] = []  # every read range's start, sorted (a multiset)
        self.r_ends: list[int] = []  # ... and its end, sorted separately

    def add(self, kind: int, owner: LockOwner, start: int, end: int) -> None:
        if kind == _WRITE:
            i = bisect_left(self.w_starts, start)
            self.w_starts.insert(i, start)
            self.w_ends.insert(i, end)
            self.w_owners.insert(i, owner)
        else:
            insort(self.r_starts, start)
            insort(self.r_ends, end)

    def remove(self, kind: int, start: int, end: int) -> None:
        if kind == _WRITE:
            i = bisect_left(self.w_starts, start)
            del self.w_starts[i], self.w_ends[i], self.w_owners[i]
        else:
            del self.r_starts[bisect_left(self.r_starts, start)]
            del self.r_ends[bisect_left(self.r_ends, end)]

    def rebuild(self) -> None:
        writes = sorted((start, end, owner) for owner, spans in self.owners.items()
                        for start, end in zip(spans[_WRITE].starts, spans[_WRITE].ends))
        self.w_starts = [w[0] for w in writes]
        self.w_ends = [w[1] for w in writes]
        self.w_owners = [w[2] for w in writes]
        self.r_starts = sorted(chain.from_iterable(s[_READ].starts for s in self.owners.values()))
        self.r_ends = sorted(chain.from_iterable(s[_READ].ends for s in self.owners.values()))

    def first_foreign_write(self, owner: LockOwner, a: int, b: int) -> int:
        """The first index in [a, b) of the write index that ``owner`` does not hold,
        known to exist. Binary search on "how many in [a, i] are not the owner's",
        counted with the owner's own write ranges: O(log^2 n), however many of the
        owner's own ranges lie in between."""
        spans = self.owners.get(owner)
        if spans is None or self.w_owners[a] != owner:
            return a
        own = spans[_WRITE].starts
        base = bisect_left(own, self.w_starts[a])
        lo, hi = a, b - 1
        while lo < hi:
            mid = (lo + hi) // 2
            own_count = bisect_right(own, self.w_starts[mid]) - base
            if mid + 1 - a > own_count:  # a foreign range at or before mid
                hi = mid
            else:
                lo = mid + 1
        return lo


class LockTable:
    """Locks of every file of one server, keyed by (export, ``File.lock_key``), and
    the blocking requests waiting on them (for deadlock detection).

    Every method takes and returns plain picklable values (given picklable keys and
    owners), so a table in one process can serve several (``server.workers``)."""

    def __init__(self) -> None:
        self._files: dict[Hashable, _File] = {}
        self._count = 0
        # connection -> {key: what it holds there}; and its total (what the limit counts)
        self._held_on: dict[Hashable, dict[Hashable, int]] = {}
        self._held: dict[Hashable, int] = {}
        # owner -> the requests it is blocked on, as (key, type, start, length)
        self._waits: dict[LockOwner, list[tuple]] = {}

    def locks(self, key: Hashable) -> list[HeldLock]:
        """The locks on ``key``, sorted by start (a copy, for tests and tracing)."""
        file = self._files.get(key)
        if file is None:
            return []
        out = [HeldLock(owner, _TYPE[kind], start, end)
               for owner, spans in file.owners.items()
               for kind in (_READ, _WRITE)
               for start, end in zip(spans[kind].starts, spans[kind].ends)]
        return sorted(out, key=lambda lock: (lock.start, lock.end))

    def holding(self, key: Hashable, owners) -> set[LockOwner]:
        """Those of ``owners`` that hold some range on ``key``."""
        file = self._files.get(key)
        return {owner for owner in owners if file is not None and owner in file.owners}

    def held_by(self, connection: Hashable) -> int:
        """What ``connection``'s limit counts: the lock ranges it holds, plus
        ``owner_cost`` for each of its owners that holds any."""
        return self._held.get(connection, 0)

    def conflict(
        self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int
    ) -> HeldLock | None:
        """A lock that would stop ``owner`` from taking this one (F_GETLK)."""
        file = self._files.get(key)
        if file is None or type_ == LockType.UNLCK:
            return None
        lo, hi = lock_range(start, length)
        mine = file.owners.get(owner)
        a, b = bisect_right(file.w_ends, lo), bisect_left(file.w_starts, hi)
        if a < b:
            own_a, own_b = mine[_WRITE].meeting(lo, hi) if mine else (0, 0)
            if b - a > own_b - own_a:
                i = file.first_foreign_write(owner, a, b)
                return HeldLock(file.w_owners[i], LockType.WRLCK, file.w_starts[i], file.w_ends[i])
        if type_ != LockType.WRLCK or not file.r_starts:
            return None
        readers = bisect_left(file.r_starts, hi) - bisect_right(file.r_ends, lo)
        own_a, own_b = mine[_READ].meeting(lo, hi) if mine else (0, 0)
        if readers <= own_b - own_a:
            return None
        for other, spans in file.owners.items():
            if other != owner:
                reads = spans[_READ]
                i = bisect_right(reads.ends, lo)
                if i < len(reads.starts) and reads.starts[i] < hi:
                    return HeldLock(other, LockType.RDLCK, reads.starts[i], reads.ends[i])
        raise AssertionError("lock index out of step with the owners' ranges")

    def set(
        self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int,
        limit: int | None = None,
    ) -> tuple[bool, set[Hashable]]:
        """F_SETLK: take, convert or release a range for ``owner``.

        Returns (granted, keys_released). ``granted`` is False, and nothing changes,
        when another owner's lock conflicts. ``keys_released`` names the keys where
        some range became free (waiters there should retry). Raises ``LockLimitError``
        (ENOLCK), changing nothing, when the owner's connection would then hold more
        than ``limit`` ranges; an unlock that punches a hole adds one, so it too can
        be refused (POSIX allows ENOLCK there), while one that frees a whole range
        never is.
        """
        if type_ not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise ValueError(f"lock type {type_}")
        if self.conflict(key, owner, type_, start, length) is not None:
            return False, set()
        lo, hi = lock_range(start, length)
        file = self._files.get(key)
        spans = file.owners.get(owner) if file is not None else None
        if spans is None:
            if type_ == LockType.UNLCK:
                return True, set()
            # The owner as first seen is the one kept: every later Tlock decodes its own
            # copy of client_id (up to 64 KiB), and one owner's thousands of ranges
            # must not each hold one.
            spans = (_Spans(), _Spans(), owner)
        owner = spans[_OWNER]
        # Plan the change per kind as "replace slice [i, j) of the owner's ranges with
        # these", so that refusing it (the limit) leaves everything as it was.
        plan: list[tuple[int, int, int, list[tuple[int, int]]]] = []
        released = False
        for kind in (_READ, _WRITE):
            ranges = spans[kind]
            if type_ != LockType.UNLCK and kind == _KIND[type_]:
                i, j = ranges.touching(lo, hi)  # absorbed into the new range
                new = (min(lo, ranges.starts[i]) if i < j else lo,
                       max(hi, ranges.ends[j - 1]) if i < j else hi)
                plan.append((kind, i, j, [new]))
                continue
            i, j = ranges.meeting(lo, hi)
            if i == j:
                continue
            released = released or type_ == LockType.UNLCK or kind == _WRITE
            left, right = ranges.starts[i], ranges.ends[j - 1]
            kept = ([(left, lo)] if left < lo else []) + ([(hi, right)] if hi < right else [])
            plan.append((kind, i, j, kept))
        growth = sum(len(new) - (j - i) for _, i, j, new in plan)
        held_before = len(spans[_READ].starts) + len(spans[_WRITE].starts)
        if not held_before:
            growth += owner_cost(owner)  # a new owner
        elif held_before + growth == 0:
            growth -= owner_cost(owner)  # one that lets go of everything
        if limit is not None and growth > 0 and self.held_by(owner.connection) + growth > limit:
            raise LockLimitError(limit)
        if file is None:
            file = self._files[key] = _File()
        file.owners.setdefault(owner, spans)
        self._apply(key, file, owner, spans, plan, growth)
        return True, ({key} if released else set())

    def _apply(self, key: Hashable, file: _File, owner: LockOwner,
               spans: tuple, plan: list, growth: int) -> None:
        moved = sum(j - i + len(new) for _, i, j, new in plan)
        for kind, i, j, new in plan:
            ranges = spans[kind]
            if moved <= _REBUILD_AT:
                for k in range(i, j):
                    file.remove(kind, ranges.starts[k], ranges.ends[k])
                for s, e in new:
                    file.add(kind, owner, s, e)
            ranges.starts[i:j] = [s for s, _ in new]
            ranges.ends[i:j] = [e for _, e in new]
        if not spans[_READ].starts and not spans[_WRITE].starts:
            del file.owners[owner]
        if moved > _REBUILD_AT:
            file.rebuild()
        self._count_change(key, owner.connection, growth,
                           sum(len(new) - (j - i) for _, i, j, new in plan))
        if not file.owners:
            del self._files[key]

    def _count_change(self, key: Hashable, connection: Hashable, growth: int,
                      ranges: int) -> None:
        self._count += ranges
        if not growth:
            return
        total = self._held.get(connection, 0) + growth
        on = self._held_on.setdefault(connection, {})
        here = on.get(key, 0) + growth
        if here:
            on[key] = here
        else:
            on.pop(key, None)
        if total:
            self._held[connection] = total
        else:
            self._held.pop(connection, None)
            self._held_on.pop(connection, None)

    def release(self, key: Hashable, connection: Hashable) -> set[Hashable]:
        """Drop every lock ``connection`` holds on ``key`` (its last fid there closed)."""
        if key not in self._held_on.get(connection, ()):
            return set()
        file = self._files[key]
        gone = {owner: file.owners.pop(owner)
                for owner in [o for o in file.owners if o.connection == connection]}
        ranges = sum(len(spans[kind].starts) for spans in gone.values() for kind in (_READ, _WRITE))
        dropped = ranges + sum(owner_cost(owner) for owner in gone)
        if ranges > _REBUILD_AT:
            file.rebuild()
        else:
            for spans in gone.values():
                for kind in (_READ, _WRITE):
                    for s, e in zip(spans[kind].starts, spans[kind].ends):
                        file.remove(kind, s, e)
        self._count_change(key, connection, -dropped, -ranges)
        if not file.owners:
            del self._files[key]
        return {key}

    def release_connection(self, connection: Hashable) -> set[Hashable]:
        """Drop every lock of a connection that went away; return the keys touched."""
        touched: set[Hashable] = set()
        for key in list(self._held_on.get(connection, ())):
            touched |= self.release(key, connection)
        return touched

    def connections(self) -> set[Hashable]:
        """Every connection holding a lock or waiting for one."""
        return set(self._held) | {owner.connection for owner in self._waits}

    # --- blocked requests ------------------------------------------------------------
    def begin_wait(self, owner: LockOwner, request: tuple) -> bool:
        """``owner`` is about to block on ``request`` = (key, type, start, length).

        Returns False, recording nothing, when waiting would deadlock (EDEADLK), that
        is when the owner in the way is, through other waiting owners, waiting for
        ``owner``; as Linux's posix_locks_deadlock, the search gives up (and lets the
        request wait) after 64 owners. Otherwise records the wait until ``end_wait``."""
        key, type_, start, length = request
        blocker = self.conflict(key, owner, type_, start, length)
        if blocker is not None and self._would_deadlock(owner, blocker):
            return False
        self._waits.setdefault(owner, []).append(request)
        return True

    def end_wait(self, owner: LockOwner, request: tuple) -> None:
        mine = self._waits.get(owner)
        if mine and request in mine:
            mine.remove(request)
            if not mine:
                del self._waits[owner]

    def end_waits_of(self, connection: Hashable) -> None:
        """Forget the waits of a connection that is gone (its process died)."""
        for owner in [o for o in self._waits if o.connection == connection]:
            del self._waits[owner]

    def _would_deadlock(self, owner: LockOwner, blocker: HeldLock) -> bool:
        """Each edge is recomputed from the table, never remembered: a waiter whose
        lock was just released (woken, not yet run) waits for nobody, so a stale wait
        cannot produce a false EDEADLK."""
        if not self._waits:
            return False
        todo, seen = [blocker.owner], set()
        while todo and len(seen) < _DEADLOCK_SEARCH_LIMIT:
            current = todo.pop()
            if current == owner:
                return True
            if current in seen:
                continue
            seen.add(current)
            for key, type_, start, length in self._waits.get(current, ()):
                held = self.conflict(key, current, type_, start, length)
                if held is not None:
                    todo.append(held.owner)
        return False

    def __len__(self) -> int:
        return self._count


_DEADLOCK_SEARCH_LIMIT = 64  # owners visited before giving up (and waiting) -- as Linux


class LockService(Protocol):
    """What lock requests need from the I/O layer (lockservice.LockManager): the
    table's operations as awaitables, a ticket taken before asking (``watch``) that a
    release of the key sets, a way to sleep on it, and a way to wake such sleepers.
    ``prompt``: its operations answer without a checkpoint (the table is in this
    process), so a non-blocking Tlock may be answered inline."""

    prompt: bool

    async def set(self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int,
                  limit: int | None = None) -> tuple[bool, set[Hashable]]: ...

    async def conflict(self, key: Hashable, owner: LockOwner, type_: int, start: int,
                       length: int): ...

    async def holding(self, key: Hashable, owners) -> set[LockOwner]: ...

    async def release(self, key: Hashable, connection: Hashable) -> set[Hashable]: ...

    async def begin_wait(self, owner: LockOwner, request: tuple) -> bool: ...

    async def end_wait(self, owner: LockOwner, request: tuple) -> None: ...

    def watch(self, key: Hashable) -> object: ...

    def unwatch(self, key: Hashable, ticket: object) -> None: ...

    async def wait_for_release(self, key: Hashable, ticket: object = None) -> None: ...

    def released(self, keys: set[Hashable]) -> None: ...
