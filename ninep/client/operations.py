"""``Client``: every 9P2000.L request as one async method over a ``Multiplexer``.

The methods are thin: fids in, the reply's useful part out (a ``Qid``, ``bytes``, the
``Rgetattr`` message itself when it has many fields). The caller picks fids (see
``Client.fids``); methods that bring a fid to life (attach, walk, xattrwalk) tell the
multiplexer, so a cancelled one does not leak it. Helpers that take paths and allocate
fids themselves live on ``RemoteFile`` (``client.root``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import trio

from ..protocol import messages as m
from ..protocol.codec import ProtocolError, unpack_dirents
from ..protocol.constants import (
    IOHDRSZ,
    MAX_WALK_ELEMENTS,
    MIN_MSIZE,
    NOFID,
    NONUNAME,
    READDIRHDRSZ,
    VERSION_9P2000L,
    GetattrMask,
    LockStatus,
)
from .errors import ConnectionLost, VersionError
from .mux import Multiplexer

if TYPE_CHECKING:
    from .remote_file import RemoteFile


class Client(Multiplexer):
    """A 9P2000.L client connection. Make one with ``connect`` or ``open_client``."""

    root: "RemoteFile | None" = None  # the attach fid, set by open_client
    default_gid: int = os.getgid()  # gid for new files, as the kernel sends the caller's

    # --- session ---------------------------------------------------------------------
    async def version(self, msize: int | None = None, version: str = VERSION_9P2000L) -> tuple[int, str]:
        """Tversion: agree on msize and protocol. Returns (msize, version) as agreed.

        Raises ``VersionError`` (and closes the connection) unless the server speaks
        9P2000.L with an msize of at least 4096.
        """
        reply = await self.rpc_notag(m.Tversion, msize=msize or self.msize, version=version)
        assert isinstance(reply, m.Rversion)
        problem = None
        if reply.version != version:
            problem = f"server speaks {reply.version!r}, not {version!r}"
        elif not MIN_MSIZE <= reply.msize <= (msize or self.msize):
            problem = f"server offered msize {reply.msize}"
        if problem:
            await self.aclose()
            raise VersionError(problem)
        self.agree_msize(reply.msize)
        return reply.msize, reply.version

    async def auth(self, afid: int, uname: str, aname: str, n_uname: int = NONUNAME) -> m.Qid:
        reply = await self.rpc(m.Tauth, creates_fid=afid, afid=afid, uname=uname, aname=aname,
                               n_uname=n_uname)
        return reply.aqid  # type: ignore[attr-defined]

    async def attach(self, fid: int, aname: str = "", uname: str = "", n_uname: int = NONUNAME,
                     afid: int = NOFID) -> m.Qid:
        reply = await self.rpc(m.Tattach, creates_fid=fid, fid=fid, afid=afid, uname=uname,
                               aname=aname, n_uname=n_uname)
        return reply.qid  # type: ignore[attr-defined]

    # --- navigation ------------------------------------------------------------------
    async def walk(self, fid: int, newfid: int, names: Sequence[str]) -> list[m.Qid]:
        """One Twalk (at most 16 names). Returns the qids walked: fewer than ``names``
        means the walk stopped early and ``newfid`` was not made. ``RemoteFile.walk``
        takes paths of any length and raises ENOENT on a short walk."""
        if len(names) > MAX_WALK_ELEMENTS:
            if newfid != fid:
                self.fids.release(newfid)  # as for any walk that fails
            raise ValueError(f"Twalk takes at most {MAX_WALK_ELEMENTS} names, got {len(names)}")
        born = None if newfid == fid else newfid
        reply = await self.rpc(m.Twalk, creates_fid=born, fid=fid, newfid=newfid, wnames=tuple(names))
        return list(reply.qids)  # type: ignore[attr-defined]

    # --- open files ------------------------------------------------------------------
    async def lopen(self, fid: int, flags: int) -> tuple[m.Qid, int]:
        """Tlopen with P9_DOTL ``flags``. Returns (qid, iounit)."""
        reply = await self.rpc(m.Tlopen, fid=fid, flags=flags)
        return reply.qid, reply.iounit  # type: ignore[attr-defined]

    async def lcreate(self, fid: int, name: str, flags: int, mode: int,
                      gid: int | None = None) -> tuple[m.Qid, int]:
        """Tlcreate in directory ``fid``; afterwards ``fid`` is the new, opened file."""
        reply = await self.rpc(m.Tlcreate, fid=fid, name=name, flags=flags, mode=mode,
                               gid=self._gid(gid))
        return reply.qid, reply.iounit  # type: ignore[attr-defined]

    async def read(self, fid: int, offset: int, count: int) -> bytes | memoryview:
        """Tread of at most ``count`` bytes (and at most msize - IOHDRSZ, as the kernel)."""
        count = min(count, self.msize - IOHDRSZ)
        reply = await self.rpc(m.Tread, fid=fid, offset=offset, count=count)
        return reply.data  # type: ignore[attr-defined]

    async def write(self, fid: int, offset: int, data: m.Buffer) -> int:
        """Twrite; returns the count the server accepted (may be short)."""
        reply = await self.rpc(m.Twrite, fid=fid, offset=offset, data=data)
        return reply.count  # type: ignore[attr-defined]

    async def readdir(self, fid: int, offset: int, count: int) -> list[m.Dirent]:
        """One Treaddir (``count`` clamped to what fits in msize); an empty list means
        the end of the directory."""
        count = min(count, self.msize - READDIRHDRSZ)
        reply = await self.rpc(m.Treaddir, fid=fid, offset=offset, count=count)
        try:
            return unpack_dirents(reply.data)  # type: ignore[attr-defined]
        except ProtocolError as exc:
            await self.abort(exc)
            self.raise_if_closed()
            raise

    async def fsync(self, fid: int, datasync: bool = False) -> None:
        await self.rpc(m.Tfsync, fid=fid, datasync=int(datasync))

    # --- fids ------------------------------------------------------------------------
    async def clunk(self, fid: int) -> None:
        """Tclunk, then return ``fid`` to the pool (9P frees it whatever the reply).

        Shielded from cancellation for up to ``flush_timeout`` seconds: a fid whose
        clunk was flushed would be in limbo on the server.
        """
        await self._forgetting(m.Tclunk, fid)

    async def remove(self, fid: int) -> None:
        """Tremove: remove the file and clunk ``fid`` (even if the remove fails)."""
        await self._forgetting(m.Tremove, fid)

    async def _forgetting(self, request_cls: type[m.Message], fid: int) -> None:
        try:
            with trio.move_on_after(self.flush_timeout, shield=True):
                await self.rpc(request_cls, fid=fid)
        except ConnectionLost:
            pass  # every fid dies with the connection
        finally:
            if fid in self.fids:
                self.fids.release(fid)

    # --- attributes ------------------------------------------------------------------
    async def getattr(self, fid: int, request_mask: int = GetattrMask.ALL) -> m.Rgetattr:
        """Tgetattr; the reply's ``valid`` says which fields the server filled in."""
        return await self.rpc(m.Tgetattr, fid=fid, request_mask=request_mask)  # type: ignore[return-value]

    async def setattr(self, fid: int, valid: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                      size: int = 0, atime_sec: int = 0, atime_nsec: int = 0,
                      mtime_sec: int = 0, mtime_nsec: int = 0) -> None:
        """Tsetattr; ``valid`` is a ``SetattrMask`` naming the fields that apply."""
        await self.rpc(m.Tsetattr, fid=fid, valid=valid, mode=mode, uid=uid, gid=gid, size=size,
                       atime_sec=atime_sec, atime_nsec=atime_nsec, mtime_sec=mtime_sec,
                       mtime_nsec=mtime_nsec)

    async def statfs(self, fid: int) -> m.Rstatfs:
        return await self.rpc(m.Tstatfs, fid=fid)  # type: ignore[return-value]

    async def xattrwalk(self, fid: int, newfid: int, name: str) -> int:
        """Txattrwalk: ``newfid`` reads the value of ``name`` (or, for "", the NUL
        separated list of names). Returns the value's size."""
        reply = await self.rpc(m.Txattrwalk, creates_fid=newfid, fid=fid, newfid=newfid, name=name)
        return reply.size  # type: ignore[attr-defined]

    async def xattrcreate(self, fid: int, name: str, attr_size: int, flags: int = 0) -> None:
        """Txattrcreate: ``fid`` becomes a write-only fid for the value; writing
        ``attr_size`` bytes and clunking it sets the attribute."""
        await self.rpc(m.Txattrcreate, fid=fid, name=name, attr_size=attr_size, flags=flags)

    # --- directory entries -----------------------------------------------------------
    async def mkdir(self, dfid: int, name: str, mode: int, gid: int | None = None) -> m.Qid:
        reply = await self.rpc(m.Tmkdir, dfid=dfid, name=name, mode=mode, gid=self._gid(gid))
        return reply.qid  # type: ignore[attr-defined]

    async def symlink(self, fid: int, name: str, symtgt: str, gid: int | None = None) -> m.Qid:
        reply = await self.rpc(m.Tsymlink, fid=fid, name=name, symtgt=symtgt, gid=self._gid(gid))
        return reply.qid  # type: ignore[attr-defined]

    async def mknod(self, dfid: int, name: str, mode: int, major: int = 0, minor: int = 0,
                    gid: int | None = None) -> m.Qid:
        reply = await self.rpc(m.Tmknod, dfid=dfid, name=name, mode=mode, major=major,
                               minor=minor, gid=self._gid(gid))
        return reply.qid  # type: ignore[attr-defined]

    async def link(self, dfid: int, fid: int, name: str) -> None:
        """Tlink: a new name ``name`` in directory ``dfid`` for the file ``fid``."""
        await self.rpc(m.Tlink, dfid=dfid, fid=fid, name=name)

    async def readlink(self, fid: int) -> str:
        reply = await self.rpc(m.Treadlink, fid=fid)
        return reply.target  # type: ignore[attr-defined]

    async def rename(self, fid: int, dfid: int, name: str) -> None:
        """Trename: move the file ``fid`` to ``name`` in directory ``dfid``."""
        await self.rpc(m.Trename, fid=fid, dfid=dfid, name=name)

    async def renameat(self, olddirfid: int, oldname: str, newdirfid: int, newname: str) -> None:
        await self.rpc(m.Trenameat, olddirfid=olddirfid, oldname=oldname,
                       newdirfid=newdirfid, newname=newname)

    async def unlinkat(self, dirfid: int, name: str, flags: int = 0) -> None:
        """Tunlinkat; ``flags`` is AT_REMOVEDIR for directories."""
        await self.rpc(m.Tunlinkat, dirfid=dirfid, name=name, flags=flags)

    # --- locks -----------------------------------------------------------------------
    async def lock(self, fid: int, type: int, start: int = 0, length: int = 0, *,
                   flags: int = 0, proc_id: int = 0, client_id: str = "") -> LockStatus:
        """Tlock (POSIX byte-range lock; ``length`` 0 means to the end of the file)."""
        reply = await self.rpc(m.Tlock, fid=fid, type=type, flags=flags, start=start,
                               length=length, proc_id=proc_id, client_id=client_id)
        return LockStatus(reply.status)  # type: ignore[attr-defined]

    async def getlock(self, fid: int, type: int, start: int = 0, length: int = 0, *,
                      proc_id: int = 0, client_id: str = "") -> m.Rgetlock:
        """Tgetlock: the reply's ``type`` is UNLCK if nothing conflicts, otherwise the
        conflicting lock."""
        return await self.rpc(m.Tgetlock, fid=fid, type=type, start=start,  # type: ignore[return-value]
                              length=length, proc_id=proc_id, client_id=client_id)

    def _gid(self, gid: int | None) -> int:
        return self.default_gid if gid is None else gid
