"""Fixtures for VM tests: a private busybox root per test (a copy of the cached tree)."""

import shutil
from pathlib import Path

import pytest

from ninep.vm.initramfs import compile_static
from ninep.vm.testing import fresh_busybox_rootfs

FSOPS_SOURCE = Path(__file__).with_name("fsops.c")


@pytest.fixture(scope="session")
def fsops_binary() -> Path:
    """tests/vm/fsops.c compiled static: flock, record locks and xattrs in the guest."""
    return compile_static(FSOPS_SOURCE)


@pytest.fixture
def busybox_root(tmp_path: Path, fsops_binary: Path) -> Path:
    root = fresh_busybox_rootfs(tmp_path / "root")
    shutil.copy2(fsops_binary, root / "usr/bin/fsops")
    return root
