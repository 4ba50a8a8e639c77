"""ninep.vm.relay as QEMU runs it: stdin/stdout one loopback TCP socket (slirp's)."""

import os
import socket
import subprocess
import sys

import trio

PAYLOAD = os.urandom(3 << 20)  # both ways at once: larger than every socket buffer


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        guest = socket.create_connection(listener.getsockname())
        relay_end, _ = listener.accept()
    return guest, relay_end


def _start_relay(relay_end: socket.socket, target: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ninep.vm.relay", target],
                            stdin=relay_end, stdout=relay_end, stderr=relay_end)


async def _send_and_receive(sock: trio.socket.SocketType, data: bytes) -> bytes:
    received = bytearray()

    async def send() -> None:
        view = memoryview(data)
        while view:
            view = view[await sock.send(view[:65536]):]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while len(received) < len(data):
            chunk = await sock.recv(1 << 16)
            assert chunk, "peer closed early"
            received += chunk
    return bytes(received)


async def test_relay_pumps_both_ways_at_once_and_passes_the_servers_eof(tmp_path):
    path = str(tmp_path / "server.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    guest, relay_end = _tcp_pair()
    relay = _start_relay(relay_end, f"unix:{path}")
    relay_end.close()
    try:
        conn, _ = await trio.to_thread.run_sync(server.accept)
        guest_t = trio.socket.from_stdlib_socket(guest)
        conn_t = trio.socket.from_stdlib_socket(conn)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                results = {}

                async def side(name, sock, data):
                    results[name] = await _send_and_receive(sock, data)

                nursery.start_soon(side, "guest", guest_t, PAYLOAD)
                nursery.start_soon(side, "server", conn_t, PAYLOAD[::-1])
        assert results["server"] == PAYLOAD and results["guest"] == PAYLOAD[::-1]
        conn_t.close()  # the server goes away: the guest must see EOF, not silence
        with trio.fail_after(5):
            assert await guest_t.recv(10) == b""
        with trio.fail_after(5):
            guest_t.close()
            assert await trio.to_thread.run_sync(relay.wait) == 0
    finally:
        relay.kill()
        relay.wait()
        server.close()


def test_relay_without_a_server_closes_the_guest_connection_at_once(tmp_path):
    guest, relay_end = _tcp_pair()
    relay = _start_relay(relay_end, f"unix:{tmp_path}/nobody-listens")
    relay_end.close()
    try:
        assert relay.wait(timeout=10) == 1
        guest.settimeout(5)
        assert guest.recv(10) == b""  # and nothing (no traceback) went to the guest
    finally:
        relay.kill()
        guest.close()
