"""A VM test harness for anyone's tests: boot a throwaway root, run a script, get the console.

    from ninep.vm.testing import fresh_busybox_rootfs, boot_script
    root = fresh_busybox_rootfs(tmp_path / "root")
    result = await boot_script(root, "echo hi > /x; cat /x")
    assert result.exit_status == 0 and "hi" in result.console

Always TCG (KVM hangs on the machines this runs on), -m 512, one CPU, the kernel's
messages left on so tests can assert on them; QEMU and the server are killed when
the call returns, whatever happened.  The 9P server is `default_server()`: ninepd
when it serves, else diod; NINEP_VM_SERVER=ninepd|diod pins it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import time
from pathlib import Path

from ninep.vm.accel import default_kernel
from ninep.vm.qemu import VmConfig, VmResult, ninepd_command, run_vm
from ninep.vm.rootfs import cached_busybox_rootfs, copy_tree

KERNEL_REACHED_INIT = "Run /init as init process"
ROOT_MOUNTED = "ninep-init: mounted 9p root"


def fresh_busybox_rootfs(dest: Path) -> Path:
    """A private copy of the cached busybox tree (built on first use)."""
    return copy_tree(cached_busybox_rootfs(), dest)


@functools.cache
def ninepd_serves(timeout: float = 5.0) -> bool:
    """Does this checkout's ninepd start and accept a connection on a unix socket?"""
    import socket
    with tempfile.TemporaryDirectory(prefix="ninepd-probe-") as tmp:
        sock_path = os.path.join(tmp, "s")
        try:
            server = subprocess.Popen(
                [*ninepd_command(), "--export", tmp, "--listen", f"unix://{sock_path}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and server.poll() is None:
                with socket.socket(socket.AF_UNIX) as probe:
                    try:
                        probe.connect(sock_path)
                        return True
                    except OSError:
                        time.sleep(0.05)
            return False
        finally:
            server.kill()
            server.wait()


def default_server() -> str:
    pinned = os.environ.get("NINEP_VM_SERVER")
    if pinned:
        return pinned
    return "ninepd" if ninepd_serves() else "diod"


async def boot_script(rootfs: Path, script: str | None, *, transport: str = "virtio-serial",
                      server: str | None = None, timeout: float = 150.0,
                      watch: tuple[str, ...] = (), stop_when: str | None = None,
                      **options) -> VmResult:
    """Boot the default kernel on `rootfs` over 9P and run `script` (None: the real init).

    `options` go to VmConfig (overlay=True, cache="none", server_delay=2.0, ...).
    """
    config = VmConfig(rootfs=Path(rootfs).resolve(), kernel=options.pop("kernel", None)
                      or default_kernel(), transport=transport, server=server or default_server(),
                      script=script, accel="tcg", timeout=timeout, **options)
    return await run_vm(config, watch=watch, stop_when=stop_when)


#: An unprivileged identity no host user database knows, for tests that drop root.
UNPRIVILEGED = (4711, 4711)


@functools.cache
def unprivileged_python(uid: int = UNPRIVILEGED[0], gid: int = UNPRIVILEGED[1]
                        ) -> tuple[list[str], dict[str, str]] | None:
    """(argv prefix, environment) that runs this checkout's Python as uid:gid through
    setpriv, or None where that cannot work (not root, no setpriv, no Python that
    user may execute). The venv's interpreter may live under a home directory the user
    cannot enter (pyenv in /root); then the system python3 of the same version runs
    with the venv's packages on its path."""
    import shutil
    import sys
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    repo = str(Path(__file__).resolve().parents[2])
    site = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, *site]), HOME="/nonexistent")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(version) or "", "/usr/bin/" + version):
        if not python:
            continue
        # It must also be able to start itself again (ninepd, the relay): exec of a
        # path through a directory it cannot search fails only then.
        probe = subprocess.run([*drop, python, "-c", "import subprocess, sys, trio, yaml, "
                                "construct, ninep; subprocess.run([sys.executable, '-c', "
                                "'import trio'], check=True)"],
                               env=env, capture_output=True)
        if probe.returncode == 0:
            return [*drop, python], env
    return None
