"""Choosing QEMU's accelerator, and finding a kernel to boot.

/dev/kvm can open and still not run guests: on these nested hosts a boot sector runs
fine, but Linux hangs (default CPU) or QEMU aborts on an MSR (-cpu host).  So `auto`
boots the real kernel with the bare init under KVM and waits for the init's own
message; no message within PROBE_TIMEOUT_S means TCG.  The answer is cached per QEMU
binary, guest kernel and host kernel.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from ninep.vm.initramfs import build_initramfs, cache_dir
from ninep.vm.progress import note

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 15.0
#: The probe guest's init dies on purpose with this root=; seeing its message proves
#: the kernel reached userspace under KVM.
PROBE_ROOT = "kvm-probe"


class KvmUnavailable(Exception):
    """--accel kvm was asked for where KVM cannot run a guest; the message says why."""


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise FileNotFoundError(f"{QEMU} not found: install qemu-system-x86")
    return path


def probe_kvm(qemu: str, kernel: Path, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does a Linux guest really reach userspace under KVM here?  (Not cached.)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    initrd = build_initramfs(None)  # the init alone: no modules needed to reach it
    argv = [qemu, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-m", "256", "-serial", "stdio", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", f"console=ttyS0 panic=-1 root={PROBE_ROOT}"]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # the guest hung: the case seen on nested hosts
    return f"root={PROBE_ROOT}".encode() in result.stdout


def kvm_works(kernel: Path, qemu: str | None = None) -> bool:
    """probe_kvm, remembered per (QEMU binary, guest kernel, host kernel) in the cache."""
    qemu = qemu or qemu_binary()
    stat = os.stat(qemu)
    key = f"{qemu}:{stat.st_size}:{stat.st_mtime_ns}:{kernel}:{os.uname().release}"
    cache_file = cache_dir() / "kvm-probe.json"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return bool(cached["works"])
    except (OSError, ValueError, KeyError):
        pass
    note(f"checking whether KVM runs a Linux guest here (once, up to {PROBE_TIMEOUT_S:g} s)")
    works = probe_kvm(qemu, kernel)
    cache_file.write_text(json.dumps({"key": key, "works": works}))
    return works


def kvm_problem(kernel: Path, qemu: str | None = None) -> str | None:
    """None if KVM runs a Linux guest here; else why not, and what to do instead."""
    if not os.path.exists("/dev/kvm"):
        return ("/dev/kvm does not exist (no KVM on this host: enable virtualization or "
                "load kvm_intel/kvm_amd); use --accel tcg")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        st = os.stat("/dev/kvm")
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return (f"/dev/kvm is not readable and writable by this user (join group {group!r}); "
                "use --accel tcg")
    if not kvm_works(kernel, qemu):
        return (f"/dev/kvm opens, but a Linux guest does not reach userspace under KVM here "
                f"within {PROBE_TIMEOUT_S:g} s (nested virtualization?); use --accel tcg or auto")
    return None


def resolve_accel(accel: str, kernel: Path, qemu: str | None = None) -> str:
    """auto -> kvm if the probe passes, else tcg; tcg passes through; kvm is checked
    (KvmUnavailable says why), since a guest that cannot run just hangs."""
    if accel not in ("auto", "kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
    if accel == "kvm":
        problem = kvm_problem(kernel, qemu)
        if problem:
            raise KvmUnavailable(problem)
    if accel != "auto":
        return accel
    return "kvm" if kvm_works(kernel, qemu) else "tcg"


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
