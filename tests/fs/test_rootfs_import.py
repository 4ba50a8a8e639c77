"""`ninep rootfs import`: a root tarball becomes a mapped tree without root, and a
mapped export shows what the tar headers said."""

import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from conformance.helpers import walk_to
from ninep.fs.backend import Credentials
from ninep.fs.host import HostFilesystem
from ninep.vm.initramfs import BuildError
from ninep.vm.tarimport import import_tarball
from ninep.vm.testing import UNPRIVILEGED, unprivileged_python


def _member(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1_600_000_000
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def write_root_tarball(path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member("./", tarfile.DIRTYPE, 0o755))
        tar.addfile(_member("./bin/", tarfile.DIRTYPE, 0o755))
        data = b"#!/bin/sh\necho hi\n"
        tar.addfile(_member("./bin/su", mode=0o4755, size=len(data)), io.BytesIO(data))
        tar.addfile(_member("./bin/sh", tarfile.SYMTYPE, 0o777, linkname="su"))
        tar.addfile(_member("./bin/hard", tarfile.LNKTYPE, linkname="./bin/su"))
        tar.addfile(_member("./home/guest/", tarfile.DIRTYPE, 0o700, 1000, 1000))
        note = _member("./home/guest/note", mode=0o600, uid=1000, gid=1000, size=2,
                       pax_headers={"SCHILY.xattr.user.tag": "blue",
                                    "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"})
        tar.addfile(note, io.BytesIO(b"ok"))
        tar.addfile(_member("./dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3))
        tar.addfile(_member("./dev/sda", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=8, devminor=0))
        tar.addfile(_member("./run/initctl", tarfile.FIFOTYPE, 0o600))
        tar.addfile(_member("./tmp/", tarfile.DIRTYPE, 0o1777))


def compressed(plain: Path, suffix: str) -> Path:
    out = plain.with_name(plain.name + suffix)
    tool = {".gz": "gzip", ".xz": "xz", ".zst": "zstd"}[suffix]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    with open(out, "wb") as sink:
        subprocess.run([tool, "-c", str(plain)], stdout=sink, check=True)
    return out


async def check_tree(root: Path) -> None:
    for entry in [root, *root.rglob("*")]:
        st = os.lstat(entry)
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), entry
    assert os.lstat(root / "bin/hard").st_ino == os.lstat(root / "bin/su").st_ino
    assert os.getxattr(root / "home/guest/note", "user.tag") == b"blue"
    assert os.getxattr(root / "dev/null", "user.virtfs.rdev") == struct.pack(
        "<Q", os.makedev(1, 3))
    fs = HostFilesystem(str(root), identity="mapped")
    top = await fs.attach("", Credentials(0, 0, ()))
    expect = {"": (stat.S_IFDIR | 0o755, 0, 0, 0),
              "bin/su": (stat.S_IFREG | 0o4755, 0, 0, 0),
              "bin/sh": (stat.S_IFLNK | 0o777, 0, 0, 0),
              "bin/hard": (stat.S_IFREG | 0o4755, 0, 0, 0),
              "home/guest": (stat.S_IFDIR | 0o700, 1000, 1000, 0),
              "home/guest/note": (stat.S_IFREG | 0o600, 1000, 1000, 0),
              "dev/null": (stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3)),
              "dev/sda": (stat.S_IFBLK | 0o660, 0, 6, os.makedev(8, 0)),
              "run/initctl": (stat.S_IFIFO | 0o600, 0, 0, 0),
              "tmp": (stat.S_IFDIR | 0o1777, 0, 0, 0)}
    for name, want in expect.items():
        node = await walk_to(top, name)
        attr = await node.getattr(0)
        assert (attr.mode, attr.uid, attr.gid, attr.rdev) == want, name
        if name == "bin/sh":
            assert await node.readlink() == "su"
        if name == "bin/su":
            assert attr.mtime_sec == 1_600_000_000
        await node.close()
    await top.close()
    await fs.aclose()


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".zst"])
async def test_import_makes_a_mapped_tree(tmp_path, suffix):
    plain = tmp_path / "root.tar"
    write_root_tarball(plain)
    tarball = compressed(plain, suffix) if suffix else plain
    report = import_tarball(tarball, tmp_path / "tree")
    assert report.entries == 11
    assert report.skipped_xattrs == {"security.capability": 1}
    await check_tree(tmp_path / "tree")


def test_import_refuses_to_climb_out(tmp_path):
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.addfile(_member("../outside", size=0), io.BytesIO(b""))
    with pytest.raises(BuildError, match="climbs out"):
        import_tarball(tmp_path / "evil.tar", tmp_path / "tree")
    assert not (tmp_path / "outside").exists()


@pytest.mark.root
async def test_import_as_an_ordinary_user():
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found
    with tempfile.TemporaryDirectory(prefix="ninep-import-") as place:
        home = Path(place)
        os.chmod(home, 0o755)
        write_root_tarball(home / "root.tar")
        tarball = compressed(home / "root.tar", ".xz")
        os.chown(home, *UNPRIVILEGED)
        done = subprocess.run(
            [*prefix, "-c", "import sys; from ninep.vm.cli import main; sys.exit(main())",
             "rootfs", "import", str(tarball), str(home / "tree")],
            env=env, cwd=home, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "11 entries" in done.stdout and "security.capability x1" in done.stdout
        assert os.lstat(home / "tree/bin/su").st_uid == UNPRIVILEGED[0]
        await check_tree(home / "tree")


async def test_rootfs_debian_without_root_imports_the_cached_tarball(tmp_path, monkeypatch):
    from ninep.vm import rootfs
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 4711)
    monkeypatch.setattr(rootfs, "debian_tarball", lambda: tmp_path / "none.tar")
    with pytest.raises(BuildError, match="making one needs root"):
        rootfs.build_debian_rootfs(tmp_path / "tree")
    write_root_tarball(tmp_path / "none.tar")
    rootfs.build_debian_rootfs(tmp_path / "tree")
    await check_tree(tmp_path / "tree")
