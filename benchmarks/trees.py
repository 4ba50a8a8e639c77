#!/usr/bin/env python3
"""ninepd from several source trees and diod, interleaved, with the server's CPU per request.

    git worktree add /tmp/before <commit>       # or: git archive <commit> ninep | tar -x -C /tmp/before
    python benchmarks/trees.py --trees before=/tmp/before,after=. --modes getattr,walk \\
        --shapes 1x1,16x8 --repeat 5 [--workers 1] [--no-diod]

Every (mode, shape) runs ``--repeat`` rounds; each round runs every server once, in
an order that rotates and reverses from round to round. Printed per row: the median
of each server, the median of the per-round ratios to diod, and the server's CPU time
per request (utime + stime of its process from /proc over the run, divided by the
requests served; with ``--workers`` above 1 only the supervisor is counted, so use 1
for it). On a machine shared with other work, throughput moves from run to run by
2-3x; the CPU per request does not depend on who else got the CPU, and is the number
to compare changes by. Same export content and ninep-load options as load.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (benchmarks/load.py)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=f"this={load.REPO}", help="NAME=PATH,... (PATH holds ninep/)")
    ap.add_argument("--modes", default="getattr")
    ap.add_argument("--shapes", default="1x1")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-diod", action="store_true")
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ninep-trees-"))
    procs: list[subprocess.Popen] = []
    servers: dict[str, tuple[int, str, subprocess.Popen]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    warmup = 0.5  # load.run_load's
    try:
        binary = load.build_load(scratch)
        for spec in args.trees.split(","):
            name, tree = spec.split("=", 1)
            root, port = scratch / f"export-{name}", load.free_port()
            load.make_export(root)
            load.start_server(
                name, [sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
                       "--export", str(root), "--listen", f"tcp://127.0.0.1:{port}",
                       "--log-level", "warning", "--workers", str(args.workers)],
                port, "", procs, servers,
                cwd=tree, env=dict(os.environ, PYTHONPATH=str(Path(tree).resolve())))
        diod = shutil.which("diod") or "/usr/sbin/diod"
        if not args.no_diod and os.path.exists(diod):
            root, port = scratch / "export-diod", load.free_port()
            load.make_export(root)
            load.start_server("diod", [diod, "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(root)],
                              port, str(root), procs, servers,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        names = list(servers)
        print("load average:", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
        for mode in args.modes.split(","):
            for shape in args.shapes.split(","):
                conns, depth = map(int, shape.split("x"))
                got: dict[str, list[float]] = {n: [] for n in names}
                cpu: dict[str, list[float]] = {n: [] for n in names}
                for i in range(args.repeat):
                    order = names[i % len(names):] + names[:i % len(names)]
                    for name in (order if i % 2 == 0 else order[::-1]):
                        port, aname, proc = servers[name]
                        before = cpu_ticks(proc.pid)
                        result = load.run_load(binary, port, aname, mode, conns, depth,
                                               args.seconds)
                        spent = (cpu_ticks(proc.pid) - before) / tick
                        got[name].append(load.metric(result, mode))
                        if result.get("ops"):
                            served = result["ops"] * (args.seconds + warmup) / args.seconds
                            cpu[name].append(spent / served * 1e6)
                line = f"{mode} {shape}:"
                for name in names:
                    line += f" {name} {statistics.median(got[name]):,.0f}"
                    if "diod" in got and name != "diod":
                        ratios = [a / b for a, b in zip(got[name], got["diod"]) if b]
                        line += f" ({statistics.median(ratios):.2f}x diod)"
                    if cpu[name]:
                        line += f" [{statistics.median(cpu[name]):.1f} us CPU/op]"
                print(line, flush=True)
                print("  rounds:", {n: [round(x) for x in v] for n, v in got.items()}, flush=True)
        for name in names:
            if name != "diod":
                rss = load.peak_rss_kib(servers[name][2].pid) / 1024
                print(f"{name}: peak RSS {rss:.1f} MiB")
        return 0
    finally:
        load.stop_servers(procs, scratch)


if __name__ == "__main__":
    sys.exit(main())
