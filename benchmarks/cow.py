#!/usr/bin/env python3
"""Copy-on-write exports against the plain host export, driven by ninep-load.

    python benchmarks/cow.py [--seconds 3] [--rounds 3] [--modes getattr,walk,...] [--json FILE]

Three ninepd servers (one worker each: a COW tree lives in one process) on loopback
TCP, all showing the same content (benchmarks/load.py's: a 64 MiB file, a 200-entry
directory, a scratch directory):

* ``host``     ninepd --export DIR (the content itself)
* ``cow-dir``  ninepd --export DIR --upper UPPER (the content as the base, empty upper)
* ``cow-tar``  ninepd --export DIR.tar --upper UPPER (the content as a tarball base)

Every mode runs at 1x1 and 4x4 (connections x depth), ``--rounds`` times, the three
servers interleaved (each round starts with a different one) so that load from
other jobs on the machine falls on all of them. The table gives the median ops/s
(MB/s for read/write), each COW variant's ratio of medians to the host export, and
the same ratios for the best run of each; then the server's CPU time per request
(utime + stime of ninepd from /proc over the measured window, divided by the RPCs
ninep-load counted), which moves much less than the rates when other jobs compete
for the cores. Reads from the tarball base against the directory base are the
cow-tar/cow-dir column of the read rows. Writes and creates
copy up the scratch directory (and the file, for write) on their first operation,
then work in the upper. Also prints each server's peak RSS and the tarball's index
time as ninepd logged it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import (BIG, REPO, build_load, free_port, make_export, metric,  # noqa: E402
                  peak_rss_kib, stop_servers, wait_listening)

import load as _load  # noqa: E402

if not _load.LOAD_SRC.exists():  # a git worktree sits one level deeper than the checkout
    _load.LOAD_SRC = Path(os.environ.get("NINEP_LOAD_SRC", "/work/shared/tools/ninep-load"))

MODES = ["getattr", "walk", "readdir", "create", "read", "write", "mix"]
SHAPES = [(1, 1), (4, 4)]
WARMUP = 0.5
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def run_load(load: Path, port: int, pid: int, mode: str, conns: int, depth: int,
             seconds: float) -> dict:
    """benchmarks/load.py's run, plus the server's CPU time over the measured window
    (sampled when the warmup ends and when ninep-load exits)."""
    path = {"read": "big", "getattr": "big", "walk": "dir/entry-0001", "readdir": "dir",
            "mix": "small"}.get(mode)
    cmd = [str(load), "--tcp", f"127.0.0.1:{port}", "--mode", mode, "--conns", str(conns),
           "--depth", str(depth), "--seconds", str(seconds), "--warmup", str(WARMUP),
           "--msize", "1M", "--dir", "scratch"]
    if mode != "read":
        cmd += ["--file-size", str(BIG)]
    if path:
        cmd += ["--path", path]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(WARMUP)
    cpu0 = cpu_seconds(pid)
    out, err = proc.communicate(timeout=seconds + 60)
    cpu = cpu_seconds(pid) - cpu0
    if proc.returncode != 0:
        return {"error": (err or out).strip()[-300:]}
    result = json.loads(out.strip().splitlines()[-1])
    result["server_cpu_s"] = cpu
    return result


def cpu_us_per_rpc(result: dict) -> float:
    if "error" in result or not result.get("rpcs"):
        return float("nan")
    return result["server_cpu_s"] * 1e6 / result["rpcs"]


def start(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
                          *argv, "--listen", f"tcp://127.0.0.1:{port}", "--log-level", "info",
                          "--workers", "1"], cwd=REPO, stderr=open(log, "w"))
    wait_listening(port, p, timeout=120)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs of every cell (median)")
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
        # Written in 1 MiB writes, as make_export writes the directory's files: the
        # page cache keeps a file in folios as large as the writes that filled it, and
        # tarfile's own 16 KiB writes make every later read of it from the cache
        # 10-40% dearer (docs/cow.md), which a tarball read from disk does not pay.
        with open(scratch / "base.tar", "wb", buffering=1 << 20) as out, \
                tarfile.open(fileobj=out, mode="w") as tar:
            tar.add(base, arcname=".")
        plans = {"host": ["--export", str(plain)],
                 "cow-dir": ["--export", str(base), "--upper", str(scratch / "upper-dir")],
                 "cow-tar": ["--export", str(scratch / "base.tar"), "--upper", str(scratch / "upper-tar")]}
        for name, server_argv in plans.items():
            port = free_port()
            procs[name] = (port, start(server_argv, port, scratch / f"{name}.log"))
        names = list(procs)
        results: dict[tuple[str, str, int, int], list[dict]] = {}
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for mode in modes:
                for conns, depth in SHAPES:
                    for name in order:
                        port, p = procs[name]
                        r = run_load(load, port, p.pid, mode, conns, depth, args.seconds)
                        results.setdefault((name, mode, conns, depth), []).append(r)
                        print(f"# round {rnd + 1} {name:7} {mode:8} c={conns} d={depth}: "
                              f"{metric(r, mode):.0f}, {cpu_us_per_rpc(r):.1f} us cpu/rpc"
                              + (f" {r['error']}" if "error" in r else ""),
                              file=sys.stderr, flush=True)

        def median(values: list[float]) -> float:
            values = [v for v in values if v == v]
            return statistics.median(values) if values else float("nan")

        def best(values: list[float], pick=max) -> float:
            values = [v for v in values if v == v]
            return pick(values) if values else float("nan")

        print(f"\nMedians of {args.rounds} interleaved runs of {args.seconds:g} s, ratios of the medians; "
              "then the same for the best run of each (the one other jobs disturbed least).\n")
        print("| mode | c x d | unit | host | cow-dir | cow-tar | cow-dir/host | cow-tar/host | cow-tar/cow-dir "
              "| best: cow-dir/host | cow-tar/host | cow-tar/cow-dir |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in modes:
            unit = "MB/s" if mode in ("read", "write") else "ops/s"
            for conns, depth in SHAPES:
                runs = {n: [metric(r, mode) for r in results[(n, mode, conns, depth)]] for n in names}
                v = {n: median(runs[n]) for n in names}
                b = {n: best(runs[n]) for n in names}
                print(f"| {mode} | {conns}x{depth} | {unit} | {v['host']:.0f} | {v['cow-dir']:.0f} | "
                      f"{v['cow-tar']:.0f} | {v['cow-dir'] / v['host']:.2f} | {v['cow-tar'] / v['host']:.2f} | "
                      f"{v['cow-tar'] / v['cow-dir']:.2f} | {b['cow-dir'] / b['host']:.2f} | "
                      f"{b['cow-tar'] / b['host']:.2f} | {b['cow-tar'] / b['cow-dir']:.2f} |")
        print("\nServer CPU time per RPC (µs; ninepd's utime + stime / RPCs), median and least:\n")
        print("| mode | c x d | host | cow-dir | cow-tar | host/cow-dir | host/cow-tar "
              "| least: host | cow-dir | cow-tar |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in modes:
            for conns, depth in SHAPES:
                runs = {n: [cpu_us_per_rpc(r) for r in results[(n, mode, conns, depth)]] for n in names}
                c = {n: median(runs[n]) for n in names}
                low = {n: best(runs[n], min) for n in names}
                print(f"| {mode} | {conns}x{depth} | {c['host']:.1f} | {c['cow-dir']:.1f} | {c['cow-tar']:.1f} | "
                      f"{c['host'] / c['cow-dir']:.2f} | {c['host'] / c['cow-tar']:.2f} | "
                      f"{low['host']:.1f} | {low['cow-dir']:.1f} | {low['cow-tar']:.1f} |")
        print()
        for name, (_, p) in procs.items():
            print(f"peak RSS {name}: {peak_rss_kib(p.pid) / 1024:.1f} MiB")
        indexed = [line for line in (scratch / "cow-tar.log").read_text().splitlines() if "indexed" in line]
        print("\n".join(indexed))
        if args.json:
            Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}x{k[3]}": v for k, v in results.items()}, indent=1))
    finally:
        stop_servers([p for _, p in procs.values()], scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
