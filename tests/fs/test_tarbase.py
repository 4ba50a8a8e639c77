"""A tarball as a read-only base: served in place, compressed ones decompressed once
into the cache, ownership/links/devices/xattrs from the headers."""

import errno
import io
import os
import shutil
import stat
import tarfile

import pytest

from ninep.fs.backend import Credentials
from ninep.fs.cow import CowFilesystem
from ninep.fs.tarbase import TarFilesystem, uncompressed
from ninep.protocol.constants import OpenFlags

from conformance.helpers import list_dir, raises_errno, read_all, walk_to, walked

CREDS = Credentials(None, None)


def build_tar(path, compression=""):
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        def add(name, kind, data=b"", **extra):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mode = extra.pop("mode", 0o644)
            info.uid, info.gid = extra.pop("uid", 0), extra.pop("gid", 0)
            info.mtime = 1_600_000_000
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("./", tarfile.DIRTYPE, mode=0o755)
        add("./etc", tarfile.DIRTYPE, mode=0o755)
        add("./etc/shadow", tarfile.REGTYPE, b"root:*:\n", mode=0o640, uid=0, gid=42)
        add("./home/user/notes", tarfile.REGTYPE, b"mine\n", uid=1000, gid=1000)  # no dir members
        add("./bin/tool", tarfile.REGTYPE, b"\x7fELF" + bytes(70000), mode=0o755,
            pax_headers={"SCHILY.xattr.user.flag": "set"})
        add("./bin/alias", tarfile.LNKTYPE, linkname="./bin/tool")
        add("./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add("./sh", tarfile.SYMTYPE, linkname="bin/tool", mode=0o777)
        add("../evil", tarfile.REGTYPE, b"no")


@pytest.fixture(params=["", "gz", "xz", "zst"])
def archive(request, tmp_path, monkeypatch):
    monkeypatch.setenv("NINEP_CACHE", str(tmp_path / "cache"))
    plain = tmp_path / "root.tar"
    build_tar(plain)
    if request.param == "":
        return plain
    if request.param == "zst":
        if shutil.which("zstd") is None:
            pytest.skip("no zstd command")
        os.system(f"zstd -q {plain} -o {plain}.zst")
        return tmp_path / "root.tar.zst"
    path = tmp_path / f"root.tar.{request.param}"
    build_tar(path, request.param)
    return path


async def test_tar_tree_from_headers(archive):
    fs = TarFilesystem(str(archive))
    root = await fs.attach("", CREDS)
    async with walked(root, "etc/shadow", OpenFlags.RDONLY) as f:
        a = await f.getattr(0)
        assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (0, 42, 0o640)
        assert await read_all(f) == b"root:*:\n"
    async with walked(root, "home/user/notes") as f:
        assert ((await f.getattr(0)).uid, (await f.getattr(0)).gid) == (1000, 1000)
    tool, alias = await walk_to(root, "bin/tool"), await walk_to(root, "bin/alias")
    assert tool.qid == alias.qid and (await tool.getattr(0)).nlink == 2
    assert await tool.xattr_get("user.flag") == b"set"
    await tool.open(OpenFlags.RDONLY)
    assert bytes(await tool.read(0, 4)) == b"\x7fELF" and len(await read_all(tool)) == 70004
    with raises_errno(errno.EROFS):
        await alias.open(OpenFlags.RDWR)
    async with walked(root, "dev/null") as dev:
        a = await dev.getattr(0)
        assert stat.S_ISCHR(a.mode) and a.rdev == os.makedev(1, 3)
        with raises_errno(errno.ENXIO):
            await dev.open(OpenFlags.RDONLY)
    async with walked(root, "sh") as link:
        assert await link.readlink() == "bin/tool"
    async with walked(root, "", OpenFlags.RDONLY) as d:
        assert {e.name for e in await list_dir(d)} == {".", "..", "etc", "home", "bin", "dev", "sh"}
    assert fs.index.skipped == ["../evil"]
    for f in (tool, alias, root):
        await f.close()
    await fs.aclose()


def test_compressed_archives_are_decompressed_once(archive):
    first = uncompressed(str(archive))
    again = uncompressed(str(archive))
    assert first == again
    if str(archive).endswith(".tar"):
        assert first == str(archive)  # read in place, never copied
    else:
        assert os.path.getmtime(first) == os.path.getmtime(again)
        with tarfile.open(first) as tar:
            assert "./etc/shadow" in tar.getnames()


async def test_cow_over_a_tarball_keeps_header_owners_on_copy_up(archive, tmp_path):
    fs = CowFilesystem(str(archive), str(tmp_path / "upper"))
    root = await fs.attach("", CREDS)
    async with walked(root, "etc/shadow", OpenFlags.WRONLY | OpenFlags.APPEND) as f:
        await f.write(0, memoryview(b"user:*:\n"))
    copied = tmp_path / "upper" / "etc" / "shadow"
    assert copied.read_bytes() == b"root:*:\nuser:*:\n"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert (copied.stat().st_uid, copied.stat().st_gid) == (0, 42)
    async with walked(root, "bin/alias", OpenFlags.RDWR) as f:
        await f.write(0, memoryview(b"#!"))
    async with walked(root, "bin/tool", OpenFlags.RDONLY) as f:
        assert bytes(await f.read(0, 4)) == b"#!LF"
    assert os.getxattr(tmp_path / "upper" / "bin" / "tool", "user.flag") == b"set"
    await root.close()
    await fs.aclose()


def _layer(path, members, compression=""):
    with tarfile.open(path, f"w:{compression}" if compression else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _oci_layout(root, layer_files):
    import hashlib
    import json
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               "digest": put(f.read_bytes()), "size": f.stat().st_size} for f in layer_files]
    config = put(b"{}")
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": config, "size": 2,
                           "mediaType": "application/vnd.oci.image.config.v1+json"},
                           "layers": layers}).encode()
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
         "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


async def test_oci_layout_layers_and_whiteouts(tmp_path, monkeypatch):
    monkeypatch.setenv("NINEP_CACHE", str(tmp_path / "cache"))
    lower, upper = tmp_path / "l1.tar", tmp_path / "l2.tar.gz"
    _layer(lower, [("etc", None), ("etc/a", b"old a\n"), ("etc/b", b"b\n"), ("opt", None),
                   ("opt/x", b"x\n"), ("opt/y", b"y\n")])
    _layer(upper, [("etc/a", b"new a\n"), ("etc/.wh.b", b""), ("opt/.wh..wh..opq", b""),
                   ("opt/z", b"z\n")], "gz")
    layout = tmp_path / "image"
    _oci_layout(layout, [lower, upper])
    fs = CowFilesystem(str(layout), str(tmp_path / "cow-upper"))
    root = await fs.attach("", CREDS)

    async def names(path):
        async with walked(root, path, OpenFlags.RDONLY) as d:
            return {e.name for e in await list_dir(d)} - {".", ".."}
    assert await names("etc") == {"a"}
    assert await names("opt") == {"z"}
    async with walked(root, "etc/a", OpenFlags.RDONLY) as f:
        assert await read_all(f) == b"new a\n"
    async with walked(root, "opt/z", OpenFlags.RDWR) as f:
        await f.write(0, memoryview(b"Z"))
    assert (tmp_path / "cow-upper" / "opt" / "z").read_bytes() == b"Z\n"
    await root.close()
    await fs.aclose()


def test_names_that_are_not_utf8_are_skipped(tmp_path):
    path = tmp_path / "latin1.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for name in ("ok", "b\xe9d"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    fs = TarFilesystem(str(path))
    assert list(fs.index.root.children) == ["ok"] and len(fs.index.skipped) == 1
    fs.index.close()


def test_the_decompressed_copy_goes_where_the_other_caches_go(monkeypatch, tmp_path):
    """$XDG_CACHE_HOME like ninep vm's caches: an unprivileged ninepd's $HOME may be
    unwritable (or /nonexistent) while its XDG cache is not."""
    from ninep.fs import tarbase

    monkeypatch.delenv("NINEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tarbase.cache_dir() == str(tmp_path / "xdg" / "ninep")
    monkeypatch.setenv("NINEP_CACHE", str(tmp_path / "mine"))
    assert tarbase.cache_dir() == str(tmp_path / "mine")
