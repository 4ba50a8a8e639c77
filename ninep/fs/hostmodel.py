"""Identity models of a host export: whose ownership a guest's files carry, and where.

* ``passthrough`` (server is root): the guest kernel checks permissions (it does, with
  ``access=client``) and the server applies the ownership the request carries, on the
  host inodes themselves, with its own privileges. QEMU's ``security_model=passthrough``.
* ``mapped`` (no host root needed): the host files stay the server's; the guest's uid,
  gid, whole mode and device number live in ``user.virtfs.*`` xattrs, byte-compatible
  with QEMU's ``security_model=mapped-xattr``. Device nodes, FIFOs, sockets and
  symlinks are plain files on the host (a symlink's target is its content).
* ``per-user``: switch to the attaching user with the host's groups (identity.run_as)
  and let the host kernel decide; for shares with several users and ``access=user``.
* ``squash``: like per-user, every attach acts as one fixed identity.

This module holds the mapped-xattr layout and the name rules; plain syscalls only.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from typing import NamedTuple

from ..protocol.constants import SetattrMask
from . import hostsys
from .backend import SetAttr, errno_error
from .hostpath import NO_ID, apply_creation_attrs, proc_path

PASSTHROUGH, MAPPED, PER_USER, SQUASH = "passthrough", "mapped", "per-user", "squash"
MODELS = (PASSTHROUGH, MAPPED, PER_USER, SQUASH)
SWITCHING_MODELS = (PER_USER, SQUASH)  # operations run as the guest's user (when root)

XATTR_UID = "user.virtfs.uid"
XATTR_GID = "user.virtfs.gid"
XATTR_MODE = "user.virtfs.mode"
XATTR_RDEV = "user.virtfs.rdev"
RESERVED_PREFIX = "user.virtfs."
# QEMU (hw/9pfs/9p-posix-acl.c) keeps a mapped guest's ACLs out of the host's
# system.* namespace: the host kernel would enforce them against the server.
ACL_NAMES = {
    "system.posix_acl_access": "user.virtfs.system.posix_acl_access",
    "system.posix_acl_default": "user.virtfs.system.posix_acl_default",
}
ACL_HOST_NAMES = {host: guest for guest, host in ACL_NAMES.items()}

# Host modes of what a mapped export creates (QEMU's fmode/dmode defaults): the
# server can read and write them; the guest's modes are in the xattrs.
MAPPED_FILE_MODE = 0o600
MAPPED_DIR_MODE = 0o700

_PATH_MAX = 4096
_LE32 = struct.Struct("<I")
_LE64 = struct.Struct("<Q")


def default_model(squash: tuple[int, int] | None = None) -> str:
    """What a user expects without saying: root serves passthrough, others mapped."""
    if squash is not None:
        return SQUASH
    return PASSTHROUGH if os.geteuid() == 0 else MAPPED


def check_model(model: str, squash: tuple[int, int] | None) -> str:
    """``model`` if it is usable here, else ValueError saying why."""
    if model not in MODELS:
        raise ValueError(f"identity must be one of {', '.join(MODELS)}, not {model!r}")
    if model == SQUASH and squash is None:
        raise ValueError("identity squash needs squash UID:GID")
    if squash is not None and model != SQUASH:
        raise ValueError(f"squash UID:GID is its own identity model, not {model!r}")
    if model == PASSTHROUGH and os.geteuid() != 0:
        raise ValueError("identity passthrough needs a root server (chown to any id); "
                         "use mapped without root")
    return model


def has_user_xattrs(dir_fd: int) -> bool:
    """Whether the filesystem of the O_PATH directory ``dir_fd`` keeps user.* xattrs
    (read-only probe: a missing one is ENODATA, no support at all EOPNOTSUPP)."""
    try:
        os.getxattr(proc_path(dir_fd), XATTR_MODE)
    except OSError as exc:
        return exc.errno != errno.ENOTSUP
    return True


def is_mapped_tree(path: str) -> bool:
    """Whether the directory ``path`` was made as a mapped tree (``ninep rootfs``
    without root, ``rootfs import``, a mapped export's own files): its top directory
    carries the guest's mode."""
    try:
        return len(os.getxattr(path, XATTR_MODE)) == 4
    except OSError:
        return False


class Mapped(NamedTuple):
    """The ownership a mapped file's xattrs give; None where an xattr is absent."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    rdev: int | None = None


NOTHING_MAPPED = Mapped()


def _xattr_path(fd: int, host_fmt: int) -> str | None:
    """The path that reaches ``fd``'s inode for xattr calls (None: a host symlink,
    which cannot carry user.* xattrs on Linux)."""
    return None if host_fmt == stat.S_IFLNK else proc_path(fd)


def read_mapped(fd: int, host_fmt: int) -> Mapped:
    """The mapped ownership of the O_PATH fd ``fd``: three getxattrs (a fourth for a
    device's rdev); cheaper than listxattr first on a mapped tree, where every file
    has them."""
    path = _xattr_path(fd, host_fmt)
    if path is None:
        return NOTHING_MAPPED

    mode = _read_value(path, XATTR_MODE, _LE32)
    device = mode is not None and stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK)
    return Mapped(_read_value(path, XATTR_UID, _LE32), _read_value(path, XATTR_GID, _LE32),
                  mode, _read_value(path, XATTR_RDEV, _LE64) if device else None)


def _read_value(path: str, name: str, layout: struct.Struct) -> int | None:
    """One ``user.virtfs.*`` number, or None if it is not there."""
    try:
        raw = os.getxattr(path, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    # QEMU reads into a value of this size and uses it if anything came back.
    return layout.unpack(raw[:layout.size].ljust(layout.size, b"\0"))[0] if raw else None


class MappedCache:
    """Mapped ownership of inodes whose ctime has not moved: every xattr change (ours,
    QEMU's, anyone's) sets the ctime, so an unchanged ctime means unchanged xattrs --
    if the ctime was already ``settled_ns`` old when read, so that a later change
    cannot hide behind an equal coarse timestamp (as hostdir.ListingCache does).
    Saves the getxattrs of getattr (37 -> ~12 us, benchmarks/identity_models.py)."""

    def __init__(self, max_entries: int = 8192, settled_ns: int = 2_000_000_000) -> None:
        self.max_entries = max_entries
        self.settled_ns = settled_ns
        self._entries: dict[int, tuple[tuple[int, int], Mapped]] = {}

    def read(self, fd: int, host_fmt: int, key: int, ctime: tuple[int, int]) -> Mapped:
        found = self._entries.get(key)
        if found is not None and found[0] == ctime:
            return found[1]
        mapped = read_mapped(fd, host_fmt)
        if ctime[0] * 1_000_000_000 + ctime[1] < time.time_ns() - self.settled_ns:
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (ctime, mapped)
        else:
            self._entries.pop(key, None)
        return mapped


def read_mapped_mode(fd: int, host_fmt: int) -> int | None:
    """Only ``user.virtfs.mode`` (what open and readlink need to know)."""
    path = _xattr_path(fd, host_fmt)
    return None if path is None else _read_value(path, XATTR_MODE, _LE32)


def read_mapped_mode_at(dir_fd: int, name: bytes) -> int | None:
    """``user.virtfs.mode`` of the regular file ``name`` in ``dir_fd`` (readdir)."""
    try:
        raw = os.getxattr(b"/proc/self/fd/%d/%s" % (dir_fd, name), XATTR_MODE,
                          follow_symlinks=False)
    except OSError:
        return None  # gone meanwhile, or no xattr: the host's type stands
    return _LE32.unpack(raw[:4].ljust(4, b"\0"))[0] if raw else None


def write_mapped(path: str, *, uid: int | None = None, gid: int | None = None,
                 mode: int | None = None, rdev: int | None = None) -> None:
    """Store the given fields (QEMU's layout: le32 ids and mode, le64 rdev). ``path``
    reaches a regular file or directory (``/proc/self/fd/N``, or a tree being built)."""
    for name, layout, item in ((XATTR_UID, _LE32, uid), (XATTR_GID, _LE32, gid),
                               (XATTR_MODE, _LE32, mode), (XATTR_RDEV, _LE64, rdev)):
        if item is not None:
            os.setxattr(path, name, layout.pack(item & ((1 << (8 * layout.size)) - 1)))


def guest_view(host_mode: int, host_rdev: int, mapped: Mapped,
               owner: tuple[int, int]) -> tuple[int, int, int, int]:
    """(mode, uid, gid, rdev) the guest sees. Files without xattrs show ``owner``
    (--mapped-owner) and their host mode: the server's own ids mean nothing there."""
    mode = host_mode
    if mapped.mode is not None:
        # The host's type stands for directories and host specials/symlinks; a plain
        # host file may be any guest type but a directory.
        fmt, host_fmt = stat.S_IFMT(mapped.mode), stat.S_IFMT(host_mode)
        if host_fmt != stat.S_IFREG or fmt in (0, stat.S_IFDIR):
            fmt = host_fmt
        mode = fmt | (mapped.mode & 0o7777)
    return (mode,
            mapped.uid if mapped.uid is not None else owner[0],
            mapped.gid if mapped.gid is not None else owner[1],
            mapped.rdev if mapped.rdev is not None else host_rdev)


# --- xattr names the guest uses -------------------------------------------------------

def guest_xattr_name(name: str, *, writing: bool) -> str:
    """The host name for the guest's xattr ``name`` in a mapped export. The guest never
    reaches ``user.virtfs.*``: reads say ENODATA, writes EACCES (as QEMU answers)."""
    if name.startswith(RESERVED_PREFIX):
        raise errno_error(errno.EACCES if writing else errno.ENODATA, "reserved xattr")
    return ACL_NAMES.get(name, name)


def guest_xattr_list(names: list[str]) -> list[str]:
    """The host's names as the guest may see them: mapped ACLs under their system.*
    names, every other ``user.virtfs.*`` hidden."""
    out = []
    for name in names:
        if name in ACL_HOST_NAMES:
            out.append(ACL_HOST_NAMES[name])
        elif not name.startswith(RESERVED_PREFIX):
            out.append(name)
    return out


# --- making entries -------------------------------------------------------------------

def make_mapped_entry(dir_fd: int, name: str, guest_mode: int, target: str | None) -> None:
    """Create ``name`` as a mapped export stores a guest's ``guest_mode`` entry: a
    directory, or else a plain file (a symlink's target as its content). Never a host
    device node, FIFO, socket or symlink."""
    fmt = stat.S_IFMT(guest_mode)
    if fmt == stat.S_IFDIR:
        os.mkdir(name, MAPPED_DIR_MODE, dir_fd=dir_fd)
        return
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NOCTTY, MAPPED_FILE_MODE, dir_fd=dir_fd)
    try:
        if target is not None:
            data = os.fsencode(target)
            if os.write(fd, data) != len(data):
                raise errno_error(errno.EIO, "short write of a symlink target")
    except BaseException:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def own_mapped(fd: int, guest_mode: int, uid: int, gid: int, rdev: int | None) -> None:
    """Record a new entry's guest ownership (all of uid, gid and mode, so that QEMU
    shows the same as ninepd)."""
    write_mapped(proc_path(fd), uid=uid, gid=gid, mode=guest_mode, rdev=rdev)


def own_passthrough(fd: int, st: os.stat_result, mode: int | None, uid: int | None,
                    gid: int | None) -> os.stat_result:
    """Give a new entry the request's owner and exactly its mode. Owner first: a chown
    clears set-id bits, so the mode must be applied after it."""
    new_uid = -1 if uid is None or uid == st.st_uid else uid
    new_gid = -1 if gid is None or gid == st.st_gid else gid
    changed = False
    if new_uid != -1 or new_gid != -1:
        hostsys.fchown_empty(fd, new_uid, new_gid)
        changed = True
        st = os.stat(fd)
    if mode is not None and not stat.S_ISLNK(st.st_mode) and (st.st_mode ^ mode) & 0o7777:
        os.chmod(proc_path(fd), mode & 0o7777)
        changed = True
    return os.stat(fd) if changed else st


def own_new(model: str, fd: int, st: os.stat_result, guest_mode: int, uid: int | None,
            gid: int, owner: tuple[int, int], rdev: int | None) -> os.stat_result:
    """Give the new entry ``fd`` the ownership its request carries (attach ``uid``,
    message ``gid``), as ``model`` keeps it. Returns its host stat."""
    gid_given = None if gid in (NO_ID, -1) else gid
    perms = None if stat.S_ISLNK(guest_mode) else guest_mode
    if model == PASSTHROUGH:
        return own_passthrough(fd, st, perms, uid, gid_given)
    if model == MAPPED:
        own_mapped(fd, guest_mode, owner[0] if uid is None else uid,
                   owner[1] if gid_given is None else gid_given, rdev)
        return st
    return apply_creation_attrs(fd, st, perms, gid)  # per-user, squash: as the user


def check_openable(fd: int, host_fmt: int) -> None:
    """A mapped device node, FIFO, socket or symlink is a plain host file: never
    opened for I/O, as the host's own special files are not."""
    mode = read_mapped_mode(fd, host_fmt)
    if mode is None or stat.S_IFMT(mode) in (stat.S_IFREG, stat.S_IFDIR, 0):
        return
    if stat.S_ISLNK(mode):
        raise errno_error(errno.ELOOP, "open of a symlink")
    raise errno_error(errno.ENXIO, "device nodes, FIFOs and sockets are not opened")


def read_symlink_file(fd: int) -> str | None:
    """The target of a mapped symlink (a plain host file), None if ``fd`` is not one."""
    mode = read_mapped_mode(fd, stat.S_IFREG)
    if mode is None or not stat.S_ISLNK(mode):
        return None
    io = os.open(proc_path(fd), os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        return os.fsdecode(os.pread(io, _PATH_MAX, 0))
    finally:
        os.close(io)


def setattr_mapped(fd: int, host_fmt: int, attr: SetAttr, owner: tuple[int, int]) -> None:
    """Tsetattr's owner and mode into the xattrs, all three written so that QEMU's
    mapped-xattr shows the same. The host inode keeps its own."""
    valid = attr.valid
    if not valid & (SetattrMask.UID | SetattrMask.GID | SetattrMask.MODE):
        return
    if host_fmt == stat.S_IFLNK:
        raise errno_error(errno.EOPNOTSUPP, "a host symlink cannot carry mapped ownership")
    st = os.stat(fd)
    mode, uid, gid, _ = guest_view(st.st_mode, st.st_rdev, read_mapped(fd, host_fmt), owner)
    if valid & SetattrMask.UID:
        uid = attr.uid
    if valid & SetattrMask.GID:
        gid = attr.gid
    if valid & SetattrMask.MODE:
        if stat.S_ISLNK(mode):  # a mapped symlink: as a host symlink, no mode to set
            raise errno_error(errno.EOPNOTSUPP, "chmod of a symlink")
        mode = stat.S_IFMT(mode) | (attr.mode & 0o7777)
    write_mapped(proc_path(fd), uid=uid, gid=gid, mode=mode)
