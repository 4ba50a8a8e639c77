"""Choosing QEMU's accelerator, and finding a kernel to boot.

/dev/kvm can open and still not run guests (nested setups where the guest hangs or
aborts), so `auto` boots a 512-byte boot sector under KVM that writes to QEMU's
isa-debug-exit port: only a real exit code proves KVM works.  The answer is cached
per QEMU binary and host kernel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ninep.vm.initramfs import cache_dir

QEMU = "qemu-system-x86_64"
#: mov al,0x31 ; out 0xf4,al ; hlt ; jmp $-1  -- QEMU exits with (0x31 << 1) | 1
PROBE_BOOT_SECTOR = bytes.fromhex("b031e6f4f4ebfd").ljust(510, b"\0") + b"\x55\xaa"
PROBE_EXIT_STATUS = (0x31 << 1) | 1
PROBE_TIMEOUT_S = 10.0


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise FileNotFoundError(f"{QEMU} not found: install qemu-system-x86")
    return path


def probe_kvm(qemu: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does a guest really run under KVM here?  (Seconds at most; not cached.)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="ninep-kvm-probe-") as tmp:
        disk = Path(tmp) / "boot.img"
        disk.write_bytes(PROBE_BOOT_SECTOR)
        argv = [qemu, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
                "-m", "16", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-drive", f"file={disk},format=raw,if=ide"]
        try:
            result = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == PROBE_EXIT_STATUS


def kvm_works(qemu: str | None = None) -> bool:
    """probe_kvm, remembered per (QEMU binary, host kernel) in the cache directory."""
    qemu = qemu or qemu_binary()
    stat = os.stat(qemu)
    key = f"{qemu}:{stat.st_size}:{stat.st_mtime_ns}:{os.uname().release}"
    cache_file = cache_dir() / "kvm-probe.json"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return bool(cached["works"])
    except (OSError, ValueError, KeyError):
        pass
    works = probe_kvm(qemu)
    cache_file.write_text(json.dumps({"key": key, "works": works}))
    return works


def resolve_accel(accel: str, qemu: str | None = None) -> str:
    """auto -> kvm if the probe passes, else tcg; kvm and tcg pass through."""
    if accel not in ("auto", "kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
    if accel != "auto":
        return accel
    return "kvm" if kvm_works(qemu) else "tcg"


def kernel_release(kernel: Path) -> str | None:
    """vmlinuz-6.1.0-56-amd64 -> 6.1.0-56-amd64 (None if the name does not say)."""
    match = re.match(r"(?:vmlinuz|bzImage|vmlinux)-(.+)$", kernel.name)
    return match.group(1) if match else None


def default_kernel() -> Path:
    """The newest /boot/vmlinuz-* that has a matching /lib/modules directory."""
    candidates = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    for kernel in reversed(candidates):
        release = kernel_release(kernel)
        if release and (Path("/lib/modules") / release / "modules.dep").exists():
            return kernel
    if candidates:
        return candidates[-1]
    raise FileNotFoundError("no /boot/vmlinuz-*: install linux-image-amd64 or pass --kernel")
