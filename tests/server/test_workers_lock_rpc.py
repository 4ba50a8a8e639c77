"""A worker's lock calls to its supervisor are awaited, not blocking: a supervisor slow
to answer stalls the request that asked, not the worker's other connections.

The worker runs in this process (``run_worker``, as ``worker_main`` runs it) and the
test plays the supervisor on the other ends of its ctl and rpc channels, so it decides
when (and whether) a lock call is answered."""

from __future__ import annotations

import array
import errno
import pickle
import socket

import trio

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import LockFlags, LockStatus, LockType, OpenFlags
from ninep.server import workers
from ninep.server.locks import HeldLock, LockOwner
from ninep.server.server import Server
from ninep.server.session import Export

from srv_wire import Peer

WR = LockType.WRLCK


def hand_over(ctl: socket.socket) -> Peer:
    """A new client connection, handed to the worker as the supervisor does."""
    ours, theirs = socket.socketpair()
    ctl.sendmsg([pickle.dumps(("conn", "test client", "test"))],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
    theirs.close()
    return Peer(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))


async def test_lock_calls_to_the_supervisor_stall_only_the_request_that_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "_RPC_TIMEOUT", 10.0)
    (tmp_path / "f").write_bytes(b"x")
    server = Server({"": Export(HostFilesystem(str(tmp_path)))})
    ctl, ctl_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rpc_std, rpc_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rpc = trio.socket.from_stdlib_socket(rpc_std)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(workers.run_worker, server, ctl_worker.detach(), rpc_worker.detach())
        a, b = hand_over(ctl), hand_over(ctl)
        for peer in (a, b):
            await peer.start()
            assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await peer.rpc(m.Tlopen(3, 1, OpenFlags.RDWR)), m.Rlopen)

        # a's Tlock reaches the "supervisor", which does not answer yet.
        await a.send(m.Tlock(10, 1, WR, 0, 0, 10, 1, "a"))
        with trio.fail_after(5):
            number, method, args = pickle.loads(await rpc.recv(1 << 18))
        assert method == "set" and args[2:5] == (WR, 0, 10)
        # Meanwhile b, on the same worker, is served at once, again and again.
        with trio.fail_after(1):  # (a blocking call would hold the loop for 10 s)
            for tag in range(20, 30):
                assert isinstance(await b.rpc(m.Tgetattr(tag, 1, 0x7FF)), m.Rgetattr)
        await rpc.send(pickle.dumps((number, "ok", (True, []))))
        with trio.fail_after(5):
            assert await a.recv() == m.Rlock(10, LockStatus.SUCCESS)

        # Calls of two requests are on the channel at once, each answer goes to its own.
        await a.send(m.Tgetlock(14, 1, WR, 0, 10, 1, "a"))
        await b.send(m.Tgetlock(15, 1, WR, 0, 10, 2, "b"))
        first, _, args_first = pickle.loads(await rpc.recv(1 << 18))
        second, _, args_second = pickle.loads(await rpc.recv(1 << 18))
        assert {args_first[1].client_id, args_second[1].client_id} == {"a", "b"}
        for number, args in ((second, args_second), (first, args_first)):  # out of order
            other = LockOwner(("connection", 1, 1), "x" + args[1].client_id, 9)
            await rpc.send(pickle.dumps((number, "ok", HeldLock(other, WR, 0, 10))))
        with trio.fail_after(5):
            assert await a.recv() == m.Rgetlock(14, WR, 0, 10, 9, "xa")
            assert await b.recv() == m.Rgetlock(15, WR, 0, 10, 9, "xb")

        # A release that comes while a refused call's answer is on its way still
        # wakes the blocked Tlock (it watched the key before asking): the retry comes
        # at once, not after the 1 s recheck for lost notices.
        await a.send(m.Tlock(13, 1, WR, LockFlags.BLOCK, 20, 10, 1, "a"))
        number, method, args = pickle.loads(await rpc.recv(1 << 18))
        assert method == "set"
        ctl.send(pickle.dumps(("released", [args[0]])))
        await trio.sleep(0.1)  # the worker reads the notice before the answer
        await rpc.send(pickle.dumps((number, "ok", (False, []))))
        number, method, _ = pickle.loads(await rpc.recv(1 << 18))
        assert method == "begin_wait"
        await rpc.send(pickle.dumps((number, "ok", True)))
        with trio.fail_after(workers._LOCK_RECHECK_SECONDS / 2):
            number, method, _ = pickle.loads(await rpc.recv(1 << 18))
            assert method == "end_wait"
            await rpc.send(pickle.dumps((number, "ok", None)))
            number, method, args = pickle.loads(await rpc.recv(1 << 18))
            assert method == "set" and args[2:5] == (WR, 20, 10)
        await rpc.send(pickle.dumps((number, "ok", (True, []))))
        with trio.fail_after(5):
            assert await a.recv() == m.Rlock(13, LockStatus.SUCCESS)

        # A call never answered fails alone, with EIO, after _RPC_TIMEOUT ...
        monkeypatch.setattr(workers, "_RPC_TIMEOUT", 1.0)
        await a.send(m.Tgetlock(11, 1, WR, 0, 10, 1, "a"))
        late, method, _ = pickle.loads(await rpc.recv(1 << 18))
        assert method == "conflict"
        with trio.fail_after(5):
            assert await a.recv() == m.Rlerror(11, errno.EIO)
        # ... and its late answer is not taken for the next call's.
        await rpc.send(pickle.dumps((late, "ok", None)))
        await a.send(m.Tgetlock(12, 1, WR, 0, 10, 1, "a"))
        number, method, _ = pickle.loads(await rpc.recv(1 << 18))
        assert method == "conflict" and number > late
        other = LockOwner(("connection", 1, 1), "other", 7)
        await rpc.send(pickle.dumps((number, "ok", HeldLock(other, WR, 0, 10))))
        with trio.fail_after(5):
            assert await a.recv() == m.Rgetlock(12, WR, 0, 10, 7, "other")
        rpc.close()  # the supervisor goes: what is left fails at once, not after a timeout
        nursery.cancel_scope.cancel()
    ctl.close()
    for peer in (a, b):
        await peer.stream.aclose()
