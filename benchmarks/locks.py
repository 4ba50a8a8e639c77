#!/usr/bin/env python3
"""What a POSIX lock costs when a client holds many on one file, and whether that
slows the other clients.

    python benchmarks/locks.py [--levels 0,5000,10000,20000] [--probes 300] [--no-wire]
                               [--workers N]

Levels up to ~25,000 fit the default per-connection max_locks (32768) with the
locks the last part adds.

Two parts:

* **table**: ``LockTable`` in this process. Client A holds N disjoint write ranges on
  one file (every other byte pair); then the median cost, in microseconds, of: A taking
  one more range (and giving it back), B refused in the middle of A's ranges, B's
  Tgetlock there, B taking a free range past them (and giving it back).
* **wire**: ``ninepd`` as a subprocess on loopback TCP, raw blocking-socket clients.
  A piles up N ranges (pipelined Tlocks); at each level the median round trip of B's
  Tgetattr (the baseline), A's Tlock, B's refused Tlock and B's Tgetlock. Then B's
  Tgetattr round trips (median, 99th percentile): with the server otherwise idle,
  beside a third client doing getattrs one at a time, and beside one adding locks one
  at a time to the file that already holds the most. The event loop is shared, so a
  lock table slower than a getattr would show in every other client's latency.

The table this replaced walked every lock of the file per call: 7.9 ms per Tlock at
2000 locks (issue 11). docs/performance.md has the numbers of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME, LockStatus, LockType
from ninep.server.locks import LockOwner, LockTable

RD, WR, UN = LockType.RDLCK, LockType.WRLCK, LockType.UNLCK
REPO = Path(__file__).resolve().parents[1]


# --- the table -----------------------------------------------------------------------------
def median_us(call, probes: int) -> float:
    times = []
    for _ in range(probes):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def table_costs(level: int, probes: int) -> dict[str, float]:
    a, b = LockOwner("conn-a", "a", 1), LockOwner("conn-b", "b", 2)
    table = LockTable()
    for i in range(level):
        table.set("f", a, WR, 4 * i, 2)
    middle, past = 2 * level, 4 * level + 100

    def a_more():
        table.set("f", a, WR, past, 1)
        table.set("f", a, UN, past, 1)

    def b_free():
        table.set("f", b, WR, past + 10, 1)
        table.set("f", b, UN, past + 10, 1)

    refused = lambda: table.set("f", b, RD, middle, 1)  # noqa: E731
    return {
        "A lock+unlock": median_us(a_more, probes) / 2,
        "B refused": median_us(refused, probes) if level else float("nan"),
        "B getlock": median_us(lambda: table.conflict("f", b, WR, middle, 0), probes),
        "B lock+unlock": median_us(b_free, probes) / 2,
    }


# --- over the wire -------------------------------------------------------------------------
class RawClient:
    """Blocking 9P over TCP: nothing in the client between the request and the reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameReader(1 << 20)
        self.call(m.Tversion(0xFFFF, 65536, "9P2000.L"))
        self.call(m.Tattach(1, 0, NOFID, "nobody", "", NONUNAME))
        self.call(m.Twalk(1, 0, 1, ("f",)))
        reply = self.call(m.Tlopen(1, 1, 2))
        assert isinstance(reply, m.Rlopen), reply

    def send(self, msgs) -> None:
        self.sock.sendall(b"".join(encode_bytes(msg) for msg in msgs))

    def recv(self) -> m.Message:
        while (frame := self.frames.next_frame()) is None:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("ninepd closed the connection")
            self.frames.feed(data)
        return decode(frame)

    def call(self, msg: m.Message) -> m.Message:
        self.send([msg])
        return self.recv()

    def pile_up(self, first: int, count: int, proc_id: int = 1, batch: int = 200) -> None:
        """Take ``count`` more disjoint write ranges, ``batch`` Tlocks in flight."""
        for at in range(first, first + count, batch):
            n = min(batch, first + count - at)
            self.send([m.Tlock(i % 60000, 1, WR, 0, 4 * (at + i), 2, proc_id, "a")
                       for i in range(n)])
            for _ in range(n):
                reply = self.recv()
                assert reply == m.Rlock(reply.tag, LockStatus.SUCCESS), reply

    def pipelined_us(self, msgs, count: int, depth: int = 64) -> float:
        """Server time per request with ``depth`` in flight: the round trip shared."""
        start = time.perf_counter()
        for first in range(0, count, depth):
            n = min(depth, count - first)
            self.send([dataclasses.replace(msgs[(first + i) % len(msgs)], tag=i) for i in range(n)])
            for _ in range(n):
                self.recv()
        return (time.perf_counter() - start) / count * 1e6

    def round_trips_us(self, msgs, probes: int) -> list[float]:
        times = []
        for i in range(probes):
            start = time.perf_counter()
            self.call(msgs[i % len(msgs)])
            times.append((time.perf_counter() - start) * 1e6)
        return times


def _other_client(port: int, what: str, first: int, count: int) -> None:
    """One request at a time, as a guest process would: locks, or as many getattrs."""
    client = RawClient(port)
    if what == "locks":
        client.pile_up(first, count, proc_id=3, batch=1)
    else:
        client.round_trips_us([m.Tgetattr(5, 1, 0x7FF)], count)


def start_ninepd(root: Path, tree: Path, workers: int = 1) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(tree))
    process = subprocess.Popen(
        [sys.executable, "-m", "ninep.cli", "--export", str(root), "--listen",
         f"tcp://127.0.0.1:{port}", "--log-level", "warning", "--workers", str(workers)],
        cwd=tree, env=env, stdin=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("ninepd did not start")


def wire(levels: list[int], probes: int, tree: Path, workers: int = 1) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "f").write_bytes(b"x")
        process, port = start_ninepd(Path(tmp), tree, workers)
        try:
            a, b = RawClient(port), RawClient(port)
            getattr_ = [m.Tgetattr(7, 1, 0x7FF)]
            held = 0
            print(f"{'locks held':>10} {'B getattr':>10} {'A Tlock':>10} {'B refused':>10} "
                  f"{'B getlock':>10}   (median round trip, us) | {'getattr':>8} {'Tlock':>8}"
                  f"   (us per request, 64 in flight)")
            for level in levels:
                a.pile_up(held, level - held)
                held = level
                past = 4 * level + 100
                a_lock = [m.Tlock(8, 1, WR, 0, past, 1, 1, "a"), m.Tlock(8, 1, UN, 0, past, 1, 1, "a")]
                row = [statistics.median(b.round_trips_us(getattr_, probes)),
                       statistics.median(a.round_trips_us(a_lock, probes)),
                       # Only refused when A holds something there (else B would lock).
                       statistics.median(b.round_trips_us(
                           [m.Tlock(9, 1, RD, 0, 2 * level, 1, 2, "b")], probes)) if level else None,
                       statistics.median(b.round_trips_us(
                           [m.Tgetlock(9, 1, WR, 2 * level, 0, 2, "b")], probes))]
                # A's Tlocks alternate lock/unlock of one range past its others: the
                # count stays put, and every one searches the file's 'level' ranges.
                piped = [b.pipelined_us(getattr_, 2000), a.pipelined_us(a_lock, 2000)]
                print(f"{level:>10} " + " ".join("         -" if x is None else f"{x:>10.1f}"
                                                 for x in row)
                      + "                          | " + " ".join(f"{x:>8.1f}" for x in piped))
            # B's latency beside another client doing the same number of requests,
            # one at a time: plain getattrs, then Tlocks that each add a range to the
            # ones A holds. A lock table that costs more than a getattr shows here.
            extra = 5000
            samples = {"idle": b.round_trips_us(getattr_, 2000)}
            for what, label in (("getattrs", f"beside {extra} getattrs"),
                                ("locks", f"beside {extra} Tlocks ({held} -> {held + extra} held)")):
                other = multiprocessing.Process(target=_other_client,
                                                args=(port, what, held + 1000, extra))
                other.start()
                busy = []
                while other.is_alive():
                    busy += b.round_trips_us(getattr_, 20)
                other.join()
                samples[label] = busy
            for label, sample in samples.items():
                sample = sorted(sample)
                print(f"B getattr {label}: median {statistics.median(sample):.1f} us, "
                      f"p99 {sample[int(len(sample) * 0.99)]:.1f} us ({len(sample)} round trips)")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", default="0,5000,10000,20000")
    p.add_argument("--probes", type=int, default=300)
    p.add_argument("--no-wire", action="store_true", help="only the in-process table")
    p.add_argument("--tree", type=Path, default=REPO, help="source tree of the ninepd to run")
    p.add_argument("--workers", type=int, default=1,
                   help="ninepd --workers: with 2, A and B are served by two processes and "
                        "every lock call is a round trip to the supervisor's table")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print("table (in process), median us per call:")
    print(f"{'locks held':>10} " + " ".join(f"{k:>14}" for k in table_costs(0, 1)))
    for level in levels:
        costs = table_costs(level, args.probes)
        print(f"{level:>10} " + " ".join(f"{v:>14.2f}" for v in costs.values()))
    if not args.no_wire:
        print("\nwire (ninepd on loopback TCP):")
        wire(levels, args.probes, args.tree, args.workers)


if __name__ == "__main__":
    main()
