"""The Nodes of a copy-on-write tree, and the cache of Nodes no fid holds.

A ``Node`` is one file of the merged view, shared by every fid on it: its upper
``HostFile`` (an O_PATH fid of the upper export, or None before copy-up), its base
``File`` (None once a file is copied up, or where the base is hidden), its qid, and
its directory's merged listing once made. Nodes live while a fid or a child holds
them, then wait in a ``NodeCache``; the live children of a directory are kept by
name, so a second walk finds the same Node, and a rename moves the Node (with
everything open below it). The tree's logic is in ``cownode.Session``.
"""

from __future__ import annotations

import stat

import trio

from ..protocol.constants import QidType
from ..protocol.messages import Qid
from .backend import File
from .host import HostFile


def kind_of_qid(qid: Qid) -> int:
    """S_IFDIR, S_IFLNK, or S_IFREG for any other file (a qid says no more)."""
    if qid.type & QidType.DIR:
        return stat.S_IFDIR
    if qid.type & QidType.SYMLINK:
        return stat.S_IFLNK
    return stat.S_IFREG


class Node:
    __slots__ = ("parent", "name", "kind", "qid", "upper", "base", "refs", "children",
                 "removed", "cache", "listing")

    def __init__(self, parent: "Node | None", name: str, kind: int, qid: Qid,
                 upper: HostFile | None, base: File | None,
                 cache: "NodeCache | None" = None) -> None:
        self.parent = parent  # holds a reference on it
        self.name = name
        self.kind = kind
        self.qid = qid
        self.upper = upper
        self.base = base
        self.refs = 1
        self.children: dict[str, Node] = {}
        self.removed = False
        self.listing = None  # the merged listing (cowlist), dropped when the directory changes
        self.cache = cache if cache is not None else (parent.cache if parent else None)

    def acquire(self) -> "Node":
        if not self.refs and self.cache is not None:
            self.cache.unpark(self)
        self.refs += 1
        return self

    async def release(self) -> None:
        self.refs -= 1
        if self.refs or self.parent is None:
            return  # the root lives as long as its session
        if self.removed or self.cache is None:
            await self.destroy()
        else:
            await self.cache.park(self)

    async def destroy(self) -> None:
        parent = self.parent
        assert parent is not None
        if parent.children.get(self.name) is self:
            del parent.children[self.name]
        await self.drop_layers()
        await parent.release()

    async def drop_layers(self) -> None:
        for layer in (self.upper, self.base):
            if layer is not None:
                await layer.close()
        self.upper = self.base = None

    async def drop_base(self) -> None:
        base, self.base = self.base, None
        if base is not None:
            await base.close()


class NodeCache:
    """Nodes no fid holds, kept (with their layers' O_PATH fds) for the next walk, as
    the kernel keeps unused dentries: a guest walks the same paths over and over.
    Every change to the tree goes through its Session, so a kept Node stays right."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._parked: dict[int, Node] = {}  # insertion-ordered: oldest first

    async def park(self, node: Node) -> None:
        self._parked[id(node)] = node
        while len(self._parked) > self.size:
            oldest = next(iter(self._parked))
            await self._parked.pop(oldest).destroy()

    def unpark(self, node: Node) -> None:
        self._parked.pop(id(node), None)

    async def clear(self) -> None:
        while self._parked:
            await self._parked.pop(next(iter(self._parked))).destroy()


class TreeLock:
    """One copy-up or tree change at a time (``async with lock:``). trio.Lock costs
    several µs even when free (a generator-based context manager around it more),
    and every unlink takes this lock; here a free lock is one flag, and only a
    contended one parks. Released to the longest waiter, as trio.Lock is. Not
    re-entrant."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if self._held:
            await self._waiters.park()  # handed over by __aexit__: ours now
        else:
            self._held = True

    async def __aexit__(self, *exc_info) -> None:
        if self._waiters:
            self._waiters.unpark()  # stays held, by the woken task
        else:
            self._held = False

