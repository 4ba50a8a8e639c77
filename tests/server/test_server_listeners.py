"""serve() over real sockets: URLs, port 0, stale Unix sockets, fd://, graceful shutdown."""

import gc
import os
import socket
import stat

import pytest
import trio

from ninep.protocol import messages as m
from ninep.server import current_connection, serve
from ninep.server.listeners import ListenError, open_endpoints

from srv_memfs import MemFilesystem
from srv_wire import Peer


async def start(nursery, fs, urls, **kw):
    return await nursery.start(lambda task_status: serve(fs, urls, task_status=task_status, **kw))


async def tcp_peer(address: str) -> Peer:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    peer = Peer(await trio.open_tcp_stream(host.strip("[]"), int(port)))
    _open_peers.append(peer)
    return peer


_open_peers: list[Peer] = []


@pytest.fixture(autouse=True)
async def close_peers():
    yield
    while _open_peers:
        await _open_peers.pop().stream.aclose()


async def test_tcp_port_zero_and_nodelay():
    async with trio.open_nursery() as nursery:
        server = await start(nursery, MemFilesystem(), "tcp://127.0.0.1:0")
        [address] = server.addresses
        assert not address.endswith(":0")
        peer = await tcp_peer(address)
        await peer.start()
        assert isinstance(await peer.rpc(m.Tstatfs(1, 0)), m.Rstatfs)
        [conn] = server.connections
        assert conn.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_tcp_ipv6():
    try:
        endpoints = await open_endpoints("tcp://[::1]:0")
    except ListenError:
        pytest.skip("::1 not configured")
    [endpoint] = endpoints
    assert endpoint.address.startswith("tcp://[::1]:")
    await endpoint.listener.aclose()


async def test_unix_socket_replaces_a_stale_one_and_refuses_a_live_one(tmp_path):
    path = str(tmp_path / "sub" / "9p.sock")
    os.makedirs(os.path.dirname(path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: stale
    async with trio.open_nursery() as nursery:
        server = await start(nursery, MemFilesystem(), f"unix://{path}")
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        with pytest.raises(ListenError, match="another server"):
            await open_endpoints(f"unix://{path}")
        peer = Peer(await trio.open_unix_socket(path))
        _open_peers.append(peer)
        await peer.start()
        assert server.addresses == [f"unix://{path}"]
        nursery.cancel_scope.cancel()
    with open(tmp_path / "plain", "w"):
        pass
    with pytest.raises(ListenError, match="not a socket"):
        await open_endpoints(f"unix://{tmp_path}/plain")


async def test_cancelled_serve_closes_listeners_connections_and_exports(tmp_path):
    """Cancelling serve() (no shutdown()) must still close every listening socket
    (no ResourceWarning, the port and socket refuse), the clients and the exports."""
    fs = MemFilesystem(slow={"slow": 1000.0})
    fs.add("slow", b"never")
    closed_exports = []
    fs.aclose = lambda: _record(closed_exports)
    path = str(tmp_path / "9p.sock")
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fs, ["tcp://127.0.0.1:0", f"unix://{path}"])
        peer = await tcp_peer(server.addresses[0])
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("slow",)))
        await peer.rpc(m.Tlopen(2, 1, 0))
        await peer.send(m.Tread(3, 1, 0, 100))  # in flight when the cancel comes
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    port = int(server.addresses[0].rsplit(":", 1)[1])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
    assert not os.path.exists(path)  # the socket file goes with the listener
    assert await peer.at_eof()
    assert fs.open_files == 0 and closed_exports == [True]
    gc.collect()  # an unclosed listener would warn here (warnings are errors)


async def _record(into: list) -> None:
    into.append(True)


@pytest.mark.parametrize("url", ["http://x", "tcp://nohostport", "vsock://x:1", "fd://a,b", "tcp://127.0.0.1:99999"])
async def test_bad_urls_are_listen_errors(url):
    with pytest.raises((ListenError, OverflowError)):
        await open_endpoints(url)


async def test_fd_pair_serves_one_client_then_stops():
    ours, theirs = socket.socketpair()
    fd = theirs.detach()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, MemFilesystem(), f"fd://{fd},{fd}")
        peer = Peer(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        await peer.start()
        assert isinstance(await peer.rpc(m.Tstatfs(1, 0)), m.Rstatfs)
        await peer.stream.aclose()
        with trio.fail_after(5):
            while not server.shutting_down:
                await trio.sleep(0.01)
    # serve() returned by itself: inetd style.


async def test_graceful_shutdown_finishes_requests_in_flight(autojump_clock):
    fs = MemFilesystem(slow={"slow": 3.0})
    fs.add("slow", b"done")
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fs, "tcp://127.0.0.1:0", grace_period=10)
        peer = await tcp_peer(server.addresses[0])
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("slow",)))
        await peer.rpc(m.Tlopen(2, 1, 0))
        await peer.send(m.Tread(3, 1, 0, 100))
        await trio.sleep(1)
        server.shutdown()
        assert await peer.recv() == m.Rread(3, b"done")  # answered despite the shutdown
        assert await peer.at_eof()
    assert fs.open_files == 0


async def test_shutdown_deadline_cancels_what_is_left(autojump_clock):
    fs = MemFilesystem(slow={"slow": 1000.0})
    fs.add("slow", b"never")
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fs, "tcp://127.0.0.1:0", grace_period=5)
        peer = await tcp_peer(server.addresses[0])
        await peer.start()
        await peer.rpc(m.Twalk(1, 0, 1, ("slow",)))
        await peer.rpc(m.Tlopen(2, 1, 0))
        await peer.send(m.Tread(3, 1, 0, 100))
        await trio.sleep(1)
        server.shutdown()
    assert 5 <= trio.current_time() < 100
    assert fs.open_files == 0


async def test_client_that_stops_reading_does_not_block_others():
    fs = MemFilesystem()
    fs.add("big", b"x" * (1 << 20))
    from ninep.server.session import Limits
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fs, "tcp://127.0.0.1:0",
                             limits=Limits(max_msize=1 << 20, max_buffered=2 << 20))
        hog = await tcp_peer(server.addresses[0])
        await hog.start(msize=1 << 20)
        await hog.rpc(m.Twalk(1, 0, 1, ("big",)))
        await hog.rpc(m.Tlopen(2, 1, 0))
        # 64 MiB of replies asked for, none read.
        await hog.send(*(m.Tread(10 + i, 1, 0, 1 << 20) for i in range(64)))
        other = await tcp_peer(server.addresses[0])
        with trio.fail_after(5):
            await other.start()
            for tag in range(20):
                assert isinstance(await other.rpc(m.Tgetattr(tag, 0, 0x7FF)), m.Rgetattr)
        [hog_conn] = [c for c in server.connections if len(c.session.fids) == 2]
        # Bounded: the hog's queue stops growing near max_buffered (+ one batch).
        assert hog_conn.rules.buffered <= (2 << 20) + (2 << 20)
        nursery.cancel_scope.cancel()


async def test_fd_pipes_serve_one_client():
    to_server_r, to_server_w = os.pipe()
    to_client_r, to_client_w = os.pipe()
    async with trio.open_nursery() as nursery:
        await start(nursery, MemFilesystem(), f"fd://{to_server_r},{to_client_w}")
        peer = Peer(trio.StapledStream(trio.lowlevel.FdStream(to_server_w),
                                       trio.lowlevel.FdStream(to_client_r)))
        await peer.start()
        assert isinstance(await peer.rpc(m.Tstatfs(1, 0)), m.Rstatfs)
        await peer.stream.aclose()
    # serve() returned once the only client left.


async def test_vsock_listener_if_the_host_has_vsock():
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK")
    try:
        endpoints = await open_endpoints("vsock://-1:0")
    except ListenError as exc:
        pytest.skip(f"vsock unavailable here: {exc}")
    [endpoint] = endpoints
    assert endpoint.listener is not None
    await endpoint.listener.aclose()


async def test_current_connection_is_visible_to_backends_per_client(tmp_path):
    """Every request's backend call sees the ConnectionInfo of its own client."""
    seen = []

    class Recording(MemFilesystem):
        async def attach(self, aname, creds):
            seen.append(current_connection.get())
            return await super().attach(aname, creds)

    path = str(tmp_path / "9p.sock")
    async with trio.open_nursery() as nursery:
        server = await start(nursery, Recording(), ["tcp://127.0.0.1:0", f"unix://{path}"])
        tcp = await tcp_peer(server.addresses[0])
        unix = Peer(await trio.open_unix_socket(path))
        _open_peers.append(unix)
        await tcp.start()
        await unix.start()
        await tcp.rpc(m.Tattach(2, 5, 0xFFFFFFFF, "", "", 0xFFFFFFFF))
        nursery.cancel_scope.cancel()
    local_port = tcp.stream.socket.getsockname()[1]
    first, second, third = seen
    assert first.peer == f"127.0.0.1:{local_port}" and first.endpoint == server.addresses[0]
    assert second.peer.startswith(f"unix://{path}#") and second.endpoint == f"unix://{path}"
    assert third == first and second.number != first.number
    assert current_connection.get() is None  # not outside a request
