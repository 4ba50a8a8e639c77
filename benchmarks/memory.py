#!/usr/bin/env python3
"""Resident memory of one ninepd process: started, with 1000 idle connections, and
after 16 x 8 read and write runs of ninep-load (issue 11: at most 100 MiB with 1000
idle connections, at most 64 MiB after the benchmark).

    python benchmarks/memory.py [--load /tmp/ninep-load/ninep-load] [--seconds 5]
                                [--idle 1000] [--msize 1M] [--tracemalloc 10]
                                [-- --limit max_buffered=2M ...]

Prints VmRSS (now) and VmHWM (peak) of the ninepd process after each phase. Idle
connections have done Tversion (msize 1 MiB, as the kernel asks) and Tattach, and
stay open while RSS is read. Without --load (the ninep-load binary: copy the shared
tools' ninep-load directory somewhere and `make`) the load phase is skipped.
``--tracemalloc N`` runs ninepd under tracemalloc and prints its N largest allocation
sites (live, and the traced peak) after each phase and when it stops: how docs/performance.md
found where the memory goes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20

# Run as ninepd's main: start tracemalloc first, print the top sites at exit.
_TRACED_MAIN = """
import atexit, signal, sys, tracemalloc
tracemalloc.start(8)
def report(*_):
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    print("tracemalloc: traced now %.1f MiB, peak %.1f MiB" % tuple(
        x / 2**20 for x in tracemalloc.get_traced_memory()), file=sys.stderr)
    for stat in snapshot.statistics("traceback")[:TOP]:
        print("%8.1f KiB %6d blocks" % (stat.size / 1024, stat.count), file=sys.stderr)
        for line in stat.traceback.format()[-6:]:
            print("    " + line, file=sys.stderr)
atexit.register(report)
signal.signal(signal.SIGUSR1, report)
from ninep.cli import main
sys.exit(main(sys.argv[1:]))
"""


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def show(phase: str, pid: int) -> None:
    s = status(pid)
    print(f"{phase:<44} VmRSS {s['VmRSS'] / MiB:7.1f} MiB   VmHWM {s['VmHWM'] / MiB:7.1f} MiB",
          flush=True)


def idle_connection(port: int, msize: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    frames = FrameReader(1 << 20)
    for msg in (m.Tversion(0xFFFF, msize, "9P2000.L"), m.Tattach(1, 0, NOFID, "nobody", "", NONUNAME)):
        sock.sendall(encode_bytes(msg))
        while (frame := frames.next_frame()) is None:
            frames.feed(sock.recv(65536))
        reply = decode(frame)
        assert not isinstance(reply, m.Rlerror), reply
    return sock


def run_load(load: str, port: int, mode: str, seconds: float, msize: str) -> str:
    argv = [load, "--tcp", f"127.0.0.1:{port}", "--mode", mode, "--msize", msize,
            "--conns", "16", "--depth", "8", "--seconds", str(seconds),
            "--uid", str(NONUNAME), "--uname", "nobody"]
    argv += ["--path", "big"] if mode == "read" else ["--file-size", "64M"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise SystemExit(f"ninep-load {mode} failed: {result.stdout} {result.stderr}")
    data = json.loads(result.stdout)
    return f"{data.get('MB_per_s', 0):.0f} MB/s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", help="ninep-load binary (skip the load phase without it)")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--msize", default="1M")
    p.add_argument("--tracemalloc", type=int, metavar="N", default=0,
                   help="run ninepd under tracemalloc; print its N largest sites at exit")
    p.add_argument("--tree", type=Path, default=REPO, help="source tree of the ninepd to run")
    p.add_argument("ninepd_args", nargs="*", help="more ninepd arguments (after --)")
    args = p.parse_args()
    msize = {"K": 1 << 10, "M": 1 << 20}.get(args.msize[-1:].upper(), 1) * int(args.msize.rstrip("KkMm"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "big").write_bytes(os.urandom(1 << 20) * 64)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        main_code = (_TRACED_MAIN.replace("TOP", str(args.tracemalloc)) if args.tracemalloc
                     else "from ninep.cli import main_entry; main_entry()")
        process = subprocess.Popen(
            [sys.executable, "-c", main_code, "--export", str(root), "--listen",
             f"tcp://127.0.0.1:{port}", "--log-level", "warning", "--workers", "1",
             *args.ninepd_args],
            cwd=args.tree, env=dict(os.environ, PYTHONPATH=str(args.tree)),
            stdin=subprocess.DEVNULL)
        try:
            for _ in range(1200):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("ninepd did not start")
            show("started", process.pid)
            socks = [idle_connection(port, msize) for _ in range(args.idle)]
            time.sleep(1)
            show(f"{args.idle} idle connections (msize {args.msize})", process.pid)
            if args.tracemalloc:
                process.send_signal(signal.SIGUSR1)
                time.sleep(5)
            for sock in socks:
                sock.close()
            time.sleep(2)
            show("... closed again", process.pid)
            if args.load:
                for mode in ("read", "write"):
                    rate = run_load(args.load, port, mode, args.seconds, args.msize)
                    show(f"after 16x8 {mode} ({rate})", process.pid)
                    if args.tracemalloc:
                        process.send_signal(signal.SIGUSR1)
                        time.sleep(5)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
