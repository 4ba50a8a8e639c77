"""examples/ctl.py through the server and the project's client, two connections."""

import errno

import pytest
import trio

from ninep.client import connect
from ninep.protocol.constants import OpenFlags
from ninep.server import serve

import ctl


def parse_stats(text: bytes) -> dict[str, int]:
    return {name: int(value) for name, value in (line.split() for line in text.decode().splitlines())}


async def test_ctl_tree_counts_per_connection():
    tree = ctl.make_tree()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, tree, "tcp://127.0.0.1:0")
        url = server.addresses[0]
        async with connect(url, n_uname=1000) as one, connect(url, n_uname=2000) as two:
            assert (await one.root.read_file("version")).startswith(b"ninep ")
            lines = (await one.root.read_file("connections")).decode().splitlines()
            assert [line.split()[1] for line in lines] == ["1000", "2000"]
            await one.root.read_file("version")
            mine = parse_stats(await one.root.read_file("self"))
            theirs = parse_stats(await two.root.read_file("self"))
            assert (mine["opens"], theirs["opens"]) == (3, 0)  # counted before this open
            ids = sorted(e.name for e in await one.root.listdir("stats") if e.name not in (".", ".."))
            assert len(ids) == 2
            other = parse_stats(await one.root.read_file(f"stats/{ids[1]}"))
            assert other["opens"] >= 1
            async with one.root.open("ctl", OpenFlags.WRONLY) as control:
                await control.write(b"reset\n")
                with pytest.raises(OSError) as failure:
                    await control.write(b"explode\n")
                assert failure.value.errno == errno.EINVAL
            assert parse_stats(await one.root.read_file("self"))["reads"] <= 1
            async with one.root.open("zero") as zero:
                assert await zero.read(1000) == bytes(1000)
            async with one.root.open("null", OpenFlags.RDWR) as null:
                assert await null.write(b"discarded") == 9
                assert await null.read(10) == b""
        with trio.fail_after(5):  # both clients left: their sessions ended
            while tree.filesystem.sessions:
                await trio.sleep(0.01)
        server.shutdown()


async def test_ctl_tree_mounted_inside_another_tree_sees_the_serving_export():
    from ninep.fs.synthetic import Directory

    outer = Directory({"ctl": ctl.make_tree()})
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, outer, "tcp://127.0.0.1:0")
        async with connect(server.addresses[0], n_uname=7) as client:
            lines = (await client.root.read_file("ctl/connections")).decode().splitlines()
            assert [line.split()[1] for line in lines] == ["7"]
            ids = [e.name for e in await client.root.listdir("ctl/stats") if e.name not in (".", "..")]
            assert len(ids) == 1
        server.shutdown()
