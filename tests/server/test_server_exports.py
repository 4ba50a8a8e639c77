"""Export options from the command line and YAML: read-only for any backend,
statfs passthrough and inline identity for host exports."""

import errno

import pytest

from ninep.cli import build_exports, build_parser
from ninep.config import ConfigError, parse_config
from ninep.fs.hostsys import fstatfs_type
from ninep.fs.synthetic.ramfs import RamFile, RamFilesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import V9FS_MAGIC, OpenFlags
from ninep.server.session import Export

from srv_wire import served

RDONLY, WRONLY, RDWR = int(OpenFlags.RDONLY), int(OpenFlags.WRONLY), int(OpenFlags.RDWR)
TRUNC = int(OpenFlags.TRUNC)
EROFS = errno.EROFS

# A module attribute that --synthetic can name: a writable RAM tree with one file.
RAM_TREE = RamFilesystem()


def exports_for(argv, config=None):
    return build_exports(build_parser().parse_args(argv), config)


async def test_read_only_export_refuses_every_change_for_any_backend():
    fs = RamFilesystem()
    fs.root["f"] = RamFile(b"data")
    fs.root["d"] = type(fs.root)()
    async with served({"": Export(fs, read_only=True)}) as ([peer], _):
        await peer.start()

        async def walked(tag, fid, *names):
            assert isinstance(await peer.rpc(m.Twalk(tag, 0, fid, names)), m.Rwalk)

        await walked(1, 1, "f")
        for flags in (WRONLY, RDWR, RDONLY | TRUNC):
            assert await peer.rpc(m.Tlopen(2, 1, flags)) == m.Rlerror(2, EROFS)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, RDONLY)), m.Rlopen)
        assert await peer.rpc(m.Tread(4, 1, 0, 100)) == m.Rread(4, b"data")  # reads work
        await walked(5, 2, "f")
        refused = [
            m.Tlcreate(6, 0, "new", RDWR, 0o644, 0),
            m.Tmkdir(7, 0, "dir", 0o755, 0),
            m.Tsymlink(8, 0, "ln", "f", 0),
            m.Tmknod(9, 0, "fifo", 0o10644, 0, 0, 0),
            m.Tunlinkat(10, 0, "f", 0),
            m.Trenameat(11, 0, "f", 0, "g"),
            m.Trename(12, 2, 0, "g"),
            m.Tlink(13, 0, 2, "hard"),
            m.Tsetattr(14, 2, 1, 0o600, 0, 0, 0, 0, 0, 0, 0),
            m.Txattrcreate(15, 2, "user.x", 1, 0),
        ]
        for request in refused:
            assert await peer.rpc(request) == m.Rlerror(request.tag, EROFS), request
        assert await peer.rpc(m.Tremove(16, 2)) == m.Rlerror(16, EROFS)
        assert await peer.rpc(m.Tclunk(17, 2)) == m.Rlerror(17, errno.EBADF)  # clunked anyway
    assert set(fs.root) == {"f", "d"} and bytes(fs.root["f"].data) == b"data"


def test_read_only_flag_applies_to_synthetic_exports():
    [export] = exports_for(["--synthetic", f"{__name__}:RAM_TREE", "--read-only"]).values()
    assert export.read_only and export.filesystem is RAM_TREE
    [export] = exports_for(["--synthetic", f"{__name__}:RAM_TREE"]).values()
    assert not export.read_only


async def test_statfs_passthru_and_identity_inline_flags(tmp_path):
    plain = exports_for(["--export", str(tmp_path)])[""]
    tuned = exports_for(["--export", str(tmp_path), "--statfs-passthru", "--identity-inline"])[""]
    assert not plain.filesystem.pass_statfs and not plain.filesystem.identity_inline
    assert tuned.filesystem.pass_statfs and tuned.filesystem.identity_inline
    for export, expected in ((plain, V9FS_MAGIC), (tuned, fstatfs_type_of(tmp_path))):
        async with served({"": export}) as ([peer], _):
            await peer.start()
            assert (await peer.rpc(m.Tstatfs(1, 0))).type == expected
        await export.filesystem.aclose()


def fstatfs_type_of(path) -> int:
    import os
    fd = os.open(path, os.O_RDONLY)
    try:
        return fstatfs_type(fd)
    finally:
        os.close(fd)


def test_yaml_export_options(tmp_path):
    config = parse_config(f"""
exports:
  fast:
    path: {tmp_path}
    statfs_passthru: true
    identity_inline: true
  plain:
    path: {tmp_path}
    read_only: true
""")
    fast, plain = config.exports
    assert (fast.statfs_passthru, fast.identity_inline, fast.read_only) == (True, True, False)
    assert (plain.statfs_passthru, plain.identity_inline, plain.read_only) == (False, False, True)
    exports = exports_for([], config)
    assert exports["fast"].filesystem.pass_statfs and exports["fast"].filesystem.identity_inline
    assert exports["plain"].read_only and exports["plain"].filesystem.read_only
    with pytest.raises(ConfigError, match=r"f.yaml:4: exports.x.statfs_passthru: expected true or false"):
        parse_config(f"exports:\n  x:\n    path: {tmp_path}\n    statfs_passthru: 1\n", "f.yaml")


def test_listing_cache_can_be_turned_off(tmp_path):
    assert exports_for(["--export", str(tmp_path)])[""].filesystem.listings is not None
    assert exports_for(["--export", str(tmp_path), "--no-listing-cache"])[""].filesystem.listings is None
    config = parse_config(f"exports:\n  x:\n    path: {tmp_path}\n    listing_cache: false\n")
    assert exports_for([], config)["x"].filesystem.listings is None
