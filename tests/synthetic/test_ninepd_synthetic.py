"""``ninepd --synthetic module:attribute`` serves trees, factories and Filesystems."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import trio

from ninep.cli import load_synthetic
from ninep.client import connect
from ninep.fs.synthetic import SyntheticFilesystem

REPO = Path(__file__).resolve().parents[2]


def test_load_synthetic_accepts_a_tree_and_a_factory():
    assert isinstance(load_synthetic("examples.ctl:make_tree"), SyntheticFilesystem)
    tree_export = load_synthetic("examples.hello:tree")  # a Directory is its own export
    assert tree_export["hello"].data == b"hello, world\n"  # type: ignore[index]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_ninepd_serves_an_example_tree():
    port = free_port()
    command = [sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
               "--synthetic", "examples.hello:tree", "--listen", f"tcp://127.0.0.1:{port}"]
    environment = dict(os.environ, PYTHONPATH=str(REPO))  # where "examples" is found
    process = subprocess.Popen(command, cwd="/", env=environment, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(20):
            while True:
                try:
                    async with connect(f"tcp://127.0.0.1:{port}") as client:
                        assert await client.root.read_file("docs/README") == \
                            b"Served from a Python dict by ninep.\n"
                        break
                except OSError:
                    assert process.poll() is None, "ninepd exited"
                    await trio.sleep(0.1)
    finally:
        process.terminate()
        process.wait(10)
