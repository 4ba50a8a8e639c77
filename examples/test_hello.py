"""examples/hello.py, served and read with the project's client; also run as a program."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import trio

from ninep.client import connect
from ninep.server import serve

import hello

HERE = Path(__file__).resolve().parent


async def test_hello_tree_through_the_client():
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, hello.tree, "tcp://127.0.0.1:0")
        async with connect(server.addresses[0]) as client:
            assert await client.root.read_file("hello") == b"hello, world\n"
            assert await client.root.read_file("docs/README") == b"Served from a Python dict by ninep.\n"
            assert await client.root.readlink("greeting") == "hello"
            names = sorted(e.name for e in await client.root.listdir(""))
            assert names == [".", "..", "docs", "greeting", "hello"]
        server.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_hello_runs_as_a_program():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    process = subprocess.Popen([sys.executable, str(HERE / "hello.py"), "--listen",
                                f"tcp://127.0.0.1:{port}"], env=env)
    try:
        with trio.fail_after(20):
            while True:
                try:
                    async with connect(f"tcp://127.0.0.1:{port}") as client:
                        assert await client.root.read_file("hello") == b"hello, world\n"
                        break
                except OSError:
                    await trio.sleep(0.1)
    finally:
        process.terminate()
        process.wait(10)
