"""The POSIX lock requests of a ``Dispatcher`` (Tlock, Tgetlock) and what closing a
fid does to its locks. A mixin: the dispatcher provides ``session``, ``locks``,
``_file_fid`` and ``_let_go``. Pure as dispatch.py is: the lock table is asked through
``locks`` (locks.LockService), which the trio layer passes in.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Hashable

from ..fs.backend import errno_error
from ..protocol import messages as m
from ..protocol.constants import LockFlags, LockStatus, LockType
from .locks import LockLimitError, LockOwner

if TYPE_CHECKING:
    from .locks import LockService
    from .session import Fid, Session


class LockRequests:
    session: "Session"
    locks: "LockService"

    async def _drop_locks(self, fid: Fid) -> None:
        """Close semantics. flock(2) locks belong to the open file (this fid) and
        the kernel's unlock at last close may carry another pid than the locker's, so
        locks taken through this fid go with it; POSIX close drops all of a process's
        locks on the file anyway. And the connection's last fid on a file takes
        every lock the connection held there."""
        session = self.session
        last = session.last_fid_on(fid)
        if not fid.lock_owners and not (last and fid.lock_key in session.locked_keys):
            return  # nothing locked through it, and no lock of ours to go with it
        locks = self.locks
        released: set[Hashable] = set()
        if last:
            session.locked_keys.discard(fid.lock_key)
            released |= await locks.release(fid.lock_key, session.connection_id)
        else:
            for owner in list(fid.lock_owners):
                released |= (await locks.set(fid.lock_key, owner, LockType.UNLCK, 0, 0))[1]
        fid.lock_owners.clear()
        if released:
            self.locks.released(released)

    async def _lock(self, msg: m.Tlock, may_wait: bool = True) -> m.Message | None:
        """Rlock; or, ``may_wait`` False, None where a blocking Tlock would wait."""
        if msg.type not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise errno_error(errno.EINVAL, f"lock type {msg.type}")
        fid = self._file_fid(msg.fid)
        try:
            owner = LockOwner(self.session.connection_id, msg.client_id, msg.proc_id)
            locks, key = self.locks, fid.lock_key
            blocking = msg.type != LockType.UNLCK and msg.flags & LockFlags.BLOCK
            while True:
                # Watched before asking: a release while the answer is on its way (a
                # worker asks another process) must still end the wait.
                ticket = locks.watch(key) if blocking and may_wait else None
                try:
                    try:
                        granted, released = await locks.set(
                            key, owner, msg.type, msg.start, msg.length,
                            self.session.limits.max_locks)
                    except LockLimitError as exc:
                        raise self.session.refuse(errno.ENOLCK, "lock limit", str(exc)) from None
                    if released:
                        locks.released(released)
                    if granted:
                        if msg.type != LockType.UNLCK:
                            self.session.locked_keys.add(key)
                            await self._remember_owner(fid, owner)
                        return m.Rlock(msg.tag, LockStatus.SUCCESS)
                    if not blocking:
                        return m.Rlock(msg.tag, LockStatus.BLOCKED)
                    if not may_wait:
                        return None
                    await self._wait_for_lock(key, owner, msg, ticket)
                finally:
                    if ticket is not None:
                        locks.unwatch(key, ticket)
                if fid.retired:  # closed while we waited: POSIX close ends the wait too
                    raise errno_error(errno.EBADF, "fid clunked while waiting for a lock")
        finally:
            await self._let_go(fid)

    async def _lock_at_once(self, msg: m.Tlock) -> m.Message | None:
        return await self._lock(msg, may_wait=False)

    async def _remember_owner(self, fid: Fid, owner: LockOwner) -> None:
        """Note an owner that locked through ``fid`` (its close unlocks them). Owners
        that since unlocked everything are dropped whenever the set doubles past 64:
        a client locking and unlocking under ever new proc_ids must not grow it."""
        owners = fid.lock_owners
        if owner in owners:
            return
        owners.add(owner)
        if len(owners) >= 64 and len(owners) & (len(owners) - 1) == 0:
            owners &= await self.locks.holding(fid.lock_key, owners)

    async def _wait_for_lock(self, key: Hashable, owner: LockOwner, msg: m.Tlock,
                             ticket: object) -> None:
        """Sleep until a lock on ``key`` is released, unless that can never happen:
        EDEADLK when the owner holding us up is (through other owners) waiting for
        us. POSIX lets F_SETLKW detect this; the kernel already does for processes
        of one guest, this catches cycles across guests and connections."""
        request = (key, msg.type, msg.start, msg.length)
        locks = self.locks
        if not await locks.begin_wait(owner, request):
            raise errno_error(errno.EDEADLK, "lock wait would deadlock")
        try:
            await locks.wait_for_release(key, ticket)
        finally:
            await locks.end_wait(owner, request)  # runs even if cancelled (see LockService)

    async def _getlock(self, msg: m.Tgetlock) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            owner = LockOwner(self.session.connection_id, msg.client_id, msg.proc_id)
            # Linux's v9fs_file_getlock always sends type UNLCK (it drops F_GETLK's
            # l_type): read it as "is any lock of another owner in my way?", i.e. the
            # test a write lock makes, so that F_GETLK in a guest sees other guests' locks.
            query = LockType.WRLCK if msg.type == LockType.UNLCK else msg.type
            held = await self.locks.conflict(fid.lock_key, owner, query, msg.start, msg.length)
        finally:
            await self._let_go(fid)
        if held is None:
            return m.Rgetlock(msg.tag, LockType.UNLCK, msg.start, msg.length,
                              msg.proc_id, msg.client_id)
        return m.Rgetlock(msg.tag, held.type, held.start, held.length,
                          held.owner.proc_id, held.owner.client_id)
