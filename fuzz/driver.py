"""The one main() every harness shares: atheris over one_input, the module's corpus seeded."""

from __future__ import annotations

import os
import sys
from typing import Callable

CORPUS_ROOT = os.path.join(os.path.dirname(__file__), "corpus")


def corpus_dir(name: str) -> str:
    return os.path.join(CORPUS_ROOT, name)


def replay(name: str, one_input: Callable[[bytes], None]) -> int:
    """Run every corpus file through one_input without atheris (the regression check)."""
    count = 0
    directory = corpus_dir(name)
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, entry), "rb") as f:
            one_input(f.read())
        count += 1
    return count


def instrument(packages: tuple[str, ...]) -> int:
    """Coverage instrumentation for the loaded functions of ``packages`` only.

    atheris.instrument_all() also instruments trio, construct, the stdlib...: 5,000-7,000
    functions, one to two minutes of start-up per harness on a busy 2-core machine, and
    coverage feedback from code that is not under test."""
    import gc
    import types

    import atheris

    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and \
                (obj.__module__ or "").split(".")[0] in packages:
            try:
                atheris.instrument_func(obj)
                count += 1
            except Exception as exc:  # noqa: BLE001 (atheris refuses a few code objects)
                sys.stderr.write(f"INFO: not instrumented: {obj.__qualname__}: {exc}\n")
    sys.stderr.write(f"INFO: instrumented {count} functions of {', '.join(packages)}\n")
    return count


def run(name: str, one_input: Callable[[bytes], None],
        packages: tuple[str, ...] = ("ninep", "fuzz")) -> None:
    """atheris.Fuzz with libFuzzer's arguments from argv; the corpus dir if none given."""
    import atheris  # the optional extra `fuzz`: only the fuzz run needs it

    instrument(packages)  # ninep is imported already: instrument what is loaded
    # libFuzzer runs argv[0] through sh for -merge=1 and -fork: make it a command (under
    # `python -m` it is the module's path, not executable, and merges silently did nothing).
    args = [f"{sys.executable} -m fuzz.{name}", *sys.argv[1:]]
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(corpus_dir(name))
    atheris.Setup(args, one_input)
    atheris.Fuzz()
