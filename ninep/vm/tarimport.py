"""`ninep rootfs import ROOT.tar[.gz|.xz|.bz2|.zst] DIR`: a root filesystem tarball
(debootstrap/mmdebstrap output, a Gentoo stage3, a container layer) unpacked into a
tree for ninepd's mapped identity model, without root.

Ownership, modes, device numbers come from the tar headers and go into the
``user.virtfs.*`` xattrs (QEMU's mapped-xattr layout, ninep.fs.hostmodel); device
nodes and FIFOs become empty files and symlinks files holding their target, so
nothing special is ever made on the host; hard links stay hard links; ``user.*``
xattrs from PAX headers are kept. Other xattrs (``security.capability``, ...) need
root on the host and are counted as skipped. Host files get the owner's read/write
(and search, for directories) bits so that ninepd, running as that user, can use them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ninep.fs.hostmodel import ACL_NAMES, write_mapped
from ninep.vm.initramfs import BuildError

_XATTR_PREFIX = "SCHILY.xattr."
_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}


@dataclass
class ImportReport:
    entries: int = 0
    skipped_xattrs: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.entries} entries"
        if self.skipped_xattrs:
            names = ", ".join(f"{name} x{count}" for name, count in
                              sorted(self.skipped_xattrs.items()))
            text += f"; xattrs that need host root were left out: {names}"
        return text


def _relative(name: str) -> PurePosixPath | None:
    """The member's path below the root, or None for the root itself. Absolute names
    are taken as below the root (as tar does); ".." never leaves it."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
    if any(p == ".." for p in parts):
        raise BuildError(f"tar member {name!r} climbs out of the root")
    return PurePosixPath(*parts) if parts else None


def _open_stream(tarball: Path):
    """(tarfile in stream mode, decompressor process or None)."""
    if tarball.suffix in (".zst", ".zstd") or tarball.name.endswith(".tzst"):
        if shutil.which("zstd") is None:
            raise BuildError("zstd not found: install zstd to import .zst tarballs")
        proc = subprocess.Popen(["zstd", "-dc", str(tarball)], stdout=subprocess.PIPE)
        return tarfile.open(fileobj=proc.stdout, mode="r|"), proc
    return tarfile.open(tarball, mode="r|*"), None


def import_tarball(tarball: Path, dest: Path) -> ImportReport:
    """Unpack ``tarball`` into the (new or empty) directory ``dest`` as a mapped tree."""
    if not tarball.is_file():
        raise BuildError(f"{tarball}: no such tarball")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise BuildError(f"{dest} is not empty")
    report = ImportReport()
    dir_times: list[tuple[Path, int]] = []
    archive, proc = _open_stream(tarball)
    try:
        for member in archive:
            _import_member(archive, member, dest, report, dir_times)
            report.entries += 1
    finally:
        archive.close()
        if proc is not None:
            proc.stdout.close()
            if proc.wait() != 0:
                raise BuildError(f"zstd -dc {tarball} failed with status {proc.returncode}")
    for path, mtime in reversed(dir_times):  # children changed them meanwhile
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    if not _has_mapping(dest):
        write_mapped(str(dest), uid=0, gid=0, mode=stat.S_IFDIR | 0o755)
    return report


def _has_mapping(path: Path) -> bool:
    return "user.virtfs.mode" in os.listxattr(path)


def _parent_ready(dest: Path, rel: PurePosixPath) -> Path:
    """Make missing parents (root-owned 0755 in the guest until their own member
    comes) and refuse to go through anything but a real directory."""
    here = dest
    for part in rel.parts[:-1]:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o700)
            write_mapped(str(here), uid=0, gid=0, mode=stat.S_IFDIR | 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise BuildError(f"tar member below {here}, which is not a directory")
    return dest / rel


def _import_member(archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                   report: ImportReport, dir_times: list[tuple[Path, int]]) -> None:
    rel = _relative(member.name)
    path = dest if rel is None else _parent_ready(dest, rel)
    perms = member.mode & 0o7777
    rdev = None
    if member.isdir():
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, (perms & 0o777) | 0o700)
        guest_mode = stat.S_IFDIR | perms
        dir_times.append((path, int(member.mtime)))
    elif member.islnk():
        target_rel = _relative(member.linkname)
        if target_rel is None:
            raise BuildError(f"hard link {member.name!r} to the root")
        _replace(path)
        os.link(dest / target_rel, path, follow_symlinks=False)
        return  # the same inode: its xattrs are already there
    elif member.issym():
        _replace(path)
        _write_file(path, os.fsencode(member.linkname), 0o600)
        guest_mode = stat.S_IFLNK | 0o777
    elif member.isreg():
        _replace(path)
        source = archive.extractfile(member)
        _write_file(path, source, (perms & 0o777) | 0o600)
        guest_mode = stat.S_IFREG | perms
    elif member.type in _TYPES:
        _replace(path)
        _write_file(path, b"", 0o600)
        guest_mode = _TYPES[member.type] | perms
        if member.ischr() or member.isblk():
            rdev = os.makedev(member.devmajor, member.devminor)
    else:
        raise BuildError(f"tar member {member.name!r} has an unknown type {member.type!r}")
    write_mapped(str(path), uid=member.uid, gid=member.gid, mode=guest_mode, rdev=rdev)
    _copy_xattrs(member, path, report)
    if not member.isdir():
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _replace(path: Path) -> None:
    """A later member of the same name wins, as with tar."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildError(f"{path} is a directory in the tarball and then a file")
    os.unlink(path)


def _write_file(path: Path, content, host_mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 host_mode)
    with os.fdopen(fd, "wb") as out:
        if isinstance(content, bytes):
            out.write(content)
        else:
            shutil.copyfileobj(content, out, 1 << 20)
    os.chmod(path, host_mode)  # the umask must not take the owner's bits


def _copy_xattrs(member: tarfile.TarInfo, path: Path, report: ImportReport) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PREFIX):
            continue
        name = key[len(_XATTR_PREFIX):]
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        if name.startswith("user.virtfs."):
            continue  # never from an archive: ownership comes from the headers
        host_name = ACL_NAMES.get(name, name)
        if not host_name.startswith("user."):
            report.skipped_xattrs[name] = report.skipped_xattrs.get(name, 0) + 1
            continue
        os.setxattr(path, host_name, raw)
