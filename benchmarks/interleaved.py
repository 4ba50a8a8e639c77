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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (benchmarks/load.py)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default=",".join(load.MODES))
    ap.add_argument("--workers", type=int, default=load.DEFAULT_WORKERS,
                    help=f"ninepd --workers (default: this machine's cores, {load.DEFAULT_WORKERS})")
    args = ap.parse_args(argv)
    print(f"ninepd --workers {args.workers}, msize 1 MiB; diod with its defaults, msize 64 KiB "
          f"(its cap)\n")
    with load.bench_setup(workers=args.workers) as (binary, servers):
        if "diod" not in servers:
            print("diod is not installed: nothing to interleave with", file=sys.stderr)
            return 2
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
        print(f"\nninepd peak RSS (VmHWM per process) after all runs: "
              f"{load.describe_peaks(servers['ninepd'][2].pid)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
