"""The copy-on-write upper directory on disk: markers, the work area, atomic copies.

Plain syscalls on fds (no trio, no File objects), so every step here is easy to
reason about for crash safety. The layout of an upper directory::

    UPPER/.ninep-cow/work/      temporaries; emptied whenever the upper is opened
    UPPER/.ninep-cow/index/QID  copies of base files with several names (hard links)
    UPPER/.ninep-cow/lock       flock(LOCK_EX) by the one process serving the upper
    UPPER/some/dir/.wh.NAME     whiteout: NAME of the base is deleted
    UPPER/some/dir/.wh..wh..opq opaque: nothing of the base's some/dir shows through
    xattr user.ninep.origin     on a copied-up file or directory: the base qid.path
                                (8 bytes, little-endian) it came from
    xattr user.ninep.redirect   on a renamed directory: the path of its base
                                directory from the base's root ("etc/init.d")

The marker names are the OCI image-layer ones, so an upper directory is also a valid
layer (tar it up). They need no privilege, unlike overlayfs's 0/0 character devices.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat
import struct

from . import hostmodel, hostsys
from .hostpath import proc_path

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
META_DIR = ".ninep-cow"
ORIGIN_XATTR = "user.ninep.origin"
REDIRECT_XATTR = "user.ninep.redirect"
PRIVATE_XATTR_PREFIX = "user.ninep."  # the server's bookkeeping: never the guest's
_ORIGIN = struct.Struct("<Q")
_COPY_CHUNK = 1 << 20


def is_reserved(name: str, at_root: bool) -> bool:
    """Names a guest can neither see nor make: markers, and the metadata directory."""
    return name.startswith(WHITEOUT_PREFIX) or (at_root and name == META_DIR)


def open_meta_dirs(upper_root_fd: int, *, clear: bool = True) -> tuple[int, int]:
    """O_PATH fds of UPPER/.ninep-cow/work and .../index, made if missing. work/ is
    emptied: whatever a crash left there was never renamed into place, so it was
    never visible. index/ holds one more name of each copied-up file that had
    several names in the base (``index_name``), so its other names can find it."""
    meta = _subdir(upper_root_fd, META_DIR)
    try:
        work = _subdir(meta, "work")
        index = _subdir(meta, "index")
    finally:
        os.close(meta)
    if clear:
        clear_dir(work)
    return work, index


def lock_upper(upper_root_fd: int) -> int:
    """An fd holding flock(LOCK_EX) on UPPER/.ninep-cow/lock, or EBUSY: two processes
    (two ninepd, or two ``--workers``) serving one upper would each keep a tree and
    caches the other's changes make wrong, and each clear the other's work/. The
    kernel drops the lock when the process dies, so a crash leaves nothing stale."""
    meta = _subdir(upper_root_fd, META_DIR)
    try:
        fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=meta)
    finally:
        os.close(meta)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(errno.EBUSY, "upper in use by another ninepd process") from None
    return fd


def index_name(base_qid_path: int) -> str:
    return f"{base_qid_path:016x}"


def _subdir(dir_fd: int, name: str) -> int:
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def clear_dir(dir_fd: int) -> None:
    """Remove everything inside the directory ``dir_fd`` (no symlink is followed)."""
    for name in os.listdir(proc_path(dir_fd)):
        remove_tree(dir_fd, name)


def remove_tree(dir_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):
            remove_tree(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def exists(dir_fd: int, name: str) -> bool:
    """faccessat(F_OK, AT_SYMLINK_NOFOLLOW): a miss is a plain False, without the
    cost of building an OSError (most checks here are for markers that are absent)."""
    return os.access(name, os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


def is_opaque(dir_fd: int) -> bool:
    return exists(dir_fd, OPAQUE_MARKER)


def has_whiteout(dir_fd: int, name: str) -> bool:
    return exists(dir_fd, WHITEOUT_PREFIX + name)


def make_marker(dir_fd: int, name: str, durable: bool = True) -> None:
    """An empty marker file; present already is fine. ``durable``: the directory
    entry reaches the disk before the caller goes on (the next step relies on it)."""
    try:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd))
    except FileExistsError:
        return
    if durable:
        sync_dir(dir_fd)


def drop_marker(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def sync_dir(dir_fd: int) -> None:
    fd = os.open(proc_path(dir_fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_origin(path: str, *, follow: bool) -> int | None:
    """The base qid.path recorded on an upper file or directory. ``follow``: True for
    a /proc/self/fd magic link, False for a name in a directory (symlinks cannot
    carry user.* xattrs, so they never have one)."""
    try:
        value = os.getxattr(path, ORIGIN_XATTR, follow_symlinks=follow)
    except OSError:
        return None
    return _ORIGIN.unpack(value)[0] if len(value) == _ORIGIN.size else None


def write_origin(path: str, qid_path: int, *, follow: bool = False) -> None:
    try:
        os.setxattr(path, ORIGIN_XATTR, _ORIGIN.pack(qid_path), follow_symlinks=follow)
    except OSError as exc:
        # Symlinks and device nodes cannot carry user.* xattrs: their qid.path then
        # changes on copy-up (docs/cow.md). Anything else is a broken upper.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def is_private_xattr(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIX)


def read_redirect(path: str) -> list[str] | None:
    """The base path (names from the base's root) a renamed upper directory merges
    with, instead of its own name's (overlayfs's redirect_dir). ``path`` reaches the
    directory (a /proc/self/fd magic link)."""
    try:
        value = os.getxattr(path, REDIRECT_XATTR)
    except OSError:
        return None
    return value.decode().split("/") if value else None


def write_redirect(path: str, names: list[str]) -> None:
    os.setxattr(path, REDIRECT_XATTR, "/".join(names).encode())


def copy_bytes(src_fd: int, dst_fd: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src_fd`` from ``offset`` to the start of ``dst_fd``:
    copy_file_range (reflinks or in-kernel copies), else read/write."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, min(size - done, 1 << 30),
                                   offset + done, done)
            if n == 0:
                break
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < size:
        chunk = os.pread(src_fd, min(_COPY_CHUNK, size - done), offset + done)
        if not chunk:
            break
        os.pwrite(dst_fd, chunk, done)
        done += len(chunk)


def finish_copy(work_fd: int, tmp: str, mode: int, uid: int, gid: int,
                times: tuple[tuple[int, int], tuple[int, int]],
                xattrs: dict[str, bytes], origin: int | None, *,
                mapped: bool = False, rdev: int = 0) -> None:
    """Give the temporary ``tmp`` (in the work dir) the base file's metadata. Owner
    before mode (chown clears set-id bits), times last (every change moves them).

    ``mapped`` (the upper's identity model is mapped: hostmodel): owner, whole mode
    and device number go into ``user.virtfs.*`` as a mapped export keeps them, and the
    host inode stays the server's, 0600/0700 (``tmp`` was made as
    ``hostmodel.make_mapped_entry`` makes entries), so that the server can still read
    and write it whatever the guest's mode says (e.g. /etc/shadow's 0640 root:shadow)."""
    path = f"{proc_path(work_fd)}/{tmp}"
    is_link = stat.S_ISLNK(mode)
    for name, value in xattrs.items():
        if is_private_xattr(name):
            continue
        if mapped:
            if name.startswith(hostmodel.RESERVED_PREFIX):
                continue  # the base's own mapped ownership: written below from its attrs
            name = hostmodel.ACL_NAMES.get(name, name)  # ACLs the host must not enforce
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                raise  # trusted.* or security.* as non-root: skipped, as cp -a does
    if origin is not None:
        write_origin(path, origin)
    if mapped:
        device = stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK)
        hostmodel.write_mapped(path, uid=uid, gid=gid, mode=mode, rdev=rdev if device else None)
    else:
        try:
            os.chown(tmp, uid, gid, dir_fd=work_fd, follow_symlinks=False)
        except PermissionError:
            pass  # not root and not mapped (no user.* xattrs): the server's own ids
        if not is_link:
            os.chmod(path, stat.S_IMODE(mode))
    hostsys.utimensat(work_fd, tmp, times[0], times[1], nofollow=True)


_temp_numbers = itertools.count(1)


def adopt_root_metadata(root_fd: int, mode: int, uid: int, gid: int,
                        times: tuple[tuple[int, int], tuple[int, int]], origin: int, *,
                        mapped: bool = False) -> None:
    """A fresh upper directory (made by makedirs or mkdtemp, 0700 for the latter)
    becomes the base root's copy: owner, mode and times of the base's "/", and the
    origin mark that says it was done. ``mapped``: owner and mode into
    ``user.virtfs.*``; the host directory keeps its own (a base "/" of 0555 must
    not stop the server writing into its upper)."""
    path = proc_path(root_fd)
    if mapped:
        hostmodel.write_mapped(path, uid=uid, gid=gid, mode=stat.S_IFDIR | stat.S_IMODE(mode))
    else:
        try:
            os.chown(path, uid, gid)
        except PermissionError:
            pass  # not root and not mapped: the upper stays ninepd's own
        os.chmod(path, stat.S_IMODE(mode))
    hostsys.utimensat(hostsys.AT_FDCWD, path, times[0], times[1], nofollow=False)
    write_origin(path, origin, follow=True)


def new_temp_name() -> str:
    """Unique among every tree of this process (several identities may share one
    upper, and so one work/)."""
    return f"{os.getpid()}.{next(_temp_numbers)}"


def move_into_place(work_fd: int, tmp: str, dir_fd: int, name: str) -> None:
    """The atomic step of every copy-up: rename(2) of a complete temporary. The
    directory is synced so the new entry survives a crash once the caller goes on."""
    os.rename(tmp, name, src_dir_fd=work_fd, dst_dir_fd=dir_fd)
    sync_dir(dir_fd)


def entry_dev(dir_fd: int) -> int:
    return os.stat(dir_fd).st_dev
