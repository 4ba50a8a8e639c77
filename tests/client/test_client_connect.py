"""Opening clients: URLs, TCP and Unix sockets, the Tversion/Tattach handshake."""

import socket
from functools import partial

import pytest
import trio
import trio.testing

from client_fake_server import FakeServer, served
from ninep.client import VersionError, connect, open_client, parse_url
from ninep.protocol import messages as m
from ninep.protocol.constants import NONUNAME


@pytest.mark.parametrize("url, expected", [
    ("tcp://127.0.0.1:5640", ("tcp", ("127.0.0.1", 5640))),
    ("tcp://localhost", ("tcp", ("localhost", 5640))),
    ("tcp://[::1]:99", ("tcp", ("::1", 99))),
    ("tcp://[::1]", ("tcp", ("::1", 5640))),
    ("10.0.0.1:7", ("tcp", ("10.0.0.1", 7))),
    ("unix:///run/9p.sock", ("unix", "/run/9p.sock")),
    ("unix://relative.sock", ("unix", "relative.sock")),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://x:1", "unix://", "tcp://:5", "tcp://host:port"])
def test_parse_url_refuses(url):
    with pytest.raises(ValueError):
        parse_url(url)


async def test_attach_carries_aname_uname_and_n_uname():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream, msize=8192)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with open_client(client_stream, msize=65536, aname="/export", uname="alice",
                               n_uname=1000) as client:
            assert client.msize == 8192  # the server's smaller msize wins
            assert client.root is not None and client.root.is_dir
    version, attach = server.received[:2]
    assert (version.msize, version.version) == (65536, "9P2000.L")
    assert isinstance(attach, m.Tattach)
    assert (attach.aname, attach.uname, attach.n_uname) == ("/export", "alice", 1000)
    assert version.tag == 0xFFFF and attach.tag != 0xFFFF


async def test_without_attach_there_is_no_root():
    async with served(attach=False) as (server, client):
        assert client.root is None
        fid = client.fids.allocate()
        await client.attach(fid, aname="x")
        (attach,) = server.requests(m.Tattach)
        assert (attach.fid, attach.n_uname) == (fid, NONUNAME)


@pytest.mark.parametrize("version, msize", [("9P2000", 8192), ("9P2000.L", 1024)])
async def test_a_server_we_cannot_use_raises_version_error(version, msize):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream, msize=msize)
    server.version = version
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with pytest.raises(VersionError):
            async with open_client(client_stream):
                pytest.fail("the body must not run")
        with trio.fail_after(1):
            await server.closed_by_peer.wait()
    assert not server.requests(m.Tattach)


async def test_open_client_serves_any_stream():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream)
    server.tree = {"f": bytearray(b"from stream")}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with open_client(client_stream, msize=8192) as client:
            assert await client.root.read_file("f") == b"from stream"


async def serve_fake(stream):
    server = FakeServer(stream)
    server.tree = {"hello": bytearray(b"over a socket")}
    await server.serve()


async def test_connect_over_tcp_sets_nodelay():
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, serve_fake, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        async with connect(f"tcp://127.0.0.1:{port}", msize=8192) as client:
            assert await client.root.read_file("hello") == b"over a socket"
            nodelay = client._stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert nodelay != 0
        nursery.cancel_scope.cancel()


async def test_connect_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "9p.sock")
    listening = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listening.bind(path)
    listening.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_fake, [trio.SocketListener(listening)])
        async with connect(f"unix://{path}") as client:
            assert await client.root.read_file("hello") == b"over a socket"
        nursery.cancel_scope.cancel()


async def test_trace_sees_every_message_in_order():
    lines = []
    async with served(tree={"f": bytearray(b"x")}, trace=lines.append) as (server, client):
        await client.root.stat("f")
    assert [line.split("(")[0] for line in lines] == [
        "-> Tversion", "<- Rversion", "-> Tattach", "<- Rattach",
        "-> Twalk", "<- Rwalk", "-> Tgetattr", "<- Rgetattr", "-> Tclunk", "<- Rclunk",
        "-> Tclunk", "<- Rclunk",
    ]
    assert "wnames=('f',)" in lines[4]
