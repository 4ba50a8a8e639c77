#!/usr/bin/env python3
"""Copy-on-write exports against the plain host export, driven by ninep-load.

    python benchmarks/cow.py [--seconds 3] [--modes getattr,walk,...] [--json FILE]

Three ninepd servers (one worker each: a COW tree lives in one process) on loopback
TCP, all showing the same content (benchmarks/load.py's: a 64 MiB file, a 200-entry
directory, a scratch directory):

* ``host``     ninepd --export DIR (the content itself)
* ``cow-dir``  ninepd --export DIR --upper UPPER (the content as the base, empty upper)
* ``cow-tar``  ninepd --export DIR.tar --upper UPPER (the content as a tarball base)

Every mode runs at 1x1 and 4x4 (connections x depth); the table gives ops/s (MB/s
for read/write) and each COW variant's ratio to the host export. Writes and creates
copy up the scratch directory (and the file, for write) on their first operation,
then work in the upper. Also prints each server's peak RSS and the tarball's index
time as ninepd logged it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import (REPO, build_load, free_port, make_export, metric, peak_rss_kib,  # noqa: E402
                  run_load, wait_listening)

import load as _load  # noqa: E402

if not _load.LOAD_SRC.exists():  # a git worktree sits one level deeper than the checkout
    _load.LOAD_SRC = Path(os.environ.get("NINEP_LOAD_SRC", "/work/shared/tools/ninep-load"))

MODES = ["getattr", "walk", "readdir", "create", "read", "write", "mix"]
SHAPES = [(1, 1), (4, 4)]


def start(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
                          *argv, "--listen", f"tcp://127.0.0.1:{port}", "--log-level", "info",
                          "--workers", "1"], cwd=REPO, stderr=open(log, "w"))
    wait_listening(port, p, timeout=120)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", help="also write every raw result to this file")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="ninep-bench-cow-"))
    procs: dict[str, tuple[int, subprocess.Popen]] = {}
    try:
        load = build_load(scratch)
        plain, base = scratch / "plain", scratch / "base"
        make_export(plain)
        make_export(base)
        with tarfile.open(scratch / "base.tar", "w") as tar:
            tar.add(base, arcname=".")
        plans = {"host": ["--export", str(plain)],
                 "cow-dir": ["--export", str(base), "--upper", str(scratch / "upper-dir")],
                 "cow-tar": ["--export", str(scratch / "base.tar"), "--upper", str(scratch / "upper-tar")]}
        for name, server_argv in plans.items():
            port = free_port()
            procs[name] = (port, start(server_argv, port, scratch / f"{name}.log"))
        results: dict[tuple[str, str, int, int], dict] = {}
        for mode in modes:
            for conns, depth in SHAPES:
                for name, (port, _) in procs.items():
                    r = run_load(load, port, "", mode, conns, depth, args.seconds)
                    results[(name, mode, conns, depth)] = r
                    print(f"# {name:7} {mode:8} c={conns} d={depth}: {json.dumps(r)[:160]}",
                          file=sys.stderr, flush=True)
        print()
        print("| mode | c x d | unit | host | cow-dir | cow-tar | cow-dir/host | cow-tar/host |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for mode in modes:
            unit = "MB/s" if mode in ("read", "write") else "ops/s"
            for conns, depth in SHAPES:
                v = {n: metric(results[(n, mode, conns, depth)], mode) for n in procs}
                print(f"| {mode} | {conns}x{depth} | {unit} | {v['host']:.0f} | {v['cow-dir']:.0f} | "
                      f"{v['cow-tar']:.0f} | {v['cow-dir'] / v['host']:.2f} | {v['cow-tar'] / v['host']:.2f} |")
        print()
        for name, (_, p) in procs.items():
            print(f"peak RSS {name}: {peak_rss_kib(p.pid) / 1024:.1f} MiB")
        indexed = [line for line in (scratch / "cow-tar.log").read_text().splitlines() if "indexed" in line]
        print("\n".join(indexed))
        if args.json:
            Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}x{k[3]}": v for k, v in results.items()}, indent=1))
    finally:
        for _, p in procs.values():
            p.terminate()
        for _, p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
