"""The process's budget for bulk bytes (``max_buffered_process``, rules.ByteBudget)
over real sockets: it holds the process's queued replies near its limit, a client
that stops reading its replies cannot stall another connection, and a connection
stopped by the budget reads on as soon as another one's replies drain.

Each server socket's send buffer is made small, so replies a client does not read
stay queued in the server (counted) instead of in the kernel."""

from __future__ import annotations

import socket

import trio

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.constants import OpenFlags
from ninep.server.rules import ByteBudget
from ninep.server.session import Limits

from srv_wire import served

READ = 100_000  # bytes per Tread
BUDGET = 250_000  # the process's: room for two such replies, not three


async def open_big(peer) -> None:
    await peer.start(msize=1 << 20)
    assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ("big",))), m.Rwalk)
    assert isinstance(await peer.rpc(m.Tlopen(2, 1, OpenFlags.RDONLY)), m.Rlopen)


async def settle(seconds: float = 0.3) -> None:
    await trio.sleep(seconds)  # the server acts on what it was sent


async def test_the_process_budget_bounds_replies_and_lets_every_connection_progress(tmp_path):
    (tmp_path / "big").write_bytes(bytes(range(256)) * 4096)
    budget = ByteBudget(BUDGET)
    limits = Limits(max_buffered=1 << 20)  # each connection alone could hold 1 MiB
    async with served(HostFilesystem(str(tmp_path)), limits=limits, connections=2,
                      budget=budget) as ([a, b], conns):
        for peer in (a, b):
            await open_big(peer)
        for conn in conns:
            conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        a_served = lambda: conns[0].requests_served  # noqa: E731
        b_served = lambda: conns[1].requests_served  # noqa: E731
        a0, b0 = a_served(), b_served()

        # b asks for two reads and takes no reply yet: 200,000 bytes held.
        await b.send(*(m.Tread(40 + i, 1, 0, READ) for i in range(2)))
        await settle()
        assert b_served() - b0 == 2
        # a asks for three: it holds nothing, so it takes one, and then the budget
        # is spent (b's bytes and its own): it stops.
        await a.send(*(m.Tread(10 + i, 1, 0, READ) for i in range(3)))
        await settle()
        assert a_served() - a0 == 1 and budget.spent
        # b takes its replies: the budget has room again, and a reads on without
        # anything of its own having changed (its client still reads nothing).
        with trio.fail_after(10):
            for i in range(2):
                assert (await b.recv()).tag == 40 + i
        await settle()
        assert a_served() - a0 == 3

        # a now holds three unread replies, past the budget: five more requests of
        # its wait, though its own limit (1 MiB) would allow them.
        await a.send(*(m.Tread(13 + i, 1, 0, READ) for i in range(5)))
        await settle()
        assert a_served() - a0 == 3
        assert BUDGET <= budget.used < BUDGET + READ

        # b holds nothing: it is served, one request at a time, though the budget
        # is spent (a's unread replies cannot stall it).
        with trio.fail_after(10):
            await b.send(*(m.Tread(30 + i, 1, READ * i, READ) for i in range(4)))
            for i in range(4):
                reply = await b.recv()
                assert reply.tag == 30 + i and len(reply.data) == READ
        assert a_served() - a0 == 3

        with trio.fail_after(10):
            for i in range(8):
                reply = await a.recv()
                assert reply.tag == 10 + i and len(reply.data) == READ
        await settle()
        assert budget.used == 0
