"""What a new user meets first (issue 13), run as they run it: the real commands in a
subprocess, checking the exit status and the one line they print.

The QEMU-side checks (a root with no init, --accel kvm, progress of the init build)
are in tests/vm/test_vm_first_hour.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NINEPD = [sys.executable, "-m", "ninep.cli"]
CLIENT = [sys.executable, "-m", "ninep.client"]
NINEP = [sys.executable, "-c", "import sys, ninep.vm.cli as c; sys.exit(c.main())"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def run(argv, *, cwd=None, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=kw.pop("env", env()), **kw)


def one_line_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """The command failed with ``status`` and said why on one line, no traceback."""
    err = result.stderr
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err and "Exception" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def tcp_accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


# ---- 6. one-line errors --------------------------------------------------------

def test_synthetic_that_is_not_a_filesystem():
    result = run([*NINEPD, "--synthetic", "os:sep"])
    one_line_error(result, 2, "ninepd: ", "cannot serve str")


def test_fd_url_whose_fd_is_not_open(tmp_path):
    # fd 97 is closed in the child (close_fds); trio's own fds must not be mistaken for it.
    result = run([*NINEPD, "--export", str(tmp_path), "--listen", "fd://97,97"])
    one_line_error(result, 2, "fd://97,97: fd 97 is not open")


def test_export_path_missing():
    result = run([*NINEPD, "--export", "/nonexistent/ninep-export"])
    one_line_error(result, 2, "--export /nonexistent/ninep-export: No such file or directory")


def test_ctrl_c_on_the_readme_library_example(tmp_path):
    """The README's synthetic-tree program, Ctrl-C'd once it serves: exit 0, nothing on
    stderr (no KeyboardInterrupt wrapped in exception groups)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Library"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    port = free_port()
    assert '"tcp://127.0.0.1:5640"' in code
    (tmp_path / "example.py").write_text(code.replace(":5640", f":{port}"))
    process = subprocess.Popen([sys.executable, "example.py"], cwd=tmp_path, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: tcp_accepts("127.0.0.1", port))
        listing = run([*CLIENT, f"tcp://127.0.0.1:{port}", "cat", "greeting"])
        assert (listing.returncode, listing.stdout) == (0, "hello, world\n"), listing.stderr
        status, err = stop(process, signal.SIGINT)
    finally:
        process.kill()
    assert (status, err) == (0, "")


def test_busybox_rootfs_as_an_unprivileged_user(tmp_path):
    """Either it works unprivileged, or it says why on one line (no PermissionError
    traceback)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    if not any(os.path.isfile(p) for p in ("/bin/busybox", "/usr/bin/busybox")):
        pytest.skip("busybox-static not installed")
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(home, 0o777)
    result = run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                  *NINEP, "rootfs", "busybox", str(tmp_path / "root")],
                 env=dict(env(), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")))
    if result.returncode == 0:
        assert (tmp_path / "root" / "bin" / "busybox").is_file()
    else:
        one_line_error(result, 1, "ninep rootfs: ")


# ---- 7. YAML errors name FILE:LINE ---------------------------------------------

def test_yaml_missing_export_path(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("msize: 64K\nexports:\n  root:\n    read_only: true\n"
                      "    path: /nonexistent/ninep-root\n")
    result = run([*NINEPD, "--config", str(config)])
    one_line_error(result, 2, f"{config}:5: exports.root.path: /nonexistent/ninep-root: "
                              "No such file or directory")


@pytest.mark.parametrize("url, problem", [
    ("tcp://localhost", "expected HOST:PORT"),
    ("http://127.0.0.1:80", "unknown scheme"),
    ("unix:///nonexistent/dir/9p.sock", "directory /nonexistent/dir does not exist"),
])
def test_yaml_bad_listen_url(tmp_path, url, problem):
    config = tmp_path / "c.yaml"
    config.write_text(f"listen:\n  - tcp://127.0.0.1:0\n  - {url}\nexports:\n"
                      f"  root:\n    path: {tmp_path}\n")
    result = run([*NINEPD, "--config", str(config)])
    one_line_error(result, 2, f"{config}:3: listen: {url}: {problem}")


def test_yaml_listen_url_that_cannot_be_bound(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"exports:\n  root:\n    path: {tmp_path}\nlisten: tcp://192.0.2.1:5640\n")
    result = run([*NINEPD, "--config", str(config)])
    one_line_error(result, 1, f"{config}:4: listen: tcp://192.0.2.1:5640: ")


# ---- 4. Unix socket URLs -------------------------------------------------------

def test_unix_relative_url_is_relative_to_the_current_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "file").write_text("over a relative socket\n")
    sock = tmp_path / "run" / "9p.sock"
    server = subprocess.Popen([*NINEPD, "--export", "export", "--listen", "unix://run/9p.sock"],
                              cwd=tmp_path, env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock.exists)
        result = run([*CLIENT, "unix://run/9p.sock", "cat", "file"], cwd=tmp_path)
        assert (result.returncode, result.stdout) == (0, "over a relative socket\n"), result.stderr
        status, err = stop(server)
    finally:
        server.kill()
    assert status == 0, err
    assert f"serving 9P2000.L on unix://{sock}" in err
    assert not sock.exists(), "a clean shutdown leaves no socket file behind"


def test_unix_url_whose_directory_is_missing_is_refused(tmp_path):
    result = run([*NINEPD, "--export", str(tmp_path), "--listen", "unix://missing/dir/9p.sock"],
                 cwd=tmp_path)
    one_line_error(result, 2, "unix://missing/dir/9p.sock: directory "
                              f"{tmp_path}/missing/dir does not exist")
    assert not (tmp_path / "missing").exists()


def test_a_socket_file_that_is_no_longer_ours_is_left_alone(tmp_path):
    sock = tmp_path / "9p.sock"
    server = subprocess.Popen([*NINEPD, "--export", str(tmp_path), "--listen", f"unix://{sock}"],
                              env=env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock.exists)
        sock.unlink()  # someone else takes the path over
        newer = socket.socket(socket.AF_UNIX)
        newer.bind(str(sock))
        status, err = stop(server)
    finally:
        server.kill()
    assert status == 0, err
    assert sock.exists(), "the newer socket must survive the old server's shutdown"
    newer.close()


# ---- 5. the client -------------------------------------------------------------

def test_client_times_out_on_a_silent_server():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = run([*CLIENT, "-t", "1", f"tcp://127.0.0.1:{port}", "ls"])
        elapsed = time.monotonic() - started
    one_line_error(result, 2, f"tcp://127.0.0.1:{port}: ", "no answer within 1 s")
    assert elapsed < 20


def test_client_default_port_is_ninepds(tmp_path):
    """ninepd on its default port (on 127.0.0.2, so as not to meet another ninepd on
    127.0.0.1:5640), the client given the host alone."""
    (tmp_path / "here").write_text("default port\n")
    if tcp_accepts("127.0.0.2", 5640):
        pytest.skip("127.0.0.2:5640 is taken")
    server = subprocess.Popen([*NINEPD, "--export", str(tmp_path), "--listen",
                               "tcp://127.0.0.2:5640"], env=env(), stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(lambda: tcp_accepts("127.0.0.2", 5640))
        result = run([*CLIENT, "tcp://127.0.0.2", "cat", "here"])
        assert (result.returncode, result.stdout) == (0, "default port\n"), result.stderr
    finally:
        stop(server)
        server.kill()
    help_text = run([*NINEPD, "--help"]).stdout
    assert "default tcp://127.0.0.1:5640" in help_text


def test_client_cat_follows_symlinks(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("guest\n")
    (tmp_path / "etc" / "relative").symlink_to("hostname")
    (tmp_path / "absolute").symlink_to("/etc/hostname")  # the export's /, not the host's
    (tmp_path / "dir").symlink_to("etc")
    (tmp_path / "loop").symlink_to("loop")
    port = free_port()
    server = subprocess.Popen([*NINEPD, "--export", str(tmp_path), "--listen",
                               f"tcp://127.0.0.1:{port}"], env=env(), stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(lambda: tcp_accepts("127.0.0.1", port))
        url = f"tcp://127.0.0.1:{port}"
        for path in ("etc/relative", "absolute", "dir/relative"):
            result = run([*CLIENT, url, "cat", path])
            assert (result.returncode, result.stdout, result.stderr) == (0, "guest\n", ""), path
        one_line_error(run([*CLIENT, url, "cat", "loop"]), 1,
                       "cat loop: Too many levels of symbolic links")
    finally:
        stop(server)
        server.kill()


def test_client_names_a_missing_socket_without_errno_noise(tmp_path):
    result = run([*CLIENT, f"unix://{tmp_path}/none.sock", "ls"])
    assert one_line_error(result, 2) == f"unix://{tmp_path}/none.sock: No such file or directory"
