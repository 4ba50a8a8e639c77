#!/usr/bin/env python3
"""The server's per-request cost without the network or another process: one
``Connection`` over a socketpair, in this process, serving a host export, and a raw
client keeping ``--depth`` Tgetattr (or Twalk+Tclunk) in flight.

    python benchmarks/connection.py [--depth 8] [--requests 20000] [--mode getattr] [--runs 5]

Prints microseconds per request (wall and CPU; they agree, as everything runs on one
thread) for each run, then the minimum: on a shared machine the minimum of several
runs is the number to compare between two versions of the code.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import trio

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME
from ninep.server.connection import Connection, LockManager
from ninep.server.session import Export


async def measure(root: str, mode: str, depth: int, requests: int) -> float:
    ours, theirs = socket.socketpair()
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    fs = HostFilesystem(root)
    connection = Connection(trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
                            {"": Export(fs)}, LockManager())
    frames = FrameReader(1 << 20)

    async def exchange(payload: bytes, replies: int) -> None:
        await client.send_all(payload)
        while replies:
            if frames.next_frame() is None:
                frames.feed(await client.receive_some(1 << 20))
            else:
                replies -= 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await exchange(encode_bytes(m.Tversion(0xFFFF, 1 << 20, "9P2000.L")), 1)
        await exchange(encode_bytes(m.Tattach(1, 0, NOFID, "nobody", "", NONUNAME)), 1)
        await exchange(encode_bytes(m.Twalk(2, 0, 1, ("file",))), 1)
        if mode == "getattr":
            batch = [m.Tgetattr(10 + i, 1, 0x7FF) for i in range(depth)]
        else:  # walk: Twalk + Tclunk pairs, depth // 2 of each
            batch = [msg for i in range(max(depth // 2, 1)) for msg in (
                m.Twalk(10 + 2 * i, 0, 100 + i, ("file",)), m.Tclunk(11 + 2 * i, 100 + i))]
        payload = b"".join(encode_bytes(msg) for msg in batch)
        rounds = max(requests // len(batch), 1)
        start = time.perf_counter()
        for _ in range(rounds):
            await exchange(payload, len(batch))
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    await fs.aclose()
    return elapsed / (rounds * len(batch)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--mode", choices=["getattr", "walk"], default="getattr")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "file").write_bytes(b"x" * 4096)
        results = []
        for _ in range(args.runs):
            results.append(trio.run(measure, root, args.mode, args.depth, args.requests))
            print(f"{args.mode} depth {args.depth}: {results[-1]:.1f} us/request", flush=True)
        print(f"minimum of {args.runs}: {min(results):.1f} us/request")


if __name__ == "__main__":
    main()
