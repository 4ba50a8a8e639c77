"""One ninepd, many guests: a copy-on-write export from the config file, each aname
with its own upper, through the real server and client."""

import os

import pytest
import trio

import ninep.server
from ninep.cli import build_exports, build_parser
from ninep.client import connect
from ninep.config import ConfigError, parse_config


def test_config_cow_export_shape(tmp_path):
    config = parse_config(f"""
exports:
  vms:
    base: {tmp_path}/base.tar.zst
    upper: {tmp_path}/vms/{{aname}}
  scratch:
    base: /srv/base
    throwaway: true
""")
    vms, scratch = config.exports
    assert (vms.base, vms.upper, vms.throwaway) == (f"{tmp_path}/base.tar.zst", f"{tmp_path}/vms/{{aname}}", False)
    assert scratch.throwaway and scratch.upper is None and scratch.path is None
    for bad, where in (("base: /b", "upper"), ("path: /p\n    upper: /u", "base"),
                       ("path: /p\n    base: /b\n    upper: /u", "path")):
        with pytest.raises(ConfigError, match=f"exports.x.{where}"):
            parse_config(f"exports:\n  x:\n    {bad}\n")


@pytest.fixture
def base(tmp_path):
    b = tmp_path / "base"
    (b / "etc").mkdir(parents=True)
    (b / "etc" / "motd").write_bytes(b"shared\n")
    return b


async def serve_and(exports, body):
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, exports, ["tcp://127.0.0.1:0"])
        try:
            await body(server.addresses[0])
        finally:
            server.shutdown()


async def test_anames_pick_uppers_over_the_wire(base, tmp_path):
    (tmp_path / "plain").mkdir()
    config = parse_config(f"""
exports:
  plain:
    path: {tmp_path}/plain
  vms:
    base: {base}
    upper: {tmp_path}/vms/{{aname}}
""")
    exports = build_exports(build_parser().parse_args([]), config)

    async def body(address):
        async with connect(address, aname="vms/web1") as one, \
                connect(address, aname="/vms/web2") as two:
            await one.root.write_file("etc/motd", b"web1\n")
            await two.root.unlink("etc/motd")
            assert await one.root.read_file("etc/motd") == b"web1\n"
            assert {e.name for e in await two.root.listdir("etc")} == {".", ".."}
        async with connect(address, aname="vms/web1") as again:  # persistent upper
            assert await again.root.read_file("etc/motd") == b"web1\n"
        with pytest.raises(OSError):  # a plain export takes no sub-aname
            async with connect(address, aname="plain/web1"):
                pass
        with pytest.raises(OSError):
            async with connect(address, aname="vms/../web1"):
                pass
    await serve_and(exports, body)
    assert sorted(os.listdir(tmp_path / "vms")) == ["web1", "web2"]
    assert (base / "etc" / "motd").read_bytes() == b"shared\n"
    assert (tmp_path / "vms" / "web2" / "etc" / ".wh.motd").exists()


async def test_ninepd_upper_flag_makes_the_default_export_cow(base, tmp_path):
    args = build_parser().parse_args(["--export", str(base), "--throwaway-upper"])
    exports = build_exports(args, None)
    fs = exports[""].filesystem
    fs.tmpdir = str(tmp_path)

    async def body(address):
        async with connect(address, aname="guest7") as c:  # the default export's upper
            await c.root.write_file("etc/motd", b"mine\n")
            assert [p.name.startswith("ninep-cow-guest7-") for p in tmp_path.iterdir()].count(True) == 1
        async with connect(address, aname="guest7") as c:  # throwaway: gone at unmount
            assert await c.root.read_file("etc/motd") == b"shared\n"
    await serve_and(exports, body)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ninep-cow-")]


def test_ninep_vm_cow_arguments(tmp_path):
    """`ninep vm` hands ninepd --upper or --throwaway-upper for --cow, --upper or a
    tarball root, and nothing for a plain directory."""
    from ninep.vm.cli import _cow_server_args, _parser

    def server_args(*argv):
        return _cow_server_args(_parser().parse_args(["vm", *argv]))
    assert server_args(str(tmp_path)) is None
    assert server_args(str(tmp_path), "--cow") == ("--throwaway-upper",)
    assert server_args(str(tmp_path), "--upper", str(tmp_path / "u")) == ("--upper", str(tmp_path / "u"))
    assert server_args(str(tmp_path / "root.tar.zst")) == ("--throwaway-upper",)


def test_shipped_cow_config_parses():
    from pathlib import Path

    from ninep.config import load_config

    config = load_config(str(Path(__file__).parents[2] / "exports" / "cow-guests.yaml"))
    (vms,) = config.exports
    assert vms.base.endswith(".tar.zst") and vms.upper.endswith("{aname}") and not vms.throwaway
