#!/usr/bin/env python3
"""ninepd vs diod, interleaved and repeated, for numbers that survive a noisy machine.

    python benchmarks/interleaved.py [--seconds 2] [--repeat 3] [--modes getattr,walk]

``load.py`` runs each (mode, shape) once per server, one after the other; on a shared
2-core machine the load of other processes changes between the two runs, and a single
ratio can be off by 2x. Here every (mode, shape) runs ``--repeat`` times per server,
alternating which server goes first, and the table gives the median of each server's
numbers and the median of the per-pair ratios. Same servers, export content and
ninep-load options as load.py (whose helpers it uses).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (benchmarks/load.py)


def start_servers(scratch: Path) -> tuple[dict, list]:
    procs: list[subprocess.Popen] = []
    servers = {}
    root = scratch / "export-ninepd"
    load.make_export(root)
    port = load.free_port()
    p = subprocess.Popen([sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
                          "--export", str(root), "--listen", f"tcp://127.0.0.1:{port}",
                          "--log-level", "warning"], cwd=load.REPO)
    procs.append(p)
    load.wait_listening(port, p)
    servers["ninepd"] = (port, "", p)
    diod = shutil.which("diod") or "/usr/sbin/diod"
    root = scratch / "export-diod"
    load.make_export(root)
    port = load.free_port()
    p = subprocess.Popen([diod, "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(root)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    load.wait_listening(port, p)
    servers["diod"] = (port, str(root), p)
    return servers, procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=",".join(load.MODES))
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ninep-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        binary = load.build_load(scratch)
        servers, procs = start_servers(scratch)
        print("| mode | c x d | unit | ninepd (median) | diod (median) | ratio (median of pairs) | ratios |")
        print("|---|---|---|---:|---:|---:|---|")
        for mode in args.modes.split(","):
            unit = "MB/s" if mode in ("read", "write") else "ops/s"
            for conns, depth in load.SHAPES:
                ours, theirs, ratios = [], [], []
                for i in range(args.repeat):
                    order = ["ninepd", "diod"] if i % 2 == 0 else ["diod", "ninepd"]
                    got = {}
                    for name in order:
                        port, aname, _ = servers[name]
                        result = load.run_load(binary, port, aname, mode, conns, depth,
                                               args.seconds)
                        got[name] = load.metric(result, mode)
                    ours.append(got["ninepd"])
                    theirs.append(got["diod"])
                    if got["diod"]:
                        ratios.append(got["ninepd"] / got["diod"])
                shown = " ".join(f"{r:.2f}" for r in ratios)
                print(f"| {mode} | {conns}x{depth} | {unit} | {statistics.median(ours):,.0f} | "
                      f"{statistics.median(theirs):,.0f} | {statistics.median(ratios):.2f} | "
                      f"{shown} |", flush=True)
        rss = load.peak_rss_kib(servers["ninepd"][2].pid)
        print(f"\nninepd peak RSS (VmHWM) after all runs: {rss / 1024:.1f} MiB")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
