"""The guest init's kernel command-line parser, in C: fuzz/cmdline.c includes the same
ninep-init.c with -DNINEP_FUZZ (no main, die() a refusal) and is the libFuzzer entry;
clang builds it with libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer. The input is
/proc/cmdline's text; the driver parses it as main does, then parses ninep.src, ninep.ip
and the mount options as the transports would. A sanitizer report or a value that does
not point into the line is a crash. Needs clang and its compiler-rt (Debian: clang,
libclang-rt-14-dev); the binary is cached under $XDG_CACHE_HOME/ninep/fuzz by source hash.

`python -m fuzz.cmdline [libFuzzer args] [corpus dirs]` builds, then runs it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fuzz.driver import corpus_dir

DRIVER = Path(__file__).resolve().parent / "cmdline.c"
SOURCE = Path(__file__).resolve().parent.parent / "ninep" / "vm" / "guest-init" / "ninep-init.c"
CFLAGS = ["-g", "-O1", "-DNINEP_FUZZ", "-fsanitize=fuzzer,address,undefined",
          "-fno-sanitize-recover=all", "-Wall", "-Wno-unused-function"]


class NoCompiler(RuntimeError):
    pass


def compiler() -> str | None:
    for name in ("clang", "clang-16", "clang-15", "clang-14"):
        if shutil.which(name):
            return name
    return None


def build() -> Path:
    """The libFuzzer binary for the current source, compiled once per source text."""
    cc = compiler()
    if cc is None:
        raise NoCompiler("no clang: apt-get install clang libclang-rt-14-dev")
    text = SOURCE.read_bytes() + DRIVER.read_bytes()
    key = hashlib.sha256(text + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    binary = Path(base) / "ninep" / "fuzz" / f"ninep-init-cmdline-{key}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run([cc, *CFLAGS, "-o", str(partial), str(DRIVER)],
                                capture_output=True, text=True)
        if result.returncode:
            raise NoCompiler(f"{cc} failed:\n{result.stderr[-3000:]}")
        os.replace(partial, binary)
    return binary


def replay_corpus() -> int:
    """Every corpus file through the sanitized parser once; raises on any crash."""
    files = sorted(str(p) for p in Path(corpus_dir("cmdline")).iterdir())
    result = subprocess.run([str(build()), *files], capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"fuzz.cmdline crashed on its corpus:\n{result.stderr[-4000:]}")
    return len(files)


def main() -> None:
    binary = str(build())
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):
        args.append(corpus_dir("cmdline"))
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
