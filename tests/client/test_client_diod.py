"""The client against diod 1.0.24 (an independent C server) exporting a temporary directory.

diod runs as root with -n (no auth), so the client attaches as uname "root". diod has no
Tunlinkat (the client falls back to walk + Tremove, as the kernel does), and it crashes
when a client hangs up with two or more requests in flight, so every check ends with a
check that diod is still alive. The checks themselves are in client_host_checks.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from client_host_checks import CHECKS, Target

pytestmark = [pytest.mark.diod, pytest.mark.root]

DIOD = shutil.which("diod") or "/usr/sbin/diod"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"diod exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"diod did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def diod(tmp_path_factory):
    """(url, export directory, process) of a diod serving a fresh directory."""
    export = tmp_path_factory.mktemp("diod-export")
    log = tmp_path_factory.mktemp("diod-log") / "diod.log"
    port = free_port()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [DIOD, "-f", "-n", "-c", "/dev/null", "-l", f"127.0.0.1:{port}", "-e", str(export),
             "-L", "stderr"],
            stdout=log_file, stderr=subprocess.STDOUT, umask=0o022)  # modes assume it
    try:
        wait_until_listening(port, process)
        yield f"tcp://127.0.0.1:{port}", export, process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
async def test_against_diod(diod, check):
    url, export, process = diod
    sub = f"{check.__name__[6:40]}-{uuid.uuid4().hex[:6]}"
    (export / sub).mkdir()
    await check(Target(url=url, aname=str(export), export=export, sub=sub, server="diod"))
    time.sleep(0.05)  # give a crash the chance to happen
    assert process.poll() is None, "diod died"
