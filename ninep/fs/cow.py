"""Copy-on-write: a read-only base with a writable upper host directory per guest.

    CowFilesystem(base="/srv/debian.tar.zst", upper="/srv/vms/{aname}")

The guest sees the base with its own changes on top. Files are read from the base
until the first change, which copies the file (data, owner, mode, times, xattrs) into
the upper directory atomically: a temporary in ``.ninep-cow/work`` is completed,
fsynced and renamed into place, so a crash leaves the old state or the new one.
Deletions leave ``.wh.NAME`` whiteouts; a directory made over a deleted one is
marked opaque, and a renamed directory gets a redirect to its base directory's path
(nothing below it is copied). Markers and the on-disk layout: ``cowupper``.
The model, crash safety and limits: docs/cow.md.

The base is any Filesystem, read through the File contract only (a read-only host
export, a tarball or an OCI image layout: ``open_base``). The upper is a ``HostFilesystem``: every
guest operation on upper files goes through the host export's code (fd-relative,
no symlink followed, the guest's identity); only copy-up and markers are done here.

Each attach's aname picks an upper (``{aname}`` in the template); all attaches with
the same aname and identity share one tree of ``Node`` objects, so a fid that read a
file from the base before another fid copied it up reads the upper copy afterwards,
and a directory rename moves every open fid below it.

qid.path: a file that came from the base keeps the base's qid.path for its whole life
(recorded in the ``user.ninep.origin`` xattr of its upper copy), with bit 63 set; a
file made in the upper has the upper's qid.path. qid.version is the host export's
constant (hostqid.HOST_QID_VERSION): it never changes with the guest's own writes.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
from typing import Sequence

from ..protocol.constants import AT_REMOVEDIR, OpenFlags, SetattrMask
from ..protocol.codec import unpack_dirents
from ..protocol.messages import Dirent, Qid
from . import cowupper as up
from . import hostmodel
from .backend import Attr, Credentials, File, Filesystem, SetAttr, StatFs, errno_error
from .host import HostFile, HostFilesystem
from .hostdir import Listing
from .hostpath import check_component, check_new_name
from .cowlist import merged_listing
from .cownode import Session
from .cowtree import Node

log = logging.getLogger("ninep.cow")

_ACCMODE = 3
_WRITES = (int(OpenFlags.WRONLY), int(OpenFlags.RDWR))
_TRUNC = int(OpenFlags.TRUNC)
_EXCL = int(OpenFlags.EXCL)
_CREATE_EXCL = int(OpenFlags.CREATE | OpenFlags.EXCL)
_SAFE_ANAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")


def aname_component(aname: str) -> str:
    """The aname as one safe path component ("" -> "default"); anything that could
    climb out of the upper template's directory is refused."""
    aname = aname.strip("/")
    if not aname:
        return "default"
    if not _SAFE_ANAME.fullmatch(aname):
        raise errno_error(errno.EINVAL, f"aname {aname!r} is not a plain name")
    return aname


def open_base(path: str) -> Filesystem:
    """A base layer: an OCI image layout (its layers, in order), a host directory
    (served read-only) or a tarball."""
    from .tarbase import TarFilesystem, is_oci_layout, is_tarball, oci_layers

    if os.path.isdir(path) and is_oci_layout(path):
        return TarFilesystem(oci_layers(path))
    if os.path.isdir(path):
        return HostFilesystem(path, read_only=True, identity=base_identity(path))
    if is_tarball(path):
        return TarFilesystem(path)
    raise ValueError(f"base {path!r} is neither a directory nor a .tar[.gz|.xz|.zst|.bz2]")


def base_identity(path: str) -> str:
    """How a directory base shows owners: a mapped tree (``ninep rootfs`` without
    root, ``rootfs import``) by its ``user.virtfs.*`` xattrs, any other tree by its
    real host owners and modes, whoever runs the server (it is only read)."""
    if hostmodel.is_mapped_tree(path):
        return hostmodel.MAPPED
    return hostmodel.PASSTHROUGH if os.geteuid() == 0 else hostmodel.PER_USER


class CowFilesystem(Filesystem):
    """``base``: a Filesystem (read through the File contract) or a path that
    ``open_base`` opens (a directory, a tarball or an OCI image layout). ``upper``: a directory,
    ``{aname}`` replaced per attach; None or ``throwaway=True`` makes each aname's
    upper a temporary directory, removed when its last fid goes. ``identity``: the
    uppers' identity model (``hostmodel``; None: passthrough as root, else mapped,
    so that without root the guest's owners, modes and devices -- copied up from the
    base or set by the guest -- live in ``user.virtfs.*``, QEMU mapped-xattr style)."""

    sub_anames = True  # the server may hand us "EXPORT/NAME" attaches as aname NAME

    def __init__(self, base: Filesystem | str, upper: str | None, *,
                 throwaway: bool = False, tmpdir: str | None = None,
                 identity: str | None = None) -> None:
        if isinstance(base, str):
            base = open_base(base)
        self.base = base
        # Every wait is for the host: the layers' syscalls, worker-thread copies, and
        # the copy-up lock, whose holder only ever waits for those too.
        self.prompt = base.prompt
        self.upper_template = upper
        self.throwaway = throwaway or upper is None
        self.tmpdir = tmpdir
        self.identity = identity if identity is None else hostmodel.check_model(identity, None)
        self._sessions: dict[tuple, Session] = {}
        self._upper_locks: dict[str, list[int]] = {}  # path -> [locked fd, trees using it]

    async def attach(self, aname: str, creds: Credentials) -> "CowFile":
        key = (aname_component(aname), creds)
        session = self._sessions.get(key)
        if session is None:
            first = not any(name == key[0] for name, _ in self._sessions)
            session = await self._open_session(key[0], creds, clear_work=first)
            self._sessions[key] = session
            siblings = [s for (name, _), s in self._sessions.items() if name == key[0]]
            if len(siblings) > 1:
                # Several identities (access=user) on one upper: each tree sees the
                # others' changes only if neither keeps unused Nodes or listings.
                for sibling in siblings:
                    await sibling.stop_caching()
        return CowFile(session, session.root.acquire())

    def upper_path(self, name: str) -> str:
        if self.throwaway:
            for (other, _), session in self._sessions.items():
                if other == name:
                    return session.path  # another identity's: one temporary per aname
            parent = self.upper_template.replace("{aname}", name) if self.upper_template else None
            if parent:
                os.makedirs(parent, exist_ok=True)
            return tempfile.mkdtemp(prefix=f"ninep-cow-{name}-", dir=parent or self.tmpdir)
        path = self.upper_template.replace("{aname}", name)
        os.makedirs(path, mode=0o755, exist_ok=True)
        return path

    async def _open_session(self, name: str, creds: Credentials, *,
                            clear_work: bool = True) -> Session:
        path = self.upper_path(name)
        upper_fs = HostFilesystem(path, identity=self.identity)
        upper_root = await upper_fs.attach("", creds)
        try:
            self._hold_upper(path, upper_root._node.fd)
        except OSError as exc:
            await upper_root.close()
            await upper_fs.aclose()
            log.warning("cow: aname %r: %s", name, exc.strerror)
            raise
        try:
            return await self._open_tree(name, creds, path, upper_fs, upper_root,
                                         clear_work=clear_work)
        except BaseException:
            self._let_go_upper(path)
            raise

    def _hold_upper(self, path: str, root_fd: int) -> None:
        """This process's claim on the upper ``path`` (cowupper.lock_upper), shared by
        its trees there (one per identity), dropped with the last of them."""
        held = self._upper_locks.get(path)
        if held is None:
            self._upper_locks[path] = [up.lock_upper(root_fd), 1]
        else:
            held[1] += 1

    def _let_go_upper(self, path: str) -> None:
        held = self._upper_locks.get(path)
        if held is not None:
            held[1] -= 1
            if not held[1]:
                os.close(held[0])
                del self._upper_locks[path]

    async def _open_tree(self, name: str, creds: Credentials, path: str,
                         upper_fs: HostFilesystem, upper_root, *, clear_work: bool) -> Session:
        base_root = await self.base.attach("", creds)
        # Another identity's tree on this upper may be copying up right now: only the
        # first one opened clears what a crash left in work/.
        work_fd, index_fd = up.open_meta_dirs(upper_root._node.fd, clear=clear_work)
        root_path = f"/proc/self/fd/{upper_root._node.fd}"
        if up.read_origin(root_path, follow=True) is None:
            a = await base_root.getattr(0)
            up.adopt_root_metadata(upper_root._node.fd, a.mode, a.uid, a.gid,
                                   ((a.atime_sec, a.atime_nsec), (a.mtime_sec, a.mtime_nsec)),
                                   base_root.qid.path, mapped=upper_fs.mapped)
        session = Session(self, name, path, upper_fs, work_fd, index_fd, self.throwaway)
        session.root = Node(None, "", stat.S_IFDIR, session.base_qid(base_root.qid),
                            upper_root, base_root, session.nodes)
        session.root.refs = 0
        session.on_idle = lambda: self._close_session(name, creds, session)
        log.info("cow: aname %r: upper %s%s, identity %s", name, path,
                 " (throwaway)" if self.throwaway else "", upper_fs.identity)
        return session

    async def _close_session(self, name: str, creds: Credentials, session: Session) -> None:
        if self._sessions.get((name, creds)) is session:
            del self._sessions[(name, creds)]
        if any(other.path == session.path for other in self._sessions.values()):
            session.throwaway = False  # a temporary upper goes with its aname's last tree
        await session.close()
        self._let_go_upper(session.path)

    async def aclose(self) -> None:
        for session in list(self._sessions.values()):
            await session.close()
            self._let_go_upper(session.path)
        self._sessions.clear()
        await self.base.aclose()


class CowFile(File):
    """One fid: a Node, and while open, the layer's File doing the I/O."""

    def __init__(self, session: Session, node: Node) -> None:
        self._s = session
        self._node = node
        self._io: File | None = None
        self._io_upper = False
        self._open_flags = 0
        self._listing: Listing | None = None
        session.fids += 1

    @property
    def qid(self) -> Qid:
        return self._node.qid

    @property
    def lock_key(self) -> object:
        return (self._s.path, self._node.qid.path)  # one lock table for all identities

    # --- navigation ------------------------------------------------------------
    async def walk(self, names: Sequence[str]) -> tuple[list[Qid], "CowFile | None"]:
        node = self._node.acquire()
        qids: list[Qid] = []
        try:
            for name in names:
                try:
                    check_component(name)
                    if node.kind != stat.S_IFDIR:
                        raise errno_error(errno.ENOTDIR, name)
                    if name == "..":
                        nxt = (node.parent or node).acquire()
                    elif name == ".":
                        nxt = node.acquire()
                    else:
                        nxt = await self._s.lookup(node, name)
                except OSError:
                    if not qids:
                        raise
                    return qids, None
                await node.release()
                node = nxt
                qids.append(node.qid)
            new = CowFile(self._s, node)
            node = None
            return qids, new
        finally:
            if node is not None:
                await node.release()

    async def clone(self) -> "CowFile":
        return CowFile(self._s, self._node.acquire())

    # --- open files ----------------------------------------------------------------
    async def open(self, flags: int) -> int:
        if self._io is not None:
            raise errno_error(errno.EINVAL, "fid already open")
        node = self._node
        writes = (flags & _ACCMODE) in _WRITES
        if node.kind == stat.S_IFDIR and (writes or flags & _TRUNC):
            raise errno_error(errno.EISDIR, "open of a directory for writing")
        if (writes or flags & _TRUNC) and node.upper is None:
            await self._s.copy_up(node, data=not (flags & _TRUNC))
        layer = node.upper if node.upper is not None else node.base
        io = await layer.clone()
        try:
            await io.open(flags)
        except BaseException:
            await io.close()
            raise
        self._io, self._io_upper, self._open_flags = io, layer is node.upper, flags
        return 0

    async def _reader(self) -> File:
        """The open file, moved to the upper copy if someone copied it up since."""
        if self._io is None:
            raise errno_error(errno.EBADF, "fid not open")
        if not self._io_upper and self._node.upper is not None and self._node.kind != stat.S_IFDIR:
            fresh = await self._node.upper.clone()
            try:
                await fresh.open(self._open_flags & ~_TRUNC)
            except BaseException:
                await fresh.close()
                raise
            old, self._io, self._io_upper = self._io, fresh, True
            await old.close()
        return self._io

    async def create(self, name: str, flags: int, mode: int, gid: int) -> tuple["CowFile", int]:
        self._check_new(name)
        d = self._node
        if d.base is None and d.upper is not None and not d.removed and name not in d.children:
            # No base below (a guest's own directory): the host's exclusive create is
            # the existence check, one syscall less than a lookup first.
            try:
                made, _ = await d.upper.create(name, flags | _EXCL, mode, gid)
            except FileExistsError:
                if flags & _EXCL:
                    raise
            else:
                return await self._adopted(name, made, flags), 0
        existing = None
        if not self._s.surely_absent(self._node, name):
            try:
                existing = await self._s.lookup(self._node, name)
            except FileNotFoundError:
                pass
        if existing is not None:
            if flags & _EXCL:
                await existing.release()
                raise errno_error(errno.EEXIST, name)
            opened = CowFile(self._s, existing)
            try:
                await opened.open(flags & ~_CREATE_EXCL)
            except BaseException:
                await opened.close()
                raise
            return opened, 0
        parent = await self._s.ensure_dir_upper(self._node)
        made, _ = await parent.create(name, flags, mode, gid)
        return await self._adopted(name, made, flags), 0

    async def _adopted(self, name: str, made: HostFile, flags: int) -> "CowFile":
        """The fid of a file just created: ``made`` is its Node's upper and, until
        this fid is clunked, its open file too (no second HostFile, no fstat)."""
        try:
            node = self._s.adopt(self._node, name, made)
        except BaseException:
            await made.close()
            raise
        new = CowFile(self._s, node)
        new._io, new._io_upper, new._open_flags = made, True, flags
        return new

    async def read(self, offset: int, count: int) -> bytes | memoryview:
        return await (await self._reader()).read(offset, count)

    async def write(self, offset: int, data: memoryview) -> int:
        return await (await self._reader()).write(offset, data)

    async def readdir(self, offset: int, count: int) -> list[Dirent]:
        return unpack_dirents(await self._records(offset, count, at_least_one=True))

    async def readdir_packed(self, offset: int, count: int) -> bytes:
        """The server's fast path: records packed once per listing (cowlist)."""
        return await self._records(offset, count, at_least_one=False)

    async def _records(self, offset: int, count: int, *, at_least_one: bool) -> bytes:
        if self._node.kind != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "readdir")
        if self._io is None:
            raise errno_error(errno.EBADF, "fid not open")
        if offset == 0 or self._listing is None:
            node = self._node
            if node.listing is not None and self._s.caching:
                self._listing = node.listing
            else:
                self._listing = node.listing = await merged_listing(self._s, node)
        records = self._listing.records(offset, count, at_least_one)
        return b"" if records is None else records

    async def fsync(self, datasync: bool) -> None:
        if self._io is not None:
            await (await self._reader()).fsync(datasync)

    # --- metadata ------------------------------------------------------------------
    def _layer(self) -> File:
        node = self._node
        return node.upper if node.upper is not None else node.base

    async def getattr(self, mask: int) -> Attr:
        node = self._node
        attr = await self._layer().getattr(mask)
        attr.qid = node.qid
        if node.upper is not None and node.base is not None and node.kind == stat.S_IFDIR:
            # Merged: 2 + subdirectories of both layers is never below the true count
            # (find(1) stops looking for subdirectories once it has seen nlink - 2).
            attr.nlink += max((await node.base.getattr(0)).nlink - 2, 0)
        else:
            attr.nlink -= self._s.index_links(node)
        return attr

    async def setattr(self, attr: SetAttr) -> None:
        if not attr.valid & ~int(SetattrMask.CTIME):
            return  # ctime alone: nothing to set, nothing to copy up
        truncating = attr.valid & SetattrMask.SIZE and attr.size == 0
        upper = await self._s.copied_up(self._node, data=not truncating)
        if upper._io is not None and upper is not self._io:
            # The Node's upper is still a creating fid's open file (``_adopted``): a
            # truncate through this fid must check permissions as the host export
            # does for a fid not open for writing, not use that fid's fd.
            upper = await upper.clone()
            try:
                await upper.setattr(attr)
            finally:
                await upper.close()
            return
        await upper.setattr(attr)

    async def statfs(self) -> StatFs:
        return await self._s.root.upper.statfs()

    async def readlink(self) -> str:
        return await self._layer().readlink()

    # --- directory mutations -------------------------------------------------------
    def _check_new(self, name: str) -> None:
        check_new_name(name)
        if self._node.kind != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "not a directory")
        if up.is_reserved(name, self._node.parent is None):
            raise errno_error(errno.EPERM, f"{name!r} is reserved for copy-on-write markers")

    async def _absent(self, name: str) -> None:
        if await self._s.exists(self._node, name):
            raise errno_error(errno.EEXIST, name)

    async def mkdir(self, name: str, mode: int, gid: int) -> Qid:
        self._check_new(name)
        await self._absent(name)
        return await self._s.mkdir(self._node, name, mode, gid)

    async def symlink(self, name: str, target: str, gid: int) -> Qid:
        self._check_new(name)
        await self._absent(name)
        parent = await self._s.ensure_dir_upper(self._node)
        await parent.symlink(name, target, gid)
        return await self._s.made(self._node, name)

    async def mknod(self, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        self._check_new(name)
        await self._absent(name)
        parent = await self._s.ensure_dir_upper(self._node)
        await parent.mknod(name, mode, major, minor, gid)
        return await self._s.made(self._node, name)

    async def link(self, target: File, name: str) -> None:
        self._check_new(name)
        if not isinstance(target, CowFile) or target._s is not self._s:
            raise errno_error(errno.EXDEV, "link across exports")
        if target._node.kind == stat.S_IFDIR:
            raise errno_error(errno.EPERM, "hard link to a directory")
        await self._absent(name)
        source = await self._s.copied_up(target._node)
        parent = await self._s.ensure_dir_upper(self._node)
        await parent.link(source, name)
        await self._s.made(self._node, name)

    async def renameat(self, oldname: str, newdir: File, newname: str) -> None:
        check_new_name(oldname)
        check_new_name(newname)
        target_dir = self._same_session_dir(newdir)
        if up.is_reserved(newname, target_dir.parent is None):
            raise errno_error(errno.EPERM, "reserved name")
        node = await self._s.lookup(self._node, oldname)
        try:
            await self._s.rename(node, target_dir, newname)
        finally:
            await node.release()

    async def unlinkat(self, name: str, flags: int) -> None:
        check_new_name(name)
        node = await self._s.lookup(self._node, name)
        try:
            is_dir = node.kind == stat.S_IFDIR
            if flags & AT_REMOVEDIR and not is_dir:
                raise errno_error(errno.ENOTDIR, name)
            if not flags & AT_REMOVEDIR and is_dir:
                raise errno_error(errno.EISDIR, name)
            await self._s.remove(node)
        finally:
            await node.release()

    def _same_session_dir(self, other: File) -> Node:
        if not isinstance(other, CowFile) or other._s is not self._s:
            raise errno_error(errno.EXDEV, "rename across exports")
        if other._node.kind != stat.S_IFDIR:
            raise errno_error(errno.ENOTDIR, "rename target directory")
        return other._node

    # --- this file itself ------------------------------------------------------------
    async def rename(self, newdir: File, newname: str) -> None:
        check_new_name(newname)
        if self._node.parent is None:
            raise errno_error(errno.EBUSY, "the export root cannot move")
        if self._node.removed:
            raise errno_error(errno.ENOENT, "removed")
        target_dir = self._same_session_dir(newdir)
        if up.is_reserved(newname, target_dir.parent is None):
            raise errno_error(errno.EPERM, "reserved name")
        await self._s.rename(self._node, target_dir, newname)

    async def remove(self) -> None:
        if self._node.parent is None:
            raise errno_error(errno.EBUSY, "the export root cannot be removed")
        if self._node.removed:
            raise errno_error(errno.ENOENT, "removed")
        await self._s.remove(self._node)

    # --- extended attributes ---------------------------------------------------------
    async def xattr_get(self, name: str) -> bytes:
        if up.is_private_xattr(name):
            raise errno_error(errno.ENODATA, name)
        return await self._layer().xattr_get(name)

    async def xattr_list(self) -> list[str]:
        return [n for n in await self._layer().xattr_list() if not up.is_private_xattr(n)]

    async def xattr_set(self, name: str, value: bytes, flags: int) -> None:
        if up.is_private_xattr(name):
            raise errno_error(errno.EPERM, "reserved xattr")
        await (await self._s.copied_up(self._node)).xattr_set(name, value, flags)

    async def xattr_remove(self, name: str) -> None:
        if up.is_private_xattr(name):
            raise errno_error(errno.ENODATA, name)
        await (await self._s.copied_up(self._node)).xattr_remove(name)

    # --- lifetime ------------------------------------------------------------------------
    async def close(self) -> None:
        io, self._io = self._io, None
        node, self._node = self._node, None
        if io is not None:
            if node is not None and io is node.upper:
                _close_shared_io(io)
            else:
                await io.close()
        if node is not None:
            await node.release()
            self._s.fids -= 1
            if self._s.fids == 0:
                await self._s.on_idle()


def _close_shared_io(upper: HostFile) -> None:
    """Close the open file of a creating fid, whose HostFile is also its Node's
    (O_PATH) upper: only the I/O fd goes; the Node keeps the rest."""
    io, upper._io = upper._io, None
    if io is not None:
        io.release()
