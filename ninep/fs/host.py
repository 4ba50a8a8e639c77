"""Export a host directory: every path resolved fd-relative, no host symlink followed.

Each ``HostFile`` holds an ``O_PATH|O_NOFOLLOW`` fd for its file (and one for its
parent directory plus its name there, for Trename/Tremove). Walks open one component
at a time with ``openat(dirfd, name, O_PATH|O_NOFOLLOW)``: a walk *to* a symlink gets
the link itself, a walk *through* one fails with ENOTDIR, and ".." at the export root
stays at the root. Nothing is ever looked up by a path string from the export root,
so a symlink swapped in between two requests cannot redirect a later one (QEMU's
CVE-2016-9602). Device nodes, FIFOs and sockets are never opened for I/O (ENXIO), so a
guest cannot reach host devices through nodes it made (CVE-2023-2861).

I/O fds come from re-opening the O_PATH fd through ``/proc/self/fd/N``, which reaches
the same inode without a name lookup; the file type is checked on the O_PATH fd first
(an inode's type never changes, so the check cannot race).

Whose ownership a guest's files carry is the export's identity model (``hostmodel``):
passthrough and mapped run everything as the server and apply the owner a request
carries (on the inode, or in user.virtfs.* xattrs); per-user and squash, with a root
server, run each permission-checked operation under the attaching user's
fsuid/fsgid and groups (``identity.run_as``), in a worker thread by default.
See docs/host-export.md for the choices and measurements. HostFile's namespace
changes (mkdir, link, rename, remove...) are in hostmutate.py, its xattrs in
hostxattr.py.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from typing import Callable, Sequence, TypeVar

import trio

from ..protocol.constants import ACCMODE, OpenFlags, QidType, SetattrMask, V9FS_MAGIC
from .openflags import dotl_to_host_flags
from ..protocol.messages import Dirent, Qid
from ..protocol.codec import unpack_dirents
from . import hostdir, hostmodel, hostsys
from .backend import Attr, Credentials, File, Filesystem, SetAttr, StatFs, errno_error
from .hostqid import QidMapper
from .hostattr import attributes_of, check_offset, truncate
from .hostmodel import MAPPED, SWITCHING_MODELS
from .hostpath import (
    O_PATH_NOFOLLOW, FdRef, check_component, check_new_name, proc_path, raise_fd_limit, time_arg)
from .hostmutate import HostMutations
from .hostxattr import HostXattrs
from .identity import needs_switch, run_as

T = TypeVar("T")
log = logging.getLogger("ninep.host")

# Writes (and reads where RWF_NOWAIT is unsupported) at least this large run in a
# worker thread. benchmarks/host_inline.py: a thread hop costs 150-400 µs here, a
# cached 1 MiB pread ~40 µs, so only transfers beyond any usual msize leave the loop.
THREAD_IO_MIN = 1 << 20
_SIZE_FIRST_MIN = 64 * 1024  # reads asking for more than this fstat first
# Open flags as plain ints, and their host translation memoised: IntFlag arithmetic
# builds enum members (~1 us each), and Tlcreate/Tlopen are hot in create loads.
_ACCMODE, _TRUNC, _EXCL = int(ACCMODE), int(OpenFlags.TRUNC), int(OpenFlags.EXCL)
_WRITE_ACCESS = (int(OpenFlags.WRONLY), int(OpenFlags.RDWR))
_SYNC_FLAGS = int(OpenFlags.SYNC | OpenFlags.DSYNC)
_host_flags = functools.lru_cache(maxsize=1024)(dotl_to_host_flags)
_ALL_BUT_CTIME = int(SetattrMask.MODE | SetattrMask.UID | SetattrMask.GID | SetattrMask.SIZE
                     | SetattrMask.ATIME | SetattrMask.MTIME)


class HostFilesystem(Filesystem):
    """Serve the host directory ``root``.

    ``read_only``: every change fails with EROFS. ``squash``: (uid, gid) every attach
    acts as, whatever it asked for. ``pass_statfs``: report the host filesystem's
    magic in statfs instead of 9P's. ``identity_inline``: switch to a guest's
    identity on the event-loop thread itself, around a syscall sequence that never
    yields, instead of in a worker thread (~10x cheaper; see docs/host-export.md).
    ``listing_cache``: keep listings of directories unchanged for a while
    (``hostdir.ListingCache``; docs/performance.md). ``identity``/``mapped_owner``:
    the identity model (``hostmodel``; docs/host-export.md).
    """

    prompt = True  # host syscalls only: no request waits on another client or an event

    def __init__(self, root: str, *, read_only: bool = False,
                 squash: tuple[int, int] | None = None, pass_statfs: bool = False,
                 identity_inline: bool = False, listing_cache: bool = True,
                 identity: str | None = None,
                 mapped_owner: tuple[int, int] = (0, 0)) -> None:
        self.read_only = read_only
        self.identity_inline = identity_inline
        self.squash = squash
        self.pass_statfs = pass_statfs
        self.qids = QidMapper()
        # Listings of directories that have not changed for a while (hostdir.ListingCache).
        self.listings = hostdir.ListingCache() if listing_cache else None
        # The operator names the export: following symlinks in *that* path is fine.
        self._root = FdRef(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        st = os.stat(self._root.fd)
        self.root_key = (st.st_dev, st.st_ino)
        # hostmodel: passthrough, mapped, per-user or squash (None: root passthrough,
        # others mapped). mapped_owner: what files without mapped xattrs show.
        self.identity = hostmodel.check_model(
            identity or hostmodel.default_model(squash), squash)
        if self.identity == MAPPED and not hostmodel.has_user_xattrs(self._root.fd):
            if identity is not None:
                self._root.release()
                raise ValueError(f"identity mapped needs user.* xattrs, which the "
                                 f"filesystem of {root} does not have")
            log.warning("%s: no user.* xattrs on this filesystem, so not mapped: serving "
                        "per-user (files show their host owners)", root)
            self.identity = hostmodel.PER_USER
        self.mapped = self.identity == MAPPED
        self.mapped_owner = mapped_owner
        self.mapped_cache = hostmodel.MappedCache()
        raise_fd_limit()

    async def attach(self, aname: str, creds: Credentials) -> "HostFile":
        """``aname`` is ignored: the whole export is served to every attach."""
        if self._root is None:
            raise errno_error(errno.EBADF, "export closed")
        if self.squash is not None:
            creds = Credentials(self.squash[0], self.squash[1], ())
        return HostFile(self, self._root.acquire(), None, "", creds, is_root=True,
                        st=os.stat(self._root.fd))

    async def aclose(self) -> None:
        if self._root is not None:
            self._root.release()
            self._root = None

    def root_fd(self) -> int:
        if self._root is None:
            raise errno_error(errno.EBADF, "export closed")
        return self._root.fd

    def is_inside(self, fd: int) -> bool:
        """Whether ``fd`` is (still) below the export root, by the kernel's own path
        of each. Used only for "..": everything else is reached downwards."""
        root = os.readlink(proc_path(self.root_fd()))
        here = os.readlink(proc_path(fd))
        return root == "/" or here == root or here.startswith(root + "/")

    def check_writable(self) -> None:
        if self.read_only:
            raise errno_error(errno.EROFS, "read-only export")


class HostFile(HostMutations, HostXattrs, File):
    """One fid on a host export. See the module docstring for the invariants."""

    def __init__(self, fs: HostFilesystem, node: FdRef, parent: FdRef | None,
                 name: str | None, creds: Credentials, *, is_root: bool,
                 st: os.stat_result, io: FdRef | None = None,
                 switch: bool | None = None, qid: Qid | None = None) -> None:
        self._fs = fs
        self._node = node
        self._parent = parent  # None: root, or not known yet (reached by "..")
        self._name = name
        self._creds = creds
        if switch is None:
            switch = fs.identity in SWITCHING_MODELS and needs_switch(creds)
        self._switch = switch
        self._is_root = is_root
        self._fmt = stat.S_IFMT(st.st_mode)
        self._io = io
        self._nowait_reads = True
        self._sync_writes = False  # O_SYNC/O_DSYNC: every write waits for the disk
        self._logged_bad_names = False
        self.qid = qid if qid is not None else fs.qids.qid_of(st)

    @property
    def lock_key(self) -> object:
        """The host's (st_dev, st_ino): the same in every process serving the export
        (qid paths are not: they number devices in the order met)."""
        return self._fs.qids.host_identity(self.qid.path)

    # --- helpers ----------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args) -> T:
        """Run a permission-checked syscall sequence as the guest's user."""
        if self._switch:
            if self._fs.identity_inline:
                # Safe on the loop thread: fn is plain syscalls and cannot yield, so
                # no other task runs while the identity is the guest's.
                return run_as(self._creds, fn, *args)
            return await trio.to_thread.run_sync(run_as, self._creds, fn, *args)
        return fn(*args)

    def _own_new(self, fd: int, st: os.stat_result, guest_mode: int, gid: int,
                 rdev: int | None = None) -> os.stat_result:
        """Give a new entry the ownership its request carries, as the model keeps it."""
        fs = self._fs
        return hostmodel.own_new(fs.identity, fd, st, guest_mode, self._creds.uid, gid,
                                 fs.mapped_owner, rdev)

    def _io_fd(self) -> int:
        if self._io is None:
            raise errno_error(errno.EBADF, "fid not open")
        return self._io.fd

    def _new_file(self, node: FdRef, parent: FdRef | None, name: str | None,
                  st: os.stat_result, io: FdRef | None = None,
                  qid: Qid | None = None) -> "HostFile":
        is_root = (st.st_dev, st.st_ino) == self._fs.root_key
        if is_root and parent is not None:
            parent.release()
            parent, name = None, ""
        return HostFile(self._fs, node, parent, name, self._creds, is_root=is_root,
                        st=st, io=io, switch=self._switch, qid=qid)

    # --- navigation ------------------------------------------------------------------
    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], "HostFile | None"]:
        if not self._switch:  # the common case, without _call's frame
            return self._walk_sync(names)
        return await self._call(self._walk_sync, names)

    def _walk_sync(self, names: Sequence[str]) -> tuple[list[Qid], "HostFile | None"]:
        cur = self._node.acquire()
        parent = self._parent.acquire() if self._parent is not None else None
        name, at_root = self._name, self._is_root
        qids: list[Qid] = []
        # The starting point's type is known (an inode's type never changes): stat it
        # only if a "." or the root's ".." leaves us there and its qid is needed.
        st: os.stat_result | None = None
        mode = self._fmt
        try:
            for component in names:
                try:
                    moved = self._step(cur.fd, mode, at_root, component)
                    if moved is None:
                        if st is None:
                            st = os.stat(cur.fd)
                    else:
                        new_fd, went_up = moved
                        try:
                            new_st = os.stat(new_fd)
                        except OSError:
                            os.close(new_fd)
                            raise
                        if parent is not None:
                            parent.release()
                        if went_up:
                            cur.release()
                            parent, name = None, None
                        else:
                            parent, name = cur, component
                        cur, st = FdRef(new_fd), new_st
                        mode = stat.S_IFMT(st.st_mode)
                except OSError:
                    if not qids:
                        raise
                    return qids, None
                at_root = (st.st_dev, st.st_ino) == self._fs.root_key
                qids.append(self._fs.qids.qid_of(st))
            if st is None:
                st = os.stat(cur.fd)
            new = self._new_file(cur, parent, name, st, qid=qids[-1] if qids else None)
            cur = parent = None  # owned by the new file now
            return qids, new
        finally:
            if cur is not None:
                cur.release()
            if parent is not None:
                parent.release()

    def _step(self, dir_fd: int, dir_fmt: int, at_root: bool,
              component: str) -> tuple[int, bool] | None:
        """One walk element: None to stay put, else (new O_PATH fd, went up)."""
        check_component(component)
        if component in (".", ".."):
            if dir_fmt != stat.S_IFDIR:
                raise errno_error(errno.ENOTDIR, component)
            if component == "." or at_root:
                return None
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
            if not self._fs.is_inside(up):
                os.close(up)
                raise errno_error(errno.ENOENT, "directory moved out of the export")
            return up, True
        return os.open(component, O_PATH_NOFOLLOW, dir_fd=dir_fd), False

    async def clone(self) -> "HostFile":
        parent = self._parent.acquire() if self._parent is not None else None
        return HostFile(self._fs, self._node.acquire(), parent, self._name, self._creds,
                        is_root=self._is_root, st=os.stat(self._node.fd),
                        switch=self._switch)

    # --- open files ----------------------------------------------------------------
    async def open(self, flags: int) -> int:
        if self._io is not None:
            raise errno_error(errno.EINVAL, "fid already open")
        writes = (flags & _ACCMODE) in _WRITE_ACCESS
        if writes or flags & _TRUNC:
            self._fs.check_writable()
        if self._fmt == stat.S_IFLNK:
            raise errno_error(errno.ELOOP, "open of a symlink")
        if self._fmt not in (stat.S_IFREG, stat.S_IFDIR):
            raise errno_error(errno.ENXIO, "host device nodes, FIFOs and sockets are not opened")
        if self._fs.mapped and self._fmt == stat.S_IFREG:
            hostmodel.check_openable(self._node.fd, self._fmt)
        host = _host_flags(flags) & ~(os.O_CREAT | os.O_EXCL)
        host |= os.O_CLOEXEC | os.O_NOCTTY
        if self._fmt == stat.S_IFDIR:
            host |= os.O_DIRECTORY
        fd = await self._call(os.open, proc_path(self._node.fd), host)
        self._io = FdRef(fd)
        self._sync_writes = bool(flags & _SYNC_FLAGS)
        self.qid = self._fs.qids.qid_of(os.stat(fd))
        return 0

    async def create(self, name: str, flags: int, mode: int, gid: int) -> tuple["HostFile", int]:
        self._fs.check_writable()
        check_new_name(name)
        made = await self._call(self._create_sync, name, flags, mode, gid)
        if made is not None:
            return made, 0
        # The name exists and the guest did not ask for O_EXCL: open what is there,
        # through the same checks as any walk + open (a symlink gives ELOOP).
        _, existing = await self.walk([name])
        assert existing is not None
        try:
            await existing.open(flags & ~(OpenFlags.CREATE | OpenFlags.EXCL))
        except BaseException:
            await existing.close()
            raise
        return existing, 0

    def _create_sync(self, name: str, flags: int, mode: int, gid: int) -> "HostFile | None":
        host = _host_flags(flags) & ~os.O_DIRECTORY
        host |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(name, host, hostmodel.MAPPED_FILE_MODE if self._fs.mapped
                         else mode & 0o7777, dir_fd=self._node.fd)
        except FileExistsError:
            if flags & _EXCL:
                raise
            return None
        try:
            path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        try:
            st = self._own_new(path_fd, os.stat(fd), stat.S_IFREG | (mode & 0o7777), gid)
        except BaseException:
            os.close(fd)
            os.close(path_fd)
            os.unlink(name, dir_fd=self._node.fd)
            raise
        new = self._new_file(FdRef(path_fd), self._node.acquire(), name, st, FdRef(fd))
        new._sync_writes = bool(flags & _SYNC_FLAGS)
        return new

    async def read(self, offset: int, count: int) -> bytes | memoryview:
        """Page-cache hits are read inline (RWF_NOWAIT never blocks on the disk);
        only what would wait for the device goes to a worker thread. Measured in
        docs/host-export.md: a thread hop costs more than a whole 1 MiB cached read."""
        fd = self._io_fd()
        check_offset(offset)
        if count <= 0:
            return b""
        if not self._nowait_reads:
            if count >= THREAD_IO_MIN:
                return await self._threaded_io(os.pread, count, offset)
            return os.pread(fd, count, offset)
        if count > _SIZE_FIRST_MIN:
            # Clients ask for msize-sized reads of small files; zero-filling a 1 MiB
            # buffer costs more than the fstat that sizes it.
            count = min(count, os.fstat(fd).st_size - offset)
            if count <= 0:
                return b""
        buf = bytearray(count)
        try:
            got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            got = 0
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait_reads = False  # this host filesystem cannot say "would block"
            return await self.read(offset, count)
        view = memoryview(buf)
        if got == count or offset + got >= os.fstat(fd).st_size:
            return view[:got]
        rest = await self._threaded_io(os.preadv, [view[got:]], offset + got)
        return view[:got + rest]

    async def write(self, offset: int, data: memoryview) -> int:
        self._fs.check_writable()
        check_offset(offset)
        if len(data) >= THREAD_IO_MIN or self._sync_writes:
            return await self._threaded_io(os.pwrite, data, offset)
        return os.pwrite(self._io_fd(), data, offset)

    async def _threaded_io(self, fn: Callable[..., T], *args) -> T:
        # Hold a reference so a concurrent clunk cannot close (and the fd number be
        # reused for another file) while the worker is still using it.
        if self._io is None:
            raise errno_error(errno.EBADF, "fid not open")
        io = self._io.acquire()
        try:
            return await trio.to_thread.run_sync(fn, io.fd, *args)
        finally:
            io.release()

    async def readdir(self, offset: int, count: int) -> list[Dirent]:
        """Entries from the host's own d_off cookie: the records of ``readdir_packed``
        decoded, so both list the same (see hostdir for types, qids, skipped names)."""
        return unpack_dirents(self._list(offset, count, at_least_one=True))

    async def readdir_packed(self, offset: int, count: int) -> bytes:
        """The server's fast path: Rreaddir data of at most ``count`` bytes, built
        from getdents64 records without a Dirent per entry."""
        return self._list(offset, count, at_least_one=False)

    def _list(self, offset: int, count: int, *, at_least_one: bool) -> bytes:
        if self._fmt != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "readdir")
        fd = self._io_fd()
        dir_st = os.stat(self._node.fd)
        qids = self._fs.qids
        self.qid = qids.qid_of(dir_st)
        records, skipped = hostdir.list_directory(self._fs.listings, fd, offset, count, qids,
                                                  dir_st, self._is_root, at_least_one,
                                                  mapped=self._fs.mapped)
        if skipped and not self._logged_bad_names:
            self._logged_bad_names = True  # once per open directory, not per Treaddir
            log.debug("readdir of %s: skipping %d name(s) that are not UTF-8, e.g. %r",
                      os.readlink(proc_path(self._node.fd)), len(skipped), skipped[0])
        return records

    async def fsync(self, datasync: bool) -> None:
        if self._io is None:
            return
        await self._threaded_io(os.fdatasync if datasync else os.fsync)

    # --- metadata ------------------------------------------------------------------
    async def getattr(self, mask: int) -> Attr:
        attr = attributes_of(self._node.fd, self._fs.qids, mask)
        if self._fs.mapped:
            mapped = self._fs.mapped_cache.read(self._node.fd, self._fmt, attr.qid.path,
                                                (attr.ctime_sec, attr.ctime_nsec))
            attr.mode, attr.uid, attr.gid, attr.rdev = hostmodel.guest_view(
                attr.mode, attr.rdev, mapped, self._fs.mapped_owner)
            if stat.S_ISLNK(attr.mode) and self._fmt != stat.S_IFLNK:
                attr.qid = Qid(int(QidType.SYMLINK), attr.qid.version, attr.qid.path)
        self.qid = attr.qid
        return attr

    async def setattr(self, attr: SetAttr) -> None:
        self._fs.check_writable()
        await self._call(self._setattr_sync, attr)

    def _setattr_sync(self, attr: SetAttr) -> None:
        """Owner first (chown clears set-id bits, so an explicit mode must come after
        it), then mode, then size (truncate sets mtime), then the times asked for."""
        valid, node = attr.valid, self._node.fd
        if self._fs.mapped:
            hostmodel.setattr_mapped(node, self._fmt, attr, self._fs.mapped_owner)
        elif valid & (SetattrMask.UID | SetattrMask.GID):
            hostsys.fchown_empty(node, attr.uid if valid & SetattrMask.UID else -1,
                                 attr.gid if valid & SetattrMask.GID else -1)
        if valid & SetattrMask.MODE and not self._fs.mapped:
            if self._fmt == stat.S_IFLNK:
                raise errno_error(errno.EOPNOTSUPP, "chmod of a symlink")
            os.chmod(proc_path(node), attr.mode & 0o7777)
        if valid & SetattrMask.SIZE:
            truncate(self._node.fd, self._fmt, self._io.fd if self._io else None, attr.size)
        if valid & (SetattrMask.ATIME | SetattrMask.MTIME):
            atime = time_arg(valid, SetattrMask.ATIME, SetattrMask.ATIME_SET,
                              attr.atime_sec, attr.atime_nsec)
            mtime = time_arg(valid, SetattrMask.MTIME, SetattrMask.MTIME_SET,
                              attr.mtime_sec, attr.mtime_nsec)
            if self._fmt == stat.S_IFLNK:
                parent, name = self._locate_sync()
                try:
                    hostsys.utimensat(parent.fd, name, atime, mtime, nofollow=True)
                finally:
                    parent.release()
            else:
                hostsys.utimensat(hostsys.AT_FDCWD, proc_path(node), atime, mtime, nofollow=False)
        if valid & _ALL_BUT_CTIME == 0 and valid & SetattrMask.CTIME:
            # chown(f, -1, -1) in the guest: nothing changes but the ctime, which a
            # chown of the host inode to (-1, -1) sets, as ext4 does.
            hostsys.fchown_empty(node, -1, -1)

    async def statfs(self) -> StatFs:
        fd = self._node.fd
        vfs = os.statvfs(fd)
        return StatFs(
            type=hostsys.fstatfs_type(fd) if self._fs.pass_statfs else V9FS_MAGIC,
            bsize=vfs.f_bsize, blocks=vfs.f_blocks, bfree=vfs.f_bfree, bavail=vfs.f_bavail,
            files=vfs.f_files, ffree=vfs.f_ffree, fsid=vfs.f_fsid & 0xFFFFFFFFFFFFFFFF,
            namelen=vfs.f_namemax)

    async def readlink(self) -> str:
        if self._fs.mapped and self._fmt == stat.S_IFREG:
            target = hostmodel.read_symlink_file(self._node.fd)
            if target is not None:
                return target
        if self._fmt != stat.S_IFLNK:
            raise errno_error(errno.EINVAL, "not a symlink")
        return os.readlink("", dir_fd=self._node.fd)

    # --- lifetime ----------------------------------------------------------------
    async def close(self) -> None:
        for ref in (self._io, self._parent, self._node):
            if ref is not None:
                ref.release()
        self._io = self._parent = None
