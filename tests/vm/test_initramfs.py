"""The initramfs builder without QEMU: cpio layout, module order, the compiled init."""

import stat
import subprocess
from pathlib import Path

import pytest

from ninep.vm import initramfs
from ninep.vm.initramfs import (S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, BuildError, CpioEntry,
                                ModuleTree, read_cpio, run_script_archive, write_cpio)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_cpio_round_trip_sorted_with_parents():
    archive = write_cpio([
        CpioEntry("usr/bin/tool", S_IFREG | 0o755, b"#!/bin/sh\n"),
        CpioEntry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("bin/sh", S_IFLNK | 0o777, b"busybox"),
    ])
    entries = read_cpio(archive)
    assert [e.path for e in entries] == ["bin", "bin/sh", "dev", "dev/console", "usr",
                                         "usr/bin", "usr/bin/tool"]
    by_path = {e.path: e for e in entries}
    assert by_path["usr/bin/tool"].data == b"#!/bin/sh\n"
    assert by_path["usr"].mode == S_IFDIR | 0o755
    assert by_path["dev/console"].rdev == (5, 1)
    assert by_path["bin/sh"].data == b"busybox"
    assert len(archive) % 4 == 0 and archive.endswith(b"\0") and b"TRAILER!!!" in archive


def test_cpio_is_deterministic_and_matches_gnu_cpio(tmp_path):
    entries = [CpioEntry("b/file", S_IFREG | 0o644, b"x" * 5), CpioEntry("a", S_IFREG | 0o600, b"")]
    archive = write_cpio(entries)
    assert archive == write_cpio(list(reversed(entries)))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=out, check=True)
    assert (out / "b/file").read_bytes() == b"xxxxx"
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o600


def test_concatenated_run_script_archive_is_read_after_the_image():
    image = write_cpio([CpioEntry("init", S_IFREG | 0o755, b"ELF")])
    combined = image + run_script_archive("echo hi; exit 3")
    paths = {e.path: e.data for e in read_cpio(combined)}
    assert paths == {"init": b"ELF", "ninep.run": b"echo hi; exit 3"}


def _fake_modules(root: Path) -> Path:
    root.mkdir()
    (root / "kernel").mkdir()
    for name in ("a", "b", "c", "d"):
        (root / f"kernel/{name}.ko").write_bytes(name.encode() * 3)
    import lzma
    (root / "kernel/x_y.ko.xz").write_bytes(lzma.compress(b"compressed module"))
    (root / "modules.dep").write_text(
        "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n"
        "kernel/d.ko:\nkernel/x_y.ko.xz: kernel/c.ko\n")
    (root / "modules.builtin").write_text("kernel/builtin_one.ko\n")
    (root / "modules.softdep").write_text("softdep a pre: crypto-d\n")
    (root / "modules.alias").write_text("alias crypto-d d\n")
    return root


def test_module_order_puts_dependencies_first_and_skips_builtins(tmp_path):
    tree = ModuleTree.load(_fake_modules(tmp_path / "mods"))
    assert tree.load_order(["a", "builtin-one", "x-y"]) == ["d", "c", "b", "a", "x_y"]
    assert tree.module_bytes("x_y") == b"compressed module"
    with pytest.raises(BuildError, match="nope"):
        tree.load_order(["nope"])


def test_real_kernel_modules_resolve_with_9p_after_9pnet():
    candidates = sorted(Path("/lib/modules").glob("*/modules.dep"))
    if not candidates:
        pytest.skip("no /lib/modules/*/modules.dep")
    root = candidates[-1].parent
    order = ModuleTree.load(root).load_order(initramfs.DEFAULT_MODULES)
    if "9p" in order:
        assert order.index("9pnet") < order.index("9p")
        assert order.index("netfs") < order.index("fscache") < order.index("9p")


def test_guest_init_is_static_small_and_cached(tmp_path):
    binary = initramfs.build_guest_init()
    assert binary.stat().st_size < 100 * 1024
    assert binary.read_bytes()[:4] == b"\x7fELF"
    headers = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True,
                             check=True).stdout
    assert "LOAD" in headers and "INTERP" not in headers  # static: no dynamic loader
    assert initramfs.build_guest_init() == binary  # same source, same cache entry


def test_image_holds_init_console_and_ordered_module_list(tmp_path):
    mods = _fake_modules(tmp_path / "mods")
    image = initramfs.build_initramfs(mods, tmp_path / "image.cpio", modules=("a",))
    by_path = {e.path: e for e in read_cpio(image.read_bytes())}
    assert by_path["init"].mode == S_IFREG | 0o755
    assert by_path["dev/console"].rdev == (5, 1)
    assert by_path["lib/modules/load.order"].data.decode().split() == [
        "/lib/modules/d.ko", "/lib/modules/c.ko", "/lib/modules/b.ko", "/lib/modules/a.ko"]
    assert by_path["lib/modules/b.ko"].data == b"bbb"
