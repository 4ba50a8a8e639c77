#!/usr/bin/env python3
"""ninepd vs diod, side by side in one run, driven by ../shared/tools/ninep-load.

    python benchmarks/load.py [--seconds 3] [--modes read,write,...] [--json FILE]

Builds ninep-load in a scratch folder (shared/ may be read-only), makes one export
directory per server with the same content (a 64 MiB file, a 200-entry directory),
starts diod and ninepd on loopback TCP, runs every mode at 1x1 and 16x8
(connections x depth) against each, and prints a table of ops/s or MB/s with the
ratio ninepd/diod. diod 1.0.24 caps msize at 64 KiB: each server is compared at the
msize it negotiates (the JSON line of every run says which), and the table says so.
Also reports ninepd's peak RSS (VmHWM) after the 16-connection runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The C load generator's source: ../shared/tools/ninep-load beside the checkout, or
#: wherever NINEP_LOAD_SRC says.
LOAD_SRC = Path(os.environ.get("NINEP_LOAD_SRC") or REPO.parent / "shared" / "tools" / "ninep-load")
MODES = ["read", "write", "getattr", "walk", "readdir", "create", "mix"]
SHAPES = [(1, 1), (16, 8)]
BIG = 64 << 20
DEFAULT_WORKERS = os.cpu_count() or 1


def build_load(scratch: Path) -> Path:
    if not (LOAD_SRC / "Makefile").exists():
        raise SystemExit(f"benchmarks/load.py: no ninep-load source at {LOAD_SRC} "
                         "(it lives in ../shared/tools/ninep-load; set NINEP_LOAD_SRC=DIR)")
    dst = scratch / "ninep-load-src"
    shutil.copytree(LOAD_SRC, dst)
    subprocess.run(["make", "-s", "-C", str(dst), "ninep-load"], check=True)
    return dst / "ninep-load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def make_export(root: Path) -> None:
    root.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with open(root / "big", "wb") as f:
        for _ in range(BIG >> 20):
            f.write(chunk)
    (root / "small").write_bytes(b"x" * 4096)
    d = root / "dir"
    d.mkdir()
    for i in range(200):
        (d / f"entry-{i:04d}").write_bytes(b"")
    (root / "scratch").mkdir()


def peak_rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` plus that of its children (``--workers``): what it all cost."""
    return sum(peak_rss_per_process_kib(pid).values())


def peak_rss_per_process_kib(pid: int) -> dict[int, int]:
    """VmHWM of ``pid`` and of each of its children (``--workers``), by pid: the
    acceptance bound is per process."""
    peaks = {}
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[p] = int(line.split()[1])
        except OSError:
            pass
    return peaks


def describe_peaks(pid: int) -> str:
    """'supervisor 30.1, worker 41.2, worker 40.8 MiB (sum 112.1)'."""
    peaks = peak_rss_per_process_kib(pid)
    parts = [f"{'supervisor' if p == pid and len(peaks) > 1 else 'worker' if p != pid else 'ninepd'}"
             f" {kib / 1024:.1f}" for p, kib in peaks.items()]
    return f"{', '.join(parts)} MiB (sum {sum(peaks.values()) / 1024:.1f})"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def run_load(load: Path, port: int, aname: str, mode: str, conns: int, depth: int,
             seconds: float) -> dict:
    path = {"read": "big", "getattr": "big", "walk": "dir/entry-0001", "readdir": "dir",
            "mix": "small"}.get(mode)
    cmd = [str(load), "--tcp", f"127.0.0.1:{port}", "--aname", aname, "--mode", mode,
           "--conns", str(conns), "--depth", str(depth), "--seconds", str(seconds),
           "--warmup", "0.5", "--msize", "1M", "--dir", "scratch", "--file-size", str(BIG)]
    if path:
        cmd += ["--path", path]
    if mode == "read":
        cmd.remove("--file-size")
        cmd.remove(str(BIG))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def metric(result: dict, mode: str) -> float:
    if "error" in result:
        return float("nan")
    return result["MB_per_s"] if mode in ("read", "write") else result["ops_per_s"]


Servers = dict[str, tuple[int, str, subprocess.Popen]]  # name -> (port, aname, process)


def start_server(name: str, argv: list[str], port: int, aname: str,
                 procs: list[subprocess.Popen], servers: Servers, **popen) -> None:
    p = subprocess.Popen(argv, **popen)
    procs.append(p)
    wait_listening(port, p)
    servers[name] = (port, aname, p)


def stop_servers(procs: list[subprocess.Popen], scratch: Path) -> None:
    """Stop every server (kill what does not go within 10 s), remove the scratch folder."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def bench_setup(with_diod: bool = True, workers: int = 1) -> Iterator[tuple[Path, Servers]]:
    """ninep-load built in a scratch folder, and ninepd (``--workers``) and diod (if
    installed and wanted) serving identical exports on loopback TCP; all stopped and
    removed after."""
    scratch = Path(tempfile.mkdtemp(prefix="ninep-bench-"))
    procs: list[subprocess.Popen] = []
    servers: Servers = {}
    try:
        binary = build_load(scratch)
        root, port = scratch / "export-ninepd", free_port()
        make_export(root)
        start_server("ninepd", [sys.executable, "-c", "from ninep.cli import main_entry; main_entry()",
                          "--export", str(root), "--listen", f"tcp://127.0.0.1:{port}",
                          "--log-level", "warning", "--workers", str(workers)],
               port, "", procs, servers, cwd=REPO)
        diod = shutil.which("diod") or "/usr/sbin/diod"
        if with_diod and os.path.exists(diod):
            root, port = scratch / "export-diod", free_port()
            make_export(root)
            start_server("diod", [diod, "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(root)],
                   port, str(root), procs, servers,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield binary, servers
    finally:
        stop_servers(procs, scratch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", help="also write every raw result to this file")
    ap.add_argument("--no-diod", action="store_true")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help=f"ninepd --workers (default: this machine's cores, {DEFAULT_WORKERS})")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    print(f"# ninepd --workers {args.workers}; diod with its defaults", file=sys.stderr)

    with bench_setup(with_diod=not args.no_diod, workers=args.workers) as (load, servers):
        results: dict[tuple[str, str, int, int], dict] = {}
        for mode in modes:
            for conns, depth in SHAPES:
                for name, (port, aname, _) in servers.items():
                    r = run_load(load, port, aname, mode, conns, depth, args.seconds)
                    results[(name, mode, conns, depth)] = r
                    print(f"# {name:6} {mode:8} c={conns:<2} d={depth}: "
                          f"{json.dumps(r)[:200]}", file=sys.stderr, flush=True)
        rss = peak_rss_kib(servers["ninepd"][2].pid)
        peaks = describe_peaks(servers["ninepd"][2].pid)

        print()
        print("| mode | c x d | unit | ninepd | diod | ninepd/diod | msize ninepd/diod |")
        print("|---|---|---|---:|---:|---:|---|")
        for mode in modes:
            unit = "MB/s" if mode in ("read", "write") else "ops/s"
            for conns, depth in SHAPES:
                a = results.get(("ninepd", mode, conns, depth), {})
                b = results.get(("diod", mode, conns, depth), {})
                va, vb = metric(a, mode), metric(b, mode) if b else float("nan")
                ratio = va / vb if vb and vb == vb and va == va else float("nan")
                ms = f"{a.get('msize', '-')}/{b.get('msize', '-')}"
                print(f"| {mode} | {conns}x{depth} | {unit} | {va:,.1f} | {vb:,.1f} | {ratio:.2f} | {ms} |")
        print(f"\nninepd --workers {args.workers}; peak RSS (VmHWM per process) after "
              f"all runs: {peaks}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"results": [{"server": k[0], "mode": k[1], "conns": k[2], "depth": k[3], **v}
                             for k, v in results.items()], "ninepd_peak_rss_kib": rss}, indent=1))
        errors = [k for k, v in results.items() if "error" in v and k[0] == "ninepd"]
        return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
