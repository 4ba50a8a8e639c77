"""A wheel is complete: installed outside the checkout, `ninep initramfs` and `ninep vm`
work from it (they need the guest init's C source, shipped as package data).

Builds the wheel from this checkout (`pip wheel --no-deps`), installs it into a fresh
venv that sees the dependencies of the test venv through a .pth line (no network), and
runs the installed console scripts from a directory outside the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ninep.vm.rootfs import cached_busybox_rootfs, copy_tree

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding only the wheel (dependencies seen via a .pth)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work), str(REPO)], check=True, cwd=work)
    wheel, = work.glob("ninep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ninep/vm/guest-init/ninep-init.c" in names
    assert "ninep/exports/guest-root.yaml" in names
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # trio, construct, pyyaml from the test venv, but not the checkout (an editable
    # install's finder would otherwise shadow the wheel).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    return venv / "bin"


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CACHE_HOME"] = str(tmp / "cache")  # a first run: the init is compiled from the wheel
    return env


def test_installed_wheel_builds_initramfs_and_boots(installed: Path, tmp_path: Path):
    if shutil.which("qemu-system-x86_64") is None or not list(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("needs qemu-system-x86 and a kernel in /boot")
    env = _clean_env(tmp_path)
    where = subprocess.run([installed / "python", "-c", "import ninep; print(ninep.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert str(installed.parent) in where.stdout and str(REPO) not in where.stdout

    image = tmp_path / "initrd.cpio"
    built = subprocess.run([installed / "ninep", "initramfs", "-o", str(image)],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(image) and image.stat().st_size > 10_000

    root = copy_tree(cached_busybox_rootfs(), tmp_path / "root")
    boot = subprocess.run([installed / "ninep", "vm", str(root), "--accel", "tcg",
                           "--cmd", "echo from-the-wheel > /hello; cat /hello"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert boot.returncode == 0, boot.stderr[-3000:]
    assert "from-the-wheel" in boot.stdout
    assert (root / "hello").read_text() == "from-the-wheel\n"
