"""The lone connection's polling window (server/polling.py): a table of what the
client did and what the window becomes, then the reader using it on a real socket."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import trio

from ninep.fs.host import HostFilesystem
from ninep.server.connection import Connection, LockManager
from ninep.server.polling import PollWindow
from ninep.server.session import Export

US = 1e-6

# (events, window after each in µs); "p" = came while polling, a number = came that many
# µs after the reply, after the window; None = did not come within the sleep.
CASES = [
    # A fast client: the window opens at START and doubles until it catches the request.
    ([30, 30, 30, "p", "p"], [10, 20, 40, 40, 40]),
    # Capped at max_window (100 µs).
    ([90] * 6, [10, 20, 40, 80, 100, 100]),
    # A slow client (a TCG guest, ~360 µs between requests) never opens it.
    ([360] * 5, [0, 0, 0, 0, 0]),
    # An open window halves on each late request, and closes below START.
    ([50, 50, 50, 400, 400, 400, 400], [10, 20, 40, 20, 10, 0, 0]),
    # An idle client (the sleep timed out) closes it the same way.
    ([50, 50, None, None], [10, 20, 10, 0]),
    # Exactly max_window still counts as catchable.
    ([100], [10]),
]


@pytest.mark.parametrize("events, windows", CASES)
def test_the_window_follows_the_client(events, windows):
    poll = PollWindow(max_window=100 * US, start=10 * US)
    seen = []
    for event in events:
        if event == "p":
            poll.polled()
        else:
            poll.slept(None if event is None else event * US)
        seen.append(round(poll.window / US))
    assert seen == windows


def test_a_zero_maximum_never_polls():
    poll = PollWindow(max_window=0.0)
    for _ in range(10):
        poll.slept(0.0)
    assert poll.window == 0.0


# The client is another process, as in production: a client thread of this process
# would need our GIL to send, which a polling reader holds.
CLIENT = textwrap.dedent("""
    import socket, sys
    from ninep.protocol import messages as m
    from ninep.protocol.codec import FrameReader, decode, encode_bytes
    sock = socket.socket(fileno=int(sys.argv[1]))
    frames = FrameReader(1 << 20)
    def rpc(msg):
        sock.sendall(encode_bytes(msg))
        while (frame := frames.next_frame()) is None:
            frames.feed(sock.recv(65536))
        return decode(frame)
    rpc(m.Tversion(0xFFFF, 65536, "9P2000.L"))
    rpc(m.Tattach(1, 0, 0xFFFFFFFF, "nobody", "", 0xFFFFFFFF))
    for _ in range(int(sys.argv[2])):
        assert isinstance(rpc(m.Tgetattr(2, 0, 0x7FF)), m.Rgetattr)
""")


async def _serve_a_process_client(tmp_path, poll_window: float, rounds: int) -> Connection:
    ours, theirs = socket.socketpair()
    conn = Connection(trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
                      {"": Export(HostFilesystem(str(tmp_path)))}, LockManager(),
                      poll_window=poll_window)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(theirs.fileno()), str(rounds)],
                              pass_fds=[theirs.fileno()])
    theirs.close()
    with trio.fail_after(60):
        await conn.run()
    assert await trio.to_thread.run_sync(client.wait) == 0
    assert conn.requests_served == rounds + 1  # and Tversion
    return conn


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="one CPU: the client cannot run while we poll (Server turns it off)")
async def test_a_fast_lone_client_is_met_by_polling(tmp_path):
    """A client that sends its next request within the window is found by polling,
    not by a sleep and a wake-up. Polling may miss on a loaded machine, so this asks
    only that it happened, and that the window grew to do it."""
    conn = await _serve_a_process_client(tmp_path, 500 * US, 2000)
    assert conn.lone_polls > 0 and conn._poll.grown > 0


async def test_polling_off_never_polls(tmp_path):
    conn = await _serve_a_process_client(tmp_path, 0.0, 300)
    assert conn.lone_polls == 0 and conn.lone_waits > 0
