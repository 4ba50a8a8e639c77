"""The backends the conformance suite runs against, and the tree each must present.

A factory takes an empty scratch directory (``pathlib.Path``) and returns a ``Backend``:
the Filesystem, what it can do, and the credentials to attach with. Every backend must
show the ``SEED_*`` tree below at its root (a read-only backend builds it in memory; the
host backend writes it into the scratch directory). Tests that need a capability the
backend lacks skip themselves (``@pytest.mark.needs("writable")``).

To add a backend: write a factory and decorate it with ``@register("name")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ninep.fs.backend import Credentials, Filesystem
from ninep.fs.host import HostFilesystem

SEED_DIRS = ("dir", "dir/sub", "emptydir")
SEED_FILES = {
    "dir/file.txt": b"hello, 9p\n",
    "empty": b"",
    "big": bytes(range(256)) * 512,  # 128 KiB: several reads, crosses pages
}
SEED_SYMLINKS = {"link": "dir/file.txt"}  # only where Capabilities.symlinks


@dataclass(frozen=True)
class Capabilities:
    writable: bool = True  # create/write/setattr/mkdir/rename/remove... work
    symlinks: bool = True  # SEED_SYMLINKS present; symlink()/readlink work
    hardlinks: bool = True
    mknod: bool = True  # at least FIFOs and sockets
    xattrs: bool = True  # user.* xattrs on regular files
    chown: bool = False  # may change uid/gid to arbitrary ids (root host export)


@dataclass
class Backend:
    name: str
    filesystem: Filesystem
    caps: Capabilities
    creds: Credentials = field(default_factory=lambda: Credentials(None, None))


BackendFactory = Callable[[Path], Backend]
FACTORIES: dict[str, BackendFactory] = {}


def register(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def add(factory: BackendFactory) -> BackendFactory:
        FACTORIES[name] = factory
        return factory
    return add


def write_seed(root: Path, *, symlinks: bool = True) -> None:
    for d in SEED_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, data in SEED_FILES.items():
        (root / name).write_bytes(data)
    if symlinks:
        for name, target in SEED_SYMLINKS.items():
            os.symlink(target, root / name)


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@register("host")
def host_backend(scratch: Path) -> Backend:
    write_seed(scratch)
    return Backend("host", HostFilesystem(str(scratch)), Capabilities(
        xattrs=_xattrs_supported(scratch), chown=os.geteuid() == 0))


@register("host-mapped")
def host_mapped_backend(scratch: Path) -> Backend:
    """Ownership in user.virtfs.* xattrs: chown to any id works without host root."""
    write_seed(scratch)
    xattrs = _xattrs_supported(scratch)
    return Backend("host-mapped", HostFilesystem(str(scratch), identity="mapped"),
                   Capabilities(xattrs=xattrs, chown=xattrs))


@register("host-readonly")
def host_readonly_backend(scratch: Path) -> Backend:
    write_seed(scratch)
    return Backend("host-readonly", HostFilesystem(str(scratch), read_only=True),
                   Capabilities(writable=False, hardlinks=False, mknod=False, xattrs=False))


# --- synthetic trees (owned by the synthetic-filesystem engineer) -----------------------
def _seed_tree(directory_class, file_class):
    from ninep.fs.synthetic import Symlink

    root = directory_class()
    for d in SEED_DIRS:
        parent = root
        for part in d.split("/"):
            if part not in parent:
                parent.add(part, directory_class())
            parent = parent[part]
    for name, data in SEED_FILES.items():
        *dirs, leaf = name.split("/")
        parent = root
        for part in dirs:
            parent = parent[part]
        parent.add(leaf, file_class(data))
    for name, target in SEED_SYMLINKS.items():
        root.add(name, Symlink(target))
    return root


@register("synthetic")
def synthetic_backend(scratch: Path) -> Backend:
    from ninep.fs.synthetic import Directory, StaticFile, as_filesystem

    return Backend("synthetic", as_filesystem(_seed_tree(Directory, StaticFile)), Capabilities(
        writable=False, hardlinks=False, mknod=False, xattrs=False))


@register("ramfs")
def ramfs_backend(scratch: Path) -> Backend:
    from ninep.fs.synthetic import RamDirectory, RamFile, RamFilesystem

    return Backend("ramfs", RamFilesystem(_seed_tree(RamDirectory, RamFile)),
                   Capabilities(chown=True))


@register("union")
def union_backend(scratch: Path) -> Backend:
    """The host export as the base, with a synthetic tree mounted inside the seed (in a
    directory the suite renames into, so merged listings are exercised)."""
    from ninep.fs.synthetic import Directory
    from ninep.fs.union import UnionFilesystem

    write_seed(scratch)
    base = HostFilesystem(str(scratch))
    return Backend("union", UnionFilesystem(base, {"dir/sub/mnt": Directory({"x": b"x"})}), Capabilities(
        xattrs=_xattrs_supported(scratch), chown=os.geteuid() == 0))


# --- copy-on-write (issue 12) ----------------------------------------------------------
def _cow(scratch: Path, base_of, identity: str | None = None) -> Backend:
    """The seed is the *base*; the upper starts empty, so every write the suite makes
    goes through copy-up, whiteouts or opaque directories. ``identity="mapped"``: the
    upper keeps owners and modes in user.virtfs.* (ninepd's default without root)."""
    from ninep.fs.cow import CowFilesystem

    layers = scratch.parent / (scratch.name + "-layers")
    seed = layers / "seed"
    seed.mkdir(parents=True)
    write_seed(seed)
    upper = layers / "upper"
    upper.mkdir()
    xattrs = _xattrs_supported(upper)
    return Backend("cow", CowFilesystem(base_of(seed, layers), str(upper), identity=identity),
                   Capabilities(xattrs=xattrs,
                                chown=os.geteuid() == 0 or (identity == "mapped" and xattrs)))


@register("cow-dir")
def cow_dir_backend(scratch: Path) -> Backend:
    return _cow(scratch, lambda seed, layers: str(seed))


def _tarball(seed: Path, layers: Path) -> str:
    import tarfile

    path = layers / "base.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(seed, arcname=".")
    return str(path)


@register("cow-tar")
def cow_tar_backend(scratch: Path) -> Backend:
    return _cow(scratch, _tarball)


@register("cow-tar-mapped")
def cow_tar_mapped_backend(scratch: Path) -> Backend:
    """A tarball base under a mapped upper: the rootless COW root (issue 12)."""
    return _cow(scratch, _tarball, identity="mapped")
