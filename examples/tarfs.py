"""A read-only export of a tar archive, served without unpacking it.

    python examples/tarfs.py rootfs.tar --listen tcp://127.0.0.1:5640

Directories, regular files, symlinks, hard links (one node under several names: same
qid, nlink counts them), device nodes and FIFOs appear as the archive has them, with
its modes, owners and times. The member index is built once at start (one pass over
the headers); contents are read lazily: for an uncompressed archive each Tread is one
``pread`` at the member's offset, for a compressed one tarfile seeks inside the
decompressed stream (correct, but slow for big archives: unpack or use plain .tar).
"""

from __future__ import annotations

import argparse
import os
import stat
import tarfile
from typing import Any

import trio

import ninep
from ninep.fs.synthetic import (
    Directory, Handle, Node, OpenContext, SpecialFile, Symlink, SyntheticFilesystem,
)


class TarArchive:
    """The open archive and a way to read part of one member."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:")  # uncompressed: members are byte ranges
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except tarfile.ReadError:
            self.tar = tarfile.open(path, "r:*")
            self.fd = None

    def read(self, member: tarfile.TarInfo, offset: int, count: int) -> bytes:
        count = max(0, min(count, member.size - offset))
        if count == 0:
            return b""
        if self.fd is not None and not member.issparse():
            return os.pread(self.fd, count, member.offset_data + offset)
        extracted = self.tar.extractfile(member)
        assert extracted is not None
        extracted.seek(offset)
        return extracted.read(count)

    def close(self) -> None:
        self.tar.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class TarMember(Node):
    """A regular file of the archive."""

    def __init__(self, archive: TarArchive, member: tarfile.TarInfo, **meta: Any):
        super().__init__(**meta)
        self.archive = archive
        self.member = member

    def size(self) -> int:
        return self.member.size

    async def make_handle(self, ctx: OpenContext) -> Handle:
        return _MemberHandle(ctx, self)


class _MemberHandle(Handle):
    def __init__(self, ctx: OpenContext, node: TarMember):
        super().__init__(ctx)
        self.node = node

    async def read(self, offset: int, count: int) -> bytes:
        return self.node.archive.read(self.node.member, offset, count)


def _meta(member: tarfile.TarInfo) -> dict[str, Any]:
    return {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid,
            "mtime": float(member.mtime)}


def _parts(name: str) -> list[str]:
    return [part for part in name.split("/") if part not in ("", ".")]


class TarFilesystem(SyntheticFilesystem):
    """The tree of ``path``'s members; ``aclose`` closes the archive."""

    def __init__(self, path: str):
        self.archive = TarArchive(path)
        super().__init__(Directory(mode=0o755, uid=0, gid=0))
        self.skipped: list[str] = []  # members that could not be placed (logged by main)
        for member in self.archive.tar:
            self._add(member)

    def _directory(self, parts: list[str]) -> Directory:
        """The directory at ``parts``, made (0755, root) where the archive has no entry."""
        directory = self.root
        for part in parts:
            child = directory._entries.get(part)
            if not isinstance(child, Directory):
                if child is not None:
                    directory.pop(part)
                child = directory.add(part, Directory(mode=0o755, uid=0, gid=0))
            directory = child
        return directory

    def _lookup(self, parts: list[str]) -> Node | None:
        node: Node | None = self.root
        for part in parts:
            if not isinstance(node, Directory):
                return None
            node = node._entries.get(part)
        return node

    def _add(self, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name)
        if any(part == ".." for part in parts):
            self.skipped.append(member.name)  # never let an archive climb out of its root
            return
        if not parts:  # "./" itself: the root's metadata
            if member.isdir():
                meta = _meta(member)
                self.root.mode, self.root.uid, self.root.gid = meta["mode"], meta["uid"], meta["gid"]
            return
        if member.isdir():
            directory = self._directory(parts)
            directory.mode, directory.uid, directory.gid = member.mode & 0o7777, member.uid, member.gid
            directory.mtime_ns = directory.ctime_ns = int(member.mtime) * 10**9
            return
        node = self._node_for(member)
        if node is None:
            self.skipped.append(member.name)
            return
        parent = self._directory(parts[:-1])
        parent[parts[-1]] = node  # a later member of the same name wins, as tar -x does

    def _node_for(self, member: tarfile.TarInfo) -> Node | None:
        if member.islnk():
            target = self._lookup(_parts(member.linkname))
            return target if target is not None and not target.is_dir else None
        if member.issym():
            return Symlink(member.linkname, **_meta(member))
        if member.isreg():
            return TarMember(self.archive, member, **_meta(member))
        kinds = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                 tarfile.FIFOTYPE: stat.S_IFIFO}
        if member.type in kinds:
            return SpecialFile(kinds[member.type], os.makedev(member.devmajor, member.devminor),
                               **_meta(member))
        return None

    async def aclose(self) -> None:
        self.archive.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="a .tar (or .tar.gz/.bz2/.xz: slower) to serve")
    parser.add_argument("--listen", default="tcp://127.0.0.1:5640")
    arguments = parser.parse_args()
    filesystem = TarFilesystem(arguments.archive)
    for name in filesystem.skipped:
        print(f"tarfs: skipped {name!r} (outside the root, or a link to nothing)")
    try:
        trio.run(ninep.serve, filesystem, arguments.listen)
    except* KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        pass
