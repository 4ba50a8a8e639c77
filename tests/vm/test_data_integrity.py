"""What the guest writes, it reads back: in every cache mode, across close, dropped caches
and reopen, and on the host after power-off.

The guest side is tests/vm/fsx.c.  Under cache=loose, mmap and fscache the guest keeps
dirty pages after close; when its dentry is dropped and the file is looked up again,
the 6.1 client reuses its inode only if qid.version is unchanged.  A server whose
version followed mtime and size made it build a second inode with the server's older
size, and the guest lost sight of bytes it had written (issue 15).
"""

import re
import secrets
from pathlib import Path

import pytest
import trio

from ninep.vm.testing import KERNEL_REACHED_INIT, boot_script

pytestmark = pytest.mark.vm

CACHED_MODES = ("loose", "mmap", "fscache")


def fnv1a(data: bytes) -> str:
    value = 1469598103934665603
    for byte in data:
        value = ((value ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def _field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, line
    return match.group(1)


def _only_line(console: str, prefix: str) -> str:
    lines = [line.strip() for line in console.splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, (prefix, lines, console[-4000:])
    return lines[0]


def _report(what: str, console: str) -> str:
    lines = [line for line in console.splitlines() if "FSX:" in line or "REPRO" in line]
    return "\n".join([what, *lines, "--- console tail ---", console[-2500:]])


def _check_host_file(path: Path, line: str) -> None:
    data = path.read_bytes()
    assert len(data) == int(_field(line, "size")), line
    assert fnv1a(data) == _field(line, "fnv"), line


@pytest.mark.parametrize("cache", CACHED_MODES)
async def test_size_and_bytes_survive_close_drop_caches_and_reopen(busybox_root, cache):
    """Extend by write (fsynced), extend again by write and by mmap, close, drop the
    guest's caches, reopen: stat, fstat and read must show every byte."""
    script = "fsx repro /repro.bin; echo REPRO-EXIT:$?; sync"
    result = await boot_script(busybox_root, script, cache=cache)
    assert KERNEL_REACHED_INIT in result.console
    assert "REPRO-EXIT:0" in result.console, _report(f"cache {cache}", result.console)
    line = _only_line(result.console, "REPRO:ok")
    assert _field(line, "mapwrites") == "1"
    _check_host_file(busybox_root / "repro.bin", line)


# cache=none maps files read-only in 6.1, so it runs without mapped writes.
@pytest.mark.parametrize("cache", ("none", *CACHED_MODES))
async def test_random_operations_with_periodic_reopen_match_a_model(busybox_root, cache):
    """Random writes, reads, truncates, copy_file_range and mapped I/O, every byte checked
    against the exerciser's model, with close/drop-caches/reopen every 100 operations;
    then the host file against the model's size and hash.  A fresh seed every run."""
    seed = secrets.randbelow(2**31)
    ops, every = 1500, 100
    script = (f"fsx run /fsx.bin {seed} {ops} {every} 262144; echo FSX-EXIT:$?; sync")
    result = await boot_script(busybox_root, script, cache=cache, timeout=300)
    assert "FSX-EXIT:0" in result.console, _report(f"seed {seed} cache {cache}",
                                                   result.console)
    line = _only_line(result.console, "FSX:done")
    assert _field(line, "reopens") == str(ops // every)
    if cache != "none":
        assert int(_field(line, "mapwrites")) > 0, line
    _check_host_file(busybox_root / "fsx.bin", line)


# The host rewrites a file in place while the guest holds it, written back and clean,
# in its caches.  What the guest then reads, per cache mode, is what
# docs/host-export.md promises.
HOST_CHANGE = r"""
echo one > /shared.txt; sync; echo "BEFORE:$(cat /shared.txt)"
touch /guest-ready
i=0; while [ ! -e /host-done ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "AFTER:$(cat /shared.txt):$(stat -c %s /shared.txt)"
echo 3 > /proc/sys/vm/drop_caches
echo "DROPPED:$(cat /shared.txt):$(stat -c %s /shared.txt)"
"""
SEEN_AFTER_HOST_CHANGE = {
    # cache mode: (right after the change, what may be seen after the guest dropped its caches)
    "none": ("AFTER:two, longer:12", {"DROPPED:two, longer:12"}),
    "mmap": ("AFTER:two, longer:12", {"DROPPED:two, longer:12"}),
    "loose": ("AFTER:one:4", {"DROPPED:two, longer:12"}),
    # drop_caches cannot evict an inode whose pages fscache is still writing to its
    # cache; the kept inode keeps the old size over the server's new bytes (seen in CI).
    "fscache": ("AFTER:one:4", {"DROPPED:two, longer:12", "DROPPED:two,:4"}),
}


@pytest.mark.parametrize("cache", sorted(SEEN_AFTER_HOST_CHANGE))
async def test_what_the_guest_sees_when_the_host_changes_a_file(busybox_root, cache):
    async def change_on_the_host() -> None:
        while not (busybox_root / "guest-ready").exists():
            await trio.sleep(0.05)
        with open(busybox_root / "shared.txt", "r+b") as f:  # same inode, new size
            f.write(b"two, longer\n")
        (busybox_root / "host-done").touch()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(change_on_the_host)
        result = await boot_script(busybox_root, HOST_CHANGE, cache=cache)
        nursery.cancel_scope.cancel()
    lines = {line.strip() for line in result.console.splitlines()}
    assert "BEFORE:one" in lines, result.console[-3000:]
    after, dropped = SEEN_AFTER_HOST_CHANGE[cache]
    seen = sorted(line for line in lines if line.startswith(("AFTER:", "DROPPED:")))
    assert len(seen) == 2 and seen[0] == after and seen[1] in dropped, seen
