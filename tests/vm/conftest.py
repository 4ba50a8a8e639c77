"""Fixtures for VM tests: a private busybox root per test (a copy of the cached tree)."""

import os
import shutil
import tempfile
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
def busybox_root(fsops_binary: Path):
    """Below a directory others can enter: diod refuses exports under 0700 tmp_path."""
    with tempfile.TemporaryDirectory(prefix="ninep-vm-root-") as parent:
        os.chmod(parent, 0o755)
        root = fresh_busybox_rootfs(Path(parent) / "root")
        shutil.copy2(fsops_binary, root / "usr/bin/fsops")
        yield root
