"""A hostile client against a real HostFilesystem export over TCP: every escape
attempt fails, and the export keeps serving (a second, honest connection checks)."""

import errno
import os

import pytest
import trio

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.server import serve

from srv_wire import Peer

SECRET = b"outside the export"


@pytest.fixture
def tree(tmp_path):
    export = tmp_path / "export"
    outside = tmp_path / "outside"
    (export / "dir").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (export / "dir" / "inside").write_bytes(b"inside")
    os.symlink(str(outside), export / "abs-link")
    os.symlink("../outside", export / "rel-link")
    os.symlink("../../outside/secret", export / "dir" / "secret-link")
    return export, outside


async def read_via(peer, tag, fid, newfid, names):
    """Walk + open + read; the reply that stopped us, or the data."""
    reply = await peer.rpc(m.Twalk(tag, fid, newfid, tuple(names)))
    if not isinstance(reply, m.Rwalk) or len(reply.qids) != len(names):
        return reply
    reply = await peer.rpc(m.Tlopen(tag, newfid, 0))
    if not isinstance(reply, m.Rlopen):
        await peer.rpc(m.Tclunk(tag, newfid))
        return reply
    reply = await peer.rpc(m.Tread(tag, newfid, 0, 4096))
    await peer.rpc(m.Tclunk(tag, newfid))
    return reply


async def honest_check(server):
    peer = await connect(server)
    async with peer.stream:
        await peer.start(n_uname=0)
        assert await read_via(peer, 1, 0, 1, ["dir", "inside"]) == m.Rread(1, b"inside")


async def connect(server) -> Peer:
    host, port = server.addresses[0].removeprefix("tcp://").rsplit(":", 1)
    return Peer(await trio.open_tcp_stream(host, int(port)))


async def test_escapes_fail_and_the_export_keeps_serving(tree):
    export, outside = tree
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, HostFilesystem(str(export)), "tcp://127.0.0.1:0")
        peer = await connect(server)
        async with peer.stream:
            await peer.start(n_uname=0)
            # ".." at the root stays at the root.
            reply = await peer.rpc(m.Twalk(1, 0, 1, ("..", "..", "..")))
            assert isinstance(reply, m.Rwalk)
            assert reply.qids[-1] == (await peer.rpc(m.Tgetattr(2, 0, 0x7FF))).qid
            assert isinstance(await read_via(peer, 3, 1, 2, ["outside", "secret"]), m.Rlerror)
            # Symlinks are walked *to*, never *through*.
            for names in (["abs-link", "secret"], ["rel-link", "secret"], ["dir", "..", "rel-link", "secret"]):
                reply = await read_via(peer, 4, 0, 3, names)
                assert not (isinstance(reply, m.Rread) and reply.data == SECRET), names
            # Opening a symlink to a file outside does not read the target.
            reply = await read_via(peer, 5, 0, 3, ["dir", "secret-link"])
            assert not (isinstance(reply, m.Rread) and reply.data == SECRET)
            # Names with "/" in walks and creates.
            assert await peer.rpc(m.Twalk(6, 0, 3, ("../outside",))) == m.Rlerror(6, errno.ENOENT)
            assert await peer.rpc(m.Twalk(7, 0, 3, ("/etc",))) == m.Rlerror(7, errno.ENOENT)
            await peer.rpc(m.Twalk(8, 0, 4, ()))
            assert await peer.rpc(m.Tlcreate(9, 4, "../outside/evil", 0o2, 0o644, 0)) == m.Rlerror(9, errno.EINVAL)
            assert await peer.rpc(m.Tmkdir(10, 0, "..", 0o755, 0)) == m.Rlerror(10, errno.EINVAL)
            assert await peer.rpc(m.Tsymlink(11, 0, "a/b", "/", 0)) == m.Rlerror(11, errno.EINVAL)
            assert await peer.rpc(m.Trenameat(12, 0, "dir", 0, "../dir")) == m.Rlerror(12, errno.EINVAL)
            # A new symlink pointing out is just a symlink: walking through it fails too.
            assert isinstance(await peer.rpc(m.Tsymlink(13, 0, "mine", str(outside), 0)), m.Rsymlink)
            reply = await read_via(peer, 14, 0, 5, ["mine", "secret"])
            assert not (isinstance(reply, m.Rread) and reply.data == SECRET)
            # Nothing was created outside.
            assert sorted(os.listdir(outside)) == ["secret"]
            await honest_check(server)
        nursery.cancel_scope.cancel()


async def test_symlink_swap_race_never_reaches_outside(tree):
    """One connection flips dir <-> symlink-to-outside while another walks through."""
    export, outside = tree
    (export / "flip").mkdir()
    (export / "flip" / "secret").write_bytes(b"harmless")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, HostFilesystem(str(export)), "tcp://127.0.0.1:0")
        swapper, walker = await connect(server), await connect(server)
        async with swapper.stream, walker.stream:
            await swapper.start(n_uname=0)
            await walker.start(n_uname=0)
            leaked = []
            outcomes = set()
            done = trio.Event()

            async def swap():
                for i in range(150):
                    await swapper.rpc(m.Trenameat(1, 0, "flip", 0, "flip.real"))
                    await swapper.rpc(m.Tsymlink(2, 0, "flip", str(outside), 0))
                    await swapper.rpc(m.Tunlinkat(3, 0, "flip", 0))
                    await swapper.rpc(m.Trenameat(4, 0, "flip.real", 0, "flip"))
                done.set()

            async def walk():
                tag = 10
                while not done.is_set():
                    tag = tag % 1000 + 1
                    reply = await read_via(walker, tag, 0, 1, ["flip", "secret"])
                    if isinstance(reply, m.Rread) and reply.data == SECRET:
                        leaked.append(reply)
                    outcomes.add(reply.data if isinstance(reply, m.Rread) else type(reply).__name__)

            async with trio.open_nursery() as race:
                race.start_soon(swap)
                race.start_soon(walk)
            assert leaked == []
            # The walker saw both states: the race was really run.
            assert b"harmless" in outcomes and outcomes - {b"harmless"}, outcomes
            await honest_check(server)
        nursery.cancel_scope.cancel()
