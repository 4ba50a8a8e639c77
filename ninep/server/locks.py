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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable

from ..protocol.constants import LockType

TO_EOF = 1 << 64  # one past the largest 64-bit offset: "to end of file"


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


def _conflicts(held: HeldLock, owner: LockOwner, type_: int, start: int, end: int) -> bool:
    if held.owner == owner:
        return False
    if held.end <= start or end <= held.start:
        return False
    return held.type == LockType.WRLCK or type_ == LockType.WRLCK


_DEADLOCK_SEARCH_LIMIT = 64  # owners visited before giving up (and waiting) -- as Linux


class LockTable:
    """Locks of every file of one server, keyed by (export, ``File.lock_key``), and
    the blocking requests waiting on them (for deadlock detection).

    Every method takes and returns plain picklable values (given picklable keys and
    owners), so a table in one process can serve several (``server.workers``)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, list[HeldLock]] = {}
        # owner -> the requests it is blocked on, as (key, type, start, length)
        self._waits: dict[LockOwner, list[tuple]] = {}

    def locks(self, key: Hashable) -> list[HeldLock]:
        """The locks on ``key``, sorted by start (a copy, for tests and tracing)."""
        return sorted(self._locks.get(key, ()), key=lambda lock: (lock.start, lock.end))

    def conflict(
        self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int
    ) -> HeldLock | None:
        """The first lock that would stop ``owner`` from taking this one (F_GETLK)."""
        if type_ == LockType.UNLCK:
            return None
        lo, hi = lock_range(start, length)
        for held in self.locks(key):
            if _conflicts(held, owner, type_, lo, hi):
                return held
        return None

    def set(
        self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int
    ) -> tuple[bool, set[Hashable]]:
        """F_SETLK: take, convert or release a range for ``owner``.

        Returns (granted, keys_released). ``granted`` is False, and nothing changes,
        when another owner's lock conflicts. ``keys_released`` names the keys where
        some range became free (waiters there should retry).
        """
        if type_ not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise ValueError(f"lock type {type_}")
        if self.conflict(key, owner, type_, start, length) is not None:
            return False, set()
        lo, hi = lock_range(start, length)
        existing = self._locks.get(key, [])
        kept: list[HeldLock] = []
        mine: list[HeldLock] = []
        released = False
        for held in existing:
            if held.owner != owner or held.end <= lo or hi <= held.start:
                (mine if held.owner == owner else kept).append(held)
                continue
            # The new range replaces this owner's coverage of [lo, hi): keep the pieces
            # outside it. Anything that was a write lock and is now less is a release.
            if held.start < lo:
                mine.append(HeldLock(owner, held.type, held.start, lo))
            if hi < held.end:
                mine.append(HeldLock(owner, held.type, hi, held.end))
            if type_ == LockType.UNLCK or held.type == LockType.WRLCK and type_ == LockType.RDLCK:
                released = True
        if type_ != LockType.UNLCK:
            mine.append(HeldLock(owner, LockType(type_), lo, hi))
        merged = kept + _merge(mine)
        if merged:
            self._locks[key] = merged
        else:
            self._locks.pop(key, None)
        return True, ({key} if released else set())

    def release(self, key: Hashable, connection: Hashable) -> set[Hashable]:
        """Drop every lock ``connection`` holds on ``key`` (its last fid there closed)."""
        existing = self._locks.get(key)
        if not existing:
            return set()
        kept = [held for held in existing if held.owner.connection != connection]
        if len(kept) == len(existing):
            return set()
        if kept:
            self._locks[key] = kept
        else:
            del self._locks[key]
        return {key}

    def release_connection(self, connection: Hashable) -> set[Hashable]:
        """Drop every lock of a connection that went away; return the keys touched."""
        touched: set[Hashable] = set()
        for key in list(self._locks):
            touched |= self.release(key, connection)
        return touched

    def connections(self) -> set[Hashable]:
        """Every connection holding a lock or waiting for one."""
        held = {lock.owner.connection for locks in self._locks.values() for lock in locks}
        return held | {owner.connection for owner in self._waits}

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
        return sum(len(v) for v in self._locks.values())


def _merge(locks: Iterable[HeldLock]) -> list[HeldLock]:
    """Coalesce one owner's ranges: same type and touching or overlapping -> one."""
    out: list[HeldLock] = []
    for lock in sorted(locks, key=lambda lock: (lock.start, lock.end)):
        if out and out[-1].type == lock.type and lock.start <= out[-1].end:
            last = out[-1]
            out[-1] = HeldLock(last.owner, last.type, last.start, max(last.end, lock.end))
        else:
            out.append(lock)
    return out
