"""A copy-on-write root without host root (issue 12): the upper keeps the guest's
owners, modes and device numbers in user.virtfs.* (the mapped identity, QEMU
mapped-xattr layout), copied up from the tarball's headers or set by the guest.

``scenario`` runs twice: in this process with ``identity="mapped"``, and as an
unprivileged user with the default identity (mapped without root), where a base
file of mode 0000 or a directory of 0555 must still copy up and take writes."""

import json
import os
import stat
import struct
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import pytest

from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.cow import CowFilesystem
from ninep.fs.hostmodel import write_mapped
from ninep.protocol.codec import unpack_dirents
from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags, QidType, SetattrMask

CREDS = Credentials(None, None)
HERE = Path(__file__).resolve().parent


def make_tarball(path: Path) -> None:
    """A small root as mmdebstrap writes one: root-owned, a shadow group, a setuid
    binary, a package's non-root state, a symlink, a device, a 0000 file, a 0555 dir."""
    def add(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, data=b"", **extra):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1700000000
        for key, value in extra.items():
            setattr(info, key, value)
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w") as tar:
        add(".", tarfile.DIRTYPE, 0o755)
        for d in ("etc", "usr", "usr/bin", "var", "var/lib", "dev"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("etc/shadow", mode=0o640, gid=42, data=b"root:*:19000:0:99999:7:::\n")
        add("etc/locked", mode=0o000, data=b"nobody may read me\n")
        add("usr/bin/passwd", mode=0o4755, data=b"\x7fELF not really\n")
        add("var/lib/pkg", tarfile.DIRTYPE, 0o750, uid=100, gid=101)
        add("var/lib/pkg/state", mode=0o644, uid=100, gid=101, data=b"installed\n")
        add("link", tarfile.SYMTYPE, 0o777, linkname="etc/shadow")
        add("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
        add("sealed", tarfile.DIRTYPE, 0o555)
        add("sealed/file", mode=0o444, data=b"sealed\n")


async def _walk(root, path):
    _, f = await root.walk([p for p in path.split("/") if p])
    assert f is not None, path
    return f


async def _attr(root, path):
    f = await _walk(root, path)
    try:
        return await f.getattr(0x3FFF)
    finally:
        await f.close()


async def _setattr(root, path, **fields):
    valid = 0
    for name in fields:
        valid |= int(getattr(SetattrMask, name.upper()))
    if fields.pop("mtime", None):  # "now"
        valid |= int(SetattrMask.MTIME)
    f = await _walk(root, path)
    try:
        await f.setattr(SetAttr(valid=valid, **fields))
    finally:
        await f.close()


async def _write(root, path, data, flags=OpenFlags.RDWR):
    f = await _walk(root, path)
    try:
        await f.open(flags)
        await f.write(0, memoryview(data))
    finally:
        await f.close()


async def _read(root, path):
    f = await _walk(root, path)
    try:
        await f.open(OpenFlags.RDONLY)
        return bytes(await f.read(0, 4096))
    finally:
        await f.close()


async def _listing(root, path):
    f = await _walk(root, path) if path else await root.clone()
    try:
        await f.open(OpenFlags.RDONLY)
        return {e.name: e for e in unpack_dirents(await f.readdir_packed(0, 65536))}
    finally:
        await f.close()


def _owner(a):
    return a.uid, a.gid, a.mode


async def scenario(tarball: str, upper: str, identity: str | None) -> dict:
    """Every check of a mapped COW upper; returns what the host sees, for the caller."""
    fs = CowFilesystem(tarball, upper, identity=identity)
    root = await fs.attach("", CREDS)
    try:
        # Not copied up yet: the tar headers.
        assert _owner(await _attr(root, "etc/shadow")) == (0, 42, 0o100640)
        assert _owner(await _attr(root, "usr/bin/passwd")) == (0, 0, 0o104755)
        assert _owner(await _attr(root, "var/lib/pkg/state")) == (100, 101, 0o100644)
        link_before = await _attr(root, "link")
        assert stat.S_ISLNK(link_before.mode) and link_before.qid.type & QidType.SYMLINK

        # Copy-up keeps the headers' owner and mode; the host copy stays the server's.
        await _write(root, "etc/shadow", b"ROOT")
        assert _owner(await _attr(root, "etc/shadow")) == (0, 42, 0o100640)
        await _write(root, "etc/locked", b"written", OpenFlags.WRONLY | OpenFlags.TRUNC)
        assert _owner(await _attr(root, "etc/locked")) == (0, 0, 0o100000)
        await _setattr(root, "usr/bin/passwd", mtime=True)
        assert _owner(await _attr(root, "usr/bin/passwd")) == (0, 0, 0o104755)

        # The guest's chown, chmod (set-id kept), lchown of a base symlink, and of a device.
        await _setattr(root, "var/lib/pkg/state", uid=1000, gid=100)
        assert _owner(await _attr(root, "var/lib/pkg/state")) == (1000, 100, 0o100644)
        assert _owner(await _attr(root, "var/lib/pkg")) == (100, 101, 0o40750)
        await _setattr(root, "usr/bin/passwd", mode=0o2711)
        assert _owner(await _attr(root, "usr/bin/passwd")) == (0, 0, 0o102711)
        await _setattr(root, "link", uid=5, gid=6)
        link = await _attr(root, "link")
        assert (link.uid, link.gid, link.mode) == (5, 6, 0o120777)
        assert (link.qid.type, link.qid.path) == (link_before.qid.type, link_before.qid.path)
        f = await _walk(root, "link")
        assert await f.readlink() == "etc/shadow"
        await f.close()
        await _setattr(root, "dev/null", gid=5)
        null = await _attr(root, "dev/null")
        assert (null.uid, null.gid, null.mode, null.rdev) == (0, 5, 0o20666, os.makedev(1, 3))

        # New entries by the guest: a device, a symlink, a file in a 0555 base directory.
        dev = await _walk(root, "dev")
        await dev.mknod("zero", stat.S_IFCHR | 0o666, 1, 5, 0)
        await dev.close()
        await root.symlink("sl", "usr/bin/passwd", 0)
        sealed = await _walk(root, "sealed")
        made, _ = await sealed.create("new", int(OpenFlags.RDWR), 0o600, 0)
        await made.write(0, memoryview(b"in a 0555 dir"))
        await made.close()
        await sealed.unlinkat("file", 0)
        await sealed.unlinkat("new", 0)
        await sealed.close()
        await root.unlinkat("sealed", AT_REMOVEDIR)
        await root.mkdir("sealed", 0o711, 0)
        listing = await _listing(root, "")
        assert listing["link"].type == listing["sl"].type == stat.S_IFLNK >> 12
        assert listing["link"].qid.path == link.qid.path
        assert (await _listing(root, "dev"))["zero"].type == stat.S_IFCHR >> 12
    finally:
        await root.close()
        await fs.aclose()

    # A restart reads it all back from the upper.
    fs = CowFilesystem(tarball, upper, identity=identity)
    root = await fs.attach("", CREDS)
    try:
        assert _owner(await _attr(root, "")) == (0, 0, 0o40755)
        assert _owner(await _attr(root, "etc/shadow")) == (0, 42, 0o100640)
        assert await _read(root, "etc/shadow") == b"ROOT:*:19000:0:99999:7:::\n"
        assert await _read(root, "etc/locked") == b"written"
        assert _owner(await _attr(root, "var/lib/pkg/state")) == (1000, 100, 0o100644)
        assert _owner(await _attr(root, "usr/bin/passwd")) == (0, 0, 0o102711)
        link = await _attr(root, "link")
        assert (link.uid, link.gid, link.mode) == (5, 6, 0o120777)
        assert link.qid.type & QidType.SYMLINK and link.qid.path == link_before.qid.path
        zero = await _attr(root, "dev/zero")
        assert (zero.mode, zero.rdev) == (0o20666, os.makedev(1, 5))
        assert stat.S_ISLNK((await _attr(root, "sl")).mode)
        assert _owner(await _attr(root, "sealed"))[2] == 0o40711
        assert set(await _listing(root, "sealed")) == {".", ".."}
    finally:
        await root.close()
        await fs.aclose()

    up = Path(upper)
    seen = {}
    for rel in ("etc/shadow", "etc/locked", "link", "dev/null", "dev/zero", "sealed"):
        st = os.lstat(up / rel)
        seen[rel] = {"host_mode": st.st_mode, "host_uid": st.st_uid,
                     "virtfs": {k: os.getxattr(up / rel, k).hex()
                                for k in os.listxattr(up / rel) if k.startswith("user.virtfs.")}}
    return seen


def check_host_view(seen: dict, server_uid: int) -> None:
    """What the upper holds on the host: plain files and directories the server owns
    and can read and write, the guest's view only in the xattrs (QEMU's layout)."""
    for rel, entry in seen.items():
        fmt = stat.S_IFMT(entry["host_mode"])
        assert fmt == (stat.S_IFDIR if rel == "sealed" else stat.S_IFREG), rel
        assert stat.S_IMODE(entry["host_mode"]) == (0o700 if rel == "sealed" else 0o600), rel
        assert entry["host_uid"] == server_uid, rel
    shadow = seen["etc/shadow"]["virtfs"]
    assert shadow == {"user.virtfs.uid": struct.pack("<I", 0).hex(),
                      "user.virtfs.gid": struct.pack("<I", 42).hex(),
                      "user.virtfs.mode": struct.pack("<I", 0o100640).hex()}
    rdev = seen["dev/null"]["virtfs"]["user.virtfs.rdev"]
    assert rdev == struct.pack("<Q", os.makedev(1, 3)).hex()
    assert seen["link"]["virtfs"]["user.virtfs.mode"] == struct.pack("<I", 0o120777).hex()


@pytest.fixture
def tarball(tmp_path) -> Path:
    path = tmp_path / "base.tar"
    make_tarball(path)
    return path


async def test_a_mapped_upper_keeps_the_tar_owners_and_the_guests_changes(tarball, tmp_path):
    seen = await scenario(str(tarball), str(tmp_path / "upper"), "mapped")
    check_host_view(seen, os.getuid())


def test_the_same_without_root():
    """As an ordinary user with ninepd's default identity (mapped): nothing needs root."""
    from ninep.vm.testing import UNPRIVILEGED, unprivileged_python

    found = unprivileged_python()
    if found is None:
        pytest.skip("needs root to drop to an unprivileged user (setpriv)")
    prefix, env = found
    # Not below pytest's tmp_path: its top directory is 0700, closed to the user.
    with tempfile.TemporaryDirectory(prefix="ninep-cow-mapped-") as name:
        place = Path(name)
        make_tarball(place / "base.tar")
        os.chown(place, *UNPRIVILEGED)
        os.chown(place / "base.tar", *UNPRIVILEGED)
        code = ("import json, sys, trio; sys.path.insert(0, sys.argv[1]); "
                "import test_cow_mapped as t; "
                "print(json.dumps(trio.run(t.scenario, sys.argv[2], sys.argv[3], None)))")
        done = subprocess.run([*prefix, "-c", code, str(HERE), str(place / "base.tar"),
                               str(place / "upper")], env=env, cwd=place, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        check_host_view(json.loads(done.stdout.splitlines()[-1]), UNPRIVILEGED[0])


async def test_a_directory_base_shows_mapped_xattrs_or_real_owners(tmp_path):
    """A mapped tree shows its xattrs' owners, any other tree its host owners; a
    copy-up into a mapped upper records either."""
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    for base in (plain, mapped):
        (base / "etc").mkdir(parents=True)
        (base / "etc" / "file").write_bytes(b"x")
    try:
        write_mapped(str(mapped), uid=0, gid=0, mode=0o40755)
        write_mapped(str(mapped / "etc" / "file"), uid=7, gid=8, mode=0o100604)
    except OSError:
        pytest.skip("no user.* xattrs here")
    if os.geteuid() == 0:
        os.chown(plain / "etc" / "file", 123, 456)
    os.chmod(plain / "etc" / "file", 0o640)
    host = os.stat(plain / "etc" / "file")
    for base, want in ((plain, (host.st_uid, host.st_gid, 0o100640)), (mapped, (7, 8, 0o100604))):
        fs = CowFilesystem(str(base), str(tmp_path / f"upper-{base.name}"), identity="mapped")
        root = await fs.attach("", CREDS)
        try:
            assert _owner(await _attr(root, "etc/file")) == want, base.name
            await _write(root, "etc/file", b"y")
            assert _owner(await _attr(root, "etc/file")) == want, base.name
        finally:
            await root.close()
            await fs.aclose()
        copied = tmp_path / f"upper-{base.name}" / "etc" / "file"
        assert os.getxattr(copied, "user.virtfs.uid") == struct.pack("<I", want[0])
        assert stat.S_IMODE(os.stat(copied).st_mode) == 0o600


async def test_ninepd_and_configs_give_a_cow_export_its_identity(tarball, tmp_path):
    """--identity (and a config export's identity:) reaches the upper of a COW export."""
    from ninep.cli import build_exports, build_parser
    from ninep.config import parse_config

    args = build_parser().parse_args(["--export", str(tarball), "--upper",
                                      str(tmp_path / "u1"), "--identity", "mapped"])
    cow = build_exports(args, None)[""].filesystem
    config = parse_config(f"exports:\n  vms:\n    base: {tarball}\n    upper: {tmp_path}/u2\n"
                          f"    identity: mapped\n", "test.yaml")
    from_config = build_exports(build_parser().parse_args([]), config)["vms"].filesystem
    for fs, upper in ((cow, tmp_path / "u1"), (from_config, tmp_path / "u2")):
        root = await fs.attach("", CREDS)
        try:
            assert _owner(await _attr(root, "etc/shadow")) == (0, 42, 0o100640)
            await _setattr(root, "etc/shadow", uid=7)
        finally:
            await root.close()
            await fs.aclose()
        copied = upper / "etc" / "shadow"
        assert os.getxattr(copied, "user.virtfs.uid") == struct.pack("<I", 7)
        assert stat.S_IMODE(os.stat(copied).st_mode) == 0o600
    with pytest.raises(ValueError):
        CowFilesystem(str(tarball), str(tmp_path / "u3"), identity="squash")
