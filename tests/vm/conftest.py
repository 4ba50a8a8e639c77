"""Fixtures for VM tests: a private busybox root per test (a copy of the cached tree)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ninep.vm.initramfs import compile_static
from ninep.vm.testing import fresh_busybox_rootfs

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def guest_tools() -> dict[str, Path]:
    """The guest-side helpers, compiled static: fsops (flock, record locks, xattrs) and
    fsx (the data-integrity exerciser)."""
    return {name: compile_static(HERE / f"{name}.c") for name in ("fsops", "fsx")}


@pytest.fixture
def busybox_root(guest_tools: dict[str, Path]):
    """Below a directory others can enter: diod refuses exports under 0700 tmp_path."""
    with tempfile.TemporaryDirectory(prefix="ninep-vm-root-") as parent:
        os.chmod(parent, 0o755)
        root = fresh_busybox_rootfs(Path(parent) / "root")
        for name, binary in guest_tools.items():
            shutil.copy2(binary, root / "usr/bin" / name)
        yield root
