"""One handler per 9P2000.L T-message: check, call the backend, keep the books.

Pure in the sans-I/O sense: no sockets, no trio. Handlers are coroutines only because
the backend's methods are; locks are asked of, and a blocking Tlock waits on, an
object the trio layer passes in (``LockService``: a worker's table is in another
process, so its calls are awaited).

Every handler returns the reply message; an ``OSError`` from a check or from the
backend becomes ``Rlerror(errno)``. Tversion and Tflush are not here: they act on the
connection (its requests in flight), so ``connection.py`` answers them. Tlock and
Tgetlock, and what a close does to locks, are in lockrequests.py.
"""

from __future__ import annotations

import errno
import logging
from typing import Awaitable, Callable

from ..fs.backend import Credentials, File, SetAttr, errno_error
from ..protocol import messages as m
from ..protocol.constants import (
    ACCMODE,
    AT_REMOVEDIR,
    IOHDRSZ,
    MAX_WALK_ELEMENTS,
    NOFID,
    READDIRHDRSZ,
    Errno,
    OpenFlags,
    SetattrMask,
    host_errno_to_wire,
)
from .lockrequests import LockRequests
from .locks import LockService
from .session import Fid, FidKind, Session, check_new_name, walk_name_ok

log = logging.getLogger("ninep.server")

XATTR_SIZE_MAX = 65536  # Linux's limit for one xattr value (and for a listing)
_MAJOR_MAX = (1 << 12) - 1  # Linux MKDEV: 12 bits of major ...
_MINOR_MAX = (1 << 20) - 1  # ... and 20 of minor (MINORBITS)
_NO_ID = 0xFFFFFFFF  # (uid_t)-1: "leave it" to chown(2)
_NSEC_PER_SEC = 1_000_000_000
_U64 = (1 << 64) - 1

# Classic 9P2000 requests: a 9P2000.L server does not implement them.
_CLASSIC_REQUESTS = (m.Topen, m.Tcreate, m.Tstat, m.Twstat)
# Tlopen flags that change the file: refused on a read-only export, as open(2) on a
# read-only mount refuses them (O_RDONLY|O_TRUNC included).
_WRITE_ACCESS = (OpenFlags.WRONLY, OpenFlags.RDWR)


class Dispatcher(LockRequests):
    """Answers requests for one session (one connection)."""

    def __init__(self, session: Session, locks: LockService, pack_dirents: Callable,
                 credentials_for: Callable[[str, int], Credentials]) -> None:
        """``credentials_for(uname, n_uname)``: who a Tattach without ``squash`` is
        (the shell passes ``fs.identity.credentials_for``, the host's user database)."""
        self.session = session
        self._credentials_for = credentials_for
        self.locks = locks
        self._pack_dirents = pack_dirents
        self._handlers: dict[type, Callable[[m.Message], Awaitable[m.Message]]] = {
            m.Tattach: self._attach, m.Tauth: self._auth, m.Twalk: self._walk,
            m.Tlopen: self._lopen, m.Tlcreate: self._lcreate, m.Tread: self._read,
            m.Twrite: self._write, m.Tclunk: self._clunk, m.Tremove: self._remove,
            m.Tstatfs: self._statfs, m.Tsymlink: self._symlink, m.Tmknod: self._mknod,
            m.Trename: self._rename, m.Trenameat: self._renameat,
            m.Treadlink: self._readlink, m.Tgetattr: self._getattr,
            m.Tsetattr: self._setattr, m.Txattrwalk: self._xattrwalk,
            m.Txattrcreate: self._xattrcreate, m.Treaddir: self._readdir,
            m.Tfsync: self._fsync, m.Tlock: self._lock, m.Tgetlock: self._getlock,
            m.Tlink: self._link, m.Tmkdir: self._mkdir, m.Tunlinkat: self._unlinkat,
        }

    async def handle(self, msg: m.Message, at_once: bool = False) -> m.Message | None:
        """The reply to ``msg``. ``at_once`` (a blocking Tlock, rules.TRY): tried
        without waiting, None if it is refused and must wait (then it comes back here
        from a task)."""
        handler = self._lock_at_once if at_once else self._handlers.get(type(msg))
        if handler is None:
            code = Errno.ENOSYS if isinstance(msg, _CLASSIC_REQUESTS) else Errno.EINVAL
            return m.Rlerror(msg.tag, code)
        if self.session.version is None:
            return m.Rlerror(msg.tag, Errno.EPROTO)  # no Tversion yet
        try:
            return await handler(msg)
        except OSError as exc:
            return m.Rlerror(msg.tag, host_errno_to_wire(exc.errno or errno.EIO))
        except Exception:  # a backend bug must cost one request, not the connection
            log.exception("backend failed on %s", type(msg).__name__)
            return m.Rlerror(msg.tag, Errno.EIO)

    # --- fid helpers ------------------------------------------------------------------
    def _file_fid(self, number: int) -> Fid:
        """Use a fid that names a file (not an xattr value)."""
        fid = self.session.use(number)
        if fid.kind is not FidKind.FILE or fid.file is None:
            fid.users -= 1  # (not retired: it is in the table)
            raise errno_error(errno.EBADF, f"fid {number} is an xattr fid")
        return fid

    @staticmethod
    def _check_writable(fid: Fid) -> None:
        if fid.export.read_only:
            raise errno_error(errno.EROFS, "read-only export")

    async def _let_go(self, fid: Fid) -> None:
        if self.session.let_go(fid):
            await self.close_fid(fid)

    async def close_fid(self, fid: Fid) -> OSError | None:
        """The fid left the books: commit a pending xattr, close its File, drop the
        connection's locks on the file if it was the last fid there. Returns the
        commit's error (reported on Rclunk)."""
        fid.closed = True
        error: OSError | None = None
        try:
            if fid.kind is FidKind.FILE and not fid.lock_owners and not self.session.locked_keys:
                self.session.last_fid_on(fid)  # a plain fid: no xattr, no lock to see to
            else:
                error = await self._settle(fid)
        finally:
            if fid.file is not None:
                try:
                    await fid.file.close()
                except OSError as exc:
                    log.debug("close of fid %d failed: %s", fid.number, exc)
        return error

    async def _settle(self, fid: Fid) -> OSError | None:
        """What a closing fid leaves besides its File: a held or pending xattr value
        (the commit's error is returned), and locks."""
        if fid.xattr_held:
            self.session.drop_xattr(fid)
        try:
            if fid.kind is FidKind.XATTR_WRITE and fid.file is not None:
                return await self._commit_xattr(fid)
            return None
        finally:
            try:
                await self._drop_locks(fid)
            except OSError as exc:  # a worker's supervisor gone or not answering
                log.warning("dropping the locks of fid %d failed: %s", fid.number, exc)

    async def _commit_xattr(self, fid: Fid) -> OSError | None:
        value = bytes(fid.xattr_value)
        try:
            if len(value) != fid.xattr_size:
                raise errno_error(errno.EINVAL, "xattr value shorter than announced")
            if fid.xattr_size == 0:
                await fid.file.xattr_remove(fid.xattr_name)
            else:
                await fid.file.xattr_set(fid.xattr_name, value, fid.xattr_flags)
        except OSError as exc:
            return exc
        return None

    # --- session -----------------------------------------------------------------------
    async def _auth(self, msg: m.Tauth) -> m.Message:
        raise errno_error(errno.ENOSYS, "no authentication required")

    async def _attach(self, msg: m.Tattach) -> m.Message:
        if msg.afid != NOFID:
            raise errno_error(errno.EBADF, "no auth fids on this server")
        session = self.session
        export, sub_aname = session.export_for(msg.aname)
        creds = export.squash or self._credentials_for(msg.uname, msg.n_uname)
        session.reserve(msg.fid)
        try:
            root = await export.filesystem.attach(sub_aname, creds)
            for old in session.bind(Fid(msg.fid, root, export, creds)):
                await self.close_fid(old)
        finally:
            session.unreserve(msg.fid)
        return m.Rattach(msg.tag, root.qid)

    # --- walking -------------------------------------------------------------------------
    async def _walk(self, msg: m.Twalk) -> m.Message:
        names = msg.wnames
        if len(names) > MAX_WALK_ELEMENTS:
            raise errno_error(errno.EINVAL, "too many walk elements")
        fid = self._file_fid(msg.fid)
        try:
            # Linux walks from opened fids: when a dentry has no fid of its own it
            # borrows an open one from the inode (fs/9p/fid.c, v9fs_fid_find_inode)
            # and clones it, e.g. for fsetxattr on an unlinked open file. The new fid
            # is a fresh, unopened one (QEMU and diod allow this too); only replacing
            # an opened fid in place (newfid == fid) is refused.
            if fid.opened and msg.newfid == msg.fid:
                raise errno_error(errno.EBADF, "walk of an opened fid onto itself")
            if msg.newfid == msg.fid and not names:
                return m.Rwalk(msg.tag, ())
            bad = None
            for index, name in enumerate(names):
                if not walk_name_ok(name):
                    if index == 0:
                        raise errno_error(errno.ENOENT, f"bad name {name!r}")
                    bad, names = index, names[:index]
                    break
            self.session.reserve(msg.newfid, replacing=msg.fid)
            try:
                if names:
                    qids, new_file = await fid.file.walk(names)
                else:
                    qids, new_file = [], await fid.file.clone()
                if new_file is not None and bad is not None:
                    await new_file.close()  # the client's walk stops at the bad name
                    new_file = None
                if new_file is not None:
                    for old in self.session.bind(Fid(msg.newfid, new_file, fid.export, fid.creds)):
                        await self.close_fid(old)
                return m.Rwalk(msg.tag, tuple(qids))
            finally:
                if msg.newfid != msg.fid:
                    self.session.unreserve(msg.newfid)
        finally:
            await self._let_go(fid)

    # --- open files ------------------------------------------------------------------------
    async def _lopen(self, msg: m.Tlopen) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            self._start_opening(fid)
            try:
                if (msg.flags & ACCMODE) in _WRITE_ACCESS or msg.flags & OpenFlags.TRUNC:
                    self._check_writable(fid)
                iounit = await fid.file.open(msg.flags)
                fid.open_flags = msg.flags
            finally:
                fid.opening = False
            return m.Rlopen(msg.tag, fid.file.qid, self._iounit(iounit))
        finally:
            await self._let_go(fid)

    @staticmethod
    def _start_opening(fid: Fid) -> None:
        """Tlopen/Tlcreate: one at a time per fid. Pipelined ones would otherwise all
        pass the "already open" check while the first is in the backend, and open
        the file twice (the host backend then leaks the first open fd)."""
        if fid.opened or fid.opening:
            raise errno_error(errno.EINVAL, "fid already open")
        fid.opening = True

    def _iounit(self, iounit: int) -> int:
        return min(iounit, self.session.msize - IOHDRSZ)

    async def _lcreate(self, msg: m.Tlcreate) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            self._start_opening(fid)
            try:
                self._check_writable(fid)
                check_new_name(msg.name)
                new_file, iounit = await fid.file.create(msg.name, msg.flags, msg.mode, msg.gid)
            finally:
                fid.opening = False
            if fid.retired:  # clunked while we created: the new file has no fid to live in
                await new_file.close()
                raise errno_error(errno.EBADF, "fid clunked during create")
            opened = Fid(fid.number, new_file, fid.export, fid.creds, open_flags=msg.flags)
            for old in self.session.bind(opened):
                await self.close_fid(old)
            return m.Rlcreate(msg.tag, new_file.qid, self._iounit(iounit))
        finally:
            await self._let_go(fid)

    async def _read(self, msg: m.Tread) -> m.Message:
        fid = self.session.use(msg.fid)
        try:
            if not fid.readable:
                raise errno_error(errno.EBADF, "fid not open for reading")
            count = min(msg.count, self.session.msize - IOHDRSZ)
            if fid.kind is FidKind.XATTR_READ:
                data = fid.xattr_value[msg.offset:msg.offset + count]
            else:
                data = await fid.file.read(msg.offset, count)
                if len(data) > count:
                    data = memoryview(data)[:count]
            return m.Rread(msg.tag, data)
        finally:
            await self._let_go(fid)

    async def _write(self, msg: m.Twrite) -> m.Message:
        fid = self.session.use(msg.fid)
        try:
            if not fid.writable:
                raise errno_error(errno.EBADF, "fid not open for writing")
            if fid.kind is FidKind.XATTR_WRITE:
                value = fid.xattr_value
                if msg.offset != len(value):
                    raise errno_error(errno.EINVAL, "xattr writes must be sequential")
                if len(value) + len(msg.data) > fid.xattr_size:
                    raise errno_error(errno.ERANGE, "xattr value longer than announced")
                value += msg.data
                return m.Rwrite(msg.tag, len(msg.data))
            data = msg.data if isinstance(msg.data, memoryview) else memoryview(msg.data)
            written = await fid.file.write(msg.offset, data)
            if written == 0 and len(data):
                # Linux retries a short write; an Rwrite of 0 would make it loop forever.
                raise errno_error(errno.EIO, "backend wrote nothing")
            return m.Rwrite(msg.tag, written)
        finally:
            await self._let_go(fid)

    async def _readdir(self, msg: m.Treaddir) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            if not fid.readable:
                raise errno_error(errno.EBADF, "directory not opened for reading")
            count = min(msg.count, self.session.msize - READDIRHDRSZ)
            # A backend may build the wire records itself (host exports do: ~10x
            # cheaper per entry than Dirent objects packed one by one).
            packed = getattr(fid.file, "readdir_packed", None)
            if packed is not None:
                data = await packed(msg.offset, count)
                if len(data) > count:
                    raise errno_error(errno.EIO, "readdir_packed overran count")
                return m.Rreaddir(msg.tag, data)
            entries = await fid.file.readdir(msg.offset, count)
            data, _ = self._pack_dirents(entries, count)
            return m.Rreaddir(msg.tag, data)
        finally:
            await self._let_go(fid)

    async def _fsync(self, msg: m.Tfsync) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            await fid.file.fsync(bool(msg.datasync))
            return m.Rfsync(msg.tag)
        finally:
            await self._let_go(fid)

    # --- fid lifetime ----------------------------------------------------------------------
    async def _clunk(self, msg: m.Tclunk) -> m.Message:
        fid, close_now = self.session.unbind(msg.fid)
        if not close_now and fid.lock_key is not None:
            self.locks.released({fid.lock_key})  # a Tlock blocked on this fid must see it go
        if close_now:
            error = await self.close_fid(fid)
            if error is not None:
                raise error
        return m.Rclunk(msg.tag)

    async def _remove(self, msg: m.Tremove) -> m.Message:
        fid = self._file_fid(msg.fid)
        error: OSError | None = None
        try:
            self._check_writable(fid)
            await fid.file.remove()
        except OSError as exc:
            error = exc
        finally:
            await self._let_go(fid)
            # Tremove clunks the fid whatever happened (9P: "even if the remove fails").
            if self.session.fids.get(msg.fid) is fid:
                gone, close_now = self.session.unbind(msg.fid)
                if close_now:
                    await self.close_fid(gone)
        if error is not None:
            raise error
        return m.Rremove(msg.tag)

    # --- metadata --------------------------------------------------------------------------
    async def _statfs(self, msg: m.Tstatfs) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            st = await fid.file.statfs()
        finally:
            await self._let_go(fid)
        return m.Rstatfs(msg.tag, st.type, st.bsize, st.blocks, st.bfree, st.bavail,
                         st.files, st.ffree, st.fsid, st.namelen)

    async def _getattr(self, msg: m.Tgetattr) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            a = await fid.file.getattr(msg.request_mask)
        finally:
            await self._let_go(fid)
        # Seconds go as u64 two's complement: v9fs reads them into a signed time64_t, so
        # a time before 1970 (a host file's, or one the guest set) is 2^64-n on the wire.
        return m.Rgetattr(msg.tag, a.valid, a.qid, a.mode, a.uid, a.gid, a.nlink, a.rdev,
                          a.size, a.blksize, a.blocks, a.atime_sec & _U64, a.atime_nsec,
                          a.mtime_sec & _U64, a.mtime_nsec, a.ctime_sec & _U64, a.ctime_nsec,
                          a.btime_sec & _U64, a.btime_nsec, a.gen, a.data_version)

    async def _setattr(self, msg: m.Tsetattr) -> m.Message:
        if not _setattr_in_range(msg):
            return m.Rlerror(msg.tag, Errno.EINVAL)
        fid = self._file_fid(msg.fid)
        try:
            self._check_writable(fid)
            await fid.file.setattr(SetAttr(msg.valid, msg.mode, msg.uid, msg.gid, msg.size,
                                           msg.atime_sec, msg.atime_nsec,
                                           msg.mtime_sec, msg.mtime_nsec))
            return m.Rsetattr(msg.tag)
        finally:
            await self._let_go(fid)

    async def _readlink(self, msg: m.Treadlink) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            return m.Rreadlink(msg.tag, await fid.file.readlink())
        finally:
            await self._let_go(fid)

    # --- directory mutations ---------------------------------------------------------------
    async def _in_dir(self, dirfid: int, name: str, op: Callable[[File], Awaitable]):
        check_new_name(name)
        fid = self._file_fid(dirfid)
        try:
            self._check_writable(fid)
            return await op(fid.file)
        finally:
            await self._let_go(fid)

    async def _mkdir(self, msg: m.Tmkdir) -> m.Message:
        qid = await self._in_dir(msg.dfid, msg.name, lambda d: d.mkdir(msg.name, msg.mode, msg.gid))
        return m.Rmkdir(msg.tag, qid)

    async def _symlink(self, msg: m.Tsymlink) -> m.Message:
        qid = await self._in_dir(msg.fid, msg.name,
                                 lambda d: d.symlink(msg.name, msg.symtgt, msg.gid))
        return m.Rsymlink(msg.tag, qid)

    async def _mknod(self, msg: m.Tmknod) -> m.Message:
        # Linux's dev_t holds a 12-bit major and a 20-bit minor (MKDEV); anything wider
        # cannot name a device, and would overflow os.makedev's C int on the way.
        if msg.major > _MAJOR_MAX or msg.minor > _MINOR_MAX:
            return m.Rlerror(msg.tag, Errno.EINVAL)
        qid = await self._in_dir(msg.dfid, msg.name, lambda d: d.mknod(
            msg.name, msg.mode, msg.major, msg.minor, msg.gid))
        return m.Rmknod(msg.tag, qid)

    async def _unlinkat(self, msg: m.Tunlinkat) -> m.Message:
        if msg.flags & ~AT_REMOVEDIR:  # as unlinkat(2): no other flag is defined
            return m.Rlerror(msg.tag, Errno.EINVAL)
        await self._in_dir(msg.dirfid, msg.name, lambda d: d.unlinkat(msg.name, msg.flags))
        return m.Runlinkat(msg.tag)

    async def _two_fids(self, first: int, second: int, op: Callable[[File, File], Awaitable]):
        a = self._file_fid(first)
        try:
            b = self._file_fid(second)
            try:
                self._check_writable(a)
                self._check_writable(b)
                return await op(a.file, b.file)
            finally:
                await self._let_go(b)
        finally:
            await self._let_go(a)

    async def _link(self, msg: m.Tlink) -> m.Message:
        check_new_name(msg.name)
        await self._two_fids(msg.dfid, msg.fid, lambda d, f: d.link(f, msg.name))
        return m.Rlink(msg.tag)

    async def _rename(self, msg: m.Trename) -> m.Message:
        check_new_name(msg.name)
        await self._two_fids(msg.fid, msg.dfid, lambda f, d: f.rename(d, msg.name))
        return m.Rrename(msg.tag)

    async def _renameat(self, msg: m.Trenameat) -> m.Message:
        check_new_name(msg.oldname)
        check_new_name(msg.newname)
        await self._two_fids(msg.olddirfid, msg.newdirfid,
                             lambda old, new: old.renameat(msg.oldname, new, msg.newname))
        return m.Rrenameat(msg.tag)

    # --- extended attributes ---------------------------------------------------------------
    async def _xattrwalk(self, msg: m.Txattrwalk) -> m.Message:
        fid = self._file_fid(msg.fid)
        try:
            self.session.reserve(msg.newfid, replacing=msg.fid)
            try:
                if msg.name == "":
                    names = await fid.file.xattr_list()
                    value = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
                else:
                    value = bytes(await fid.file.xattr_get(msg.name))
                if len(value) > XATTR_SIZE_MAX:
                    raise errno_error(errno.E2BIG, "xattr larger than 64 KiB")
                # getxattr(2) may fail as stat(2) does, ENOMEM included
                self.session.hold_xattr(len(value), errno.ENOMEM)
                holder = Fid(msg.newfid, None, fid.export, fid.creds, kind=FidKind.XATTR_READ,
                             xattr_name=msg.name, xattr_value=value, xattr_held=len(value))
                for old in self.session.bind(holder):
                    await self.close_fid(old)
            finally:
                if msg.newfid != msg.fid:
                    self.session.unreserve(msg.newfid)
            return m.Rxattrwalk(msg.tag, len(value))
        finally:
            await self._let_go(fid)

    async def _xattrcreate(self, msg: m.Txattrcreate) -> m.Message:
        if msg.attr_size > XATTR_SIZE_MAX:
            raise errno_error(errno.E2BIG, "xattr larger than 64 KiB")
        if msg.name == "":
            raise errno_error(errno.EINVAL, "empty xattr name")
        fid = self._file_fid(msg.fid)
        try:
            if fid.opened or fid.opening:
                raise errno_error(errno.EINVAL, "xattrcreate on an opened fid")
            self._check_writable(fid)
            # The announced size is what the client may make us hold until the clunk.
            # EDQUOT (a setxattr(2) error): a quota of this client's, not a full disk.
            self.session.hold_xattr(msg.attr_size, errno.EDQUOT)
            fid.xattr_held = msg.attr_size
            fid.kind = FidKind.XATTR_WRITE
            fid.xattr_name = msg.name
            fid.xattr_size = msg.attr_size
            fid.xattr_flags = msg.flags
            fid.xattr_value = bytearray()
            return m.Rxattrcreate(msg.tag)
        finally:
            await self._let_go(fid)



def _setattr_in_range(msg: m.Tsetattr) -> bool:
    """Values a backend's C call would read as something else: chown(2) takes uid or gid
    (uid_t)-1 as "leave it", and utimensat(2) a nsec of 2^30-1 / 2^30-2 as UTIME_NOW /
    UTIME_OMIT; each would answer success for a change not made. A time's seconds are
    signed on the wire (before 1970 is 2^64-n), so they are not checked."""
    valid = msg.valid
    return not ((valid & SetattrMask.UID and msg.uid == _NO_ID)
                or (valid & SetattrMask.GID and msg.gid == _NO_ID)
                or (valid & SetattrMask.ATIME and valid & SetattrMask.ATIME_SET
                    and msg.atime_nsec >= _NSEC_PER_SEC)
                or (valid & SetattrMask.MTIME and valid & SetattrMask.MTIME_SET
                    and msg.mtime_nsec >= _NSEC_PER_SEC))
