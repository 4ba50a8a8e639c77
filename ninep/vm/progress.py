"""Progress of long steps (debootstrap, compiling the init, building the initramfs) on
a terminal; nothing when stderr is a pipe or a file, where it would only be noise."""

from __future__ import annotations

import shutil
import subprocess
import sys


def on_terminal() -> bool:
    return sys.stderr.isatty()


def note(message: str) -> None:
    """One line saying what is about to take a while (terminal only)."""
    if on_terminal():
        print(f"ninep: {message} ...", file=sys.stderr, flush=True)


def run_showing_progress(argv: list[str], what: str) -> subprocess.CompletedProcess:
    """Run ``argv`` with its output captured (for the error message); on a terminal
    its latest output line is shown on one status line as it goes."""
    if not on_terminal():
        return subprocess.run(argv, capture_output=True, text=True)
    note(what)
    width = max(20, shutil.get_terminal_size().columns - 1)
    output: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as process:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            print(f"\r\x1b[K  {line.strip()}"[:width + 6], end="", file=sys.stderr, flush=True)
    print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    return subprocess.CompletedProcess(argv, process.returncode, "".join(output), "")
