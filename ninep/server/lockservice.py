"""The trio side of POSIX locks: a process's lock table behind async calls, and the
waits of blocked Tlocks.

The dispatcher asks ``LockManager`` (``await locks.set(...)`` and so on), never the
table itself: in one process the calls answer at once from ``locks.LockTable`` without
a checkpoint; a ``--workers`` worker's manager (workers.py) asks the supervisor's table
over a socket and awaits the answer, so a slow supervisor stalls that one request, not
the worker's event loop.

A blocked Tlock must not miss a release that happens while its refused call is on
its way back: it ``watch``es the key *before* asking, and waits on that ticket, which
any release of the key from then on has set.
"""

from __future__ import annotations

from typing import Hashable

import trio

from .locks import LockOwner, LockTable


class _Watch:
    __slots__ = ("event", "count")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.count = 0  # watchers of this event, so that the last one drops it


class LockManager:
    """The process's lock table plus the trio side of waiting on it."""

    prompt = True  # the table's calls answer without a checkpoint (not a worker's)

    def __init__(self, table: LockTable | None = None) -> None:
        self.table = table if table is not None else LockTable()
        self._watches: dict[Hashable, _Watch] = {}

    def connection_id(self, number: int) -> Hashable:
        """How lock owners name connection ``number`` of this process."""
        return ("connection", number)

    # --- the table's operations (see locks.LockTable) ------------------------------------
    async def set(self, key: Hashable, owner: LockOwner, type_: int, start: int, length: int,
                  limit: int | None = None) -> tuple[bool, set[Hashable]]:
        return self.table.set(key, owner, type_, start, length, limit)

    async def conflict(self, key: Hashable, owner: LockOwner, type_: int, start: int,
                       length: int):
        return self.table.conflict(key, owner, type_, start, length)

    async def holding(self, key: Hashable, owners) -> set[LockOwner]:
        return self.table.holding(key, owners)

    async def release(self, key: Hashable, connection: Hashable) -> set[Hashable]:
        return self.table.release(key, connection)

    async def release_connection(self, connection: Hashable) -> set[Hashable]:
        return self.table.release_connection(connection)

    async def begin_wait(self, owner: LockOwner, request: tuple) -> bool:
        return self.table.begin_wait(owner, request)

    async def end_wait(self, owner: LockOwner, request: tuple) -> None:
        self.table.end_wait(owner, request)

    # --- waiting for a release --------------------------------------------------------------
    def watch(self, key: Hashable) -> trio.Event:
        """A ticket that the next release of ``key`` sets; ``unwatch`` it when done."""
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch()
        watch.count += 1
        return watch.event

    def unwatch(self, key: Hashable, ticket: trio.Event) -> None:
        watch = self._watches.get(key)
        if watch is not None and watch.event is ticket:
            watch.count -= 1
            if not watch.count:
                del self._watches[key]

    async def wait_for_release(self, key: Hashable, ticket: trio.Event | None = None) -> None:
        """Until ``key`` is released (since ``ticket`` was taken, if given)."""
        if ticket is None:
            ticket = self.watch(key)
            try:
                await ticket.wait()
            finally:
                self.unwatch(key, ticket)
        else:
            await ticket.wait()

    def released(self, keys: set[Hashable]) -> None:
        for key in keys:
            watch = self._watches.pop(key, None)
            if watch is not None:
                watch.event.set()
