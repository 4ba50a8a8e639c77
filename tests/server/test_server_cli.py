"""ninepd as a subprocess: serve, trace, SIGTERM -> exit 0; bad config -> 2; bad listen -> 1."""

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import trio

from ninep.protocol import messages as m

from srv_wire import Peer

REPO = Path(__file__).resolve().parents[2]
NINEPD = [sys.executable, "-c", "from ninep.cli import main_entry; main_entry()"]
# As the installed console script starts: -P keeps the current directory off sys.path.
NINEPD_SCRIPT = [sys.executable, "-P", "-c", "from ninep.cli import main_entry; main_entry()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def connect_when_up(process, port) -> Peer:
    with trio.fail_after(20):
        while True:
            try:
                return Peer(await trio.open_tcp_stream("127.0.0.1", port))
            except OSError:
                assert process.poll() is None, process.communicate()
                await trio.sleep(0.05)


@contextmanager
def reaped(process):
    """Whatever a test asserts, ninepd does not outlive it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(process, sig=signal.SIGTERM) -> str:
    """Signal ninepd, wait for it to exit, return what it logged."""
    process.send_signal(sig)
    return process.communicate(timeout=20)[1]


async def read_file(peer: Peer, name: str) -> m.Message:
    """Walk fid 0 -> fid 1 to ``name``, open it, and return the Tread reply (tags 1-3)."""
    assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, (name,))), m.Rwalk)
    assert isinstance(await peer.rpc(m.Tlopen(2, 1, 0)), m.Rlopen)
    return await peer.rpc(m.Tread(3, 1, 0, 100))


async def test_serve_trace_and_sigterm(tmp_path):
    (tmp_path / "hello").write_bytes(b"hi there")
    port = free_port()
    process = subprocess.Popen(
        [*NINEPD, "--export", str(tmp_path), "--listen", f"tcp://127.0.0.1:{port}", "--trace"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    with reaped(process):
        peer = await connect_when_up(process, port)
        async with peer.stream:
            await peer.start()
            assert await read_file(peer, "hello") == m.Rread(3, b"hi there")
            # Read-write export: a create works.
            assert isinstance(await peer.rpc(m.Tlcreate(4, 0, "new", 0o2, 0o644, 0)), m.Rlcreate)
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert (tmp_path / "new").exists()
    assert f"serving 9P2000.L on tcp://127.0.0.1:{port}" in stderr
    assert "<- Twalk tag=1 fid=0 newfid=1 wnames=('hello',)" in stderr
    assert "-> Rread tag=3 data=<8 bytes b'hi there'>" in stderr


async def test_read_only_squash_and_sigint(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [*NINEPD, "--export", str(tmp_path), "--listen", f"tcp://127.0.0.1:{port}",
         "--read-only", "--squash", "65534:65534", "--msize", "64K"],
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    with reaped(process):
        peer = await connect_when_up(process, port)
        async with peer.stream:
            assert await peer.rpc(m.Tversion(0xFFFF, 1 << 20, "9P2000.L")) == m.Rversion(0xFFFF, 65536, "9P2000.L")
            assert isinstance(await peer.rpc(m.Tattach(1, 0, 0xFFFFFFFF, "root", "", 0)), m.Rattach)
            assert await peer.rpc(m.Tmkdir(2, 0, "d", 0o755, 0)) == m.Rlerror(2, 30)  # EROFS
        stop(process, signal.SIGINT)
    assert process.returncode == 0


def test_bad_config_exits_2_naming_the_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("exports:\n  root:\n    path: /tmp\n    readonly: true\n")
    result = subprocess.run([*NINEPD, "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{config}:4: exports.root.readonly: unknown key" in result.stderr


def test_unusable_listen_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*NINEPD, "--export", str(tmp_path), "--listen", f"tcp://127.0.0.1:{port}"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"tcp://127.0.0.1:{port}" in result.stderr


def test_nothing_to_serve_exits_2():
    result = subprocess.run(NINEPD, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nothing to serve" in result.stderr


async def test_systemd_socket_activation(tmp_path):
    (tmp_path / "f").write_bytes(b"activated")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def as_fd_3():
        os.dup2(fd, 3)

    # LISTEN_PID must be the server's own pid: a shell sets it and execs. close_fds
    # is off because subprocess would close fds (our new fd 3) after preexec_fn.
    script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    process = subprocess.Popen(["/bin/sh", "-c", script, "sh", *NINEPD, "--export", str(tmp_path)],
                               cwd=REPO, close_fds=False, preexec_fn=as_fd_3,
                               stderr=subprocess.PIPE, text=True)
    listener.close()
    with reaped(process):
        peer = await connect_when_up(process, port)
        async with peer.stream:
            await peer.start()
            assert await read_file(peer, "f") == m.Rread(3, b"activated")
        stderr = stop(process)
    assert process.returncode == 0, stderr
    assert "systemd fd 3" in stderr


async def test_synthetic_module_from_the_current_directory(tmp_path):
    """A console script has no cwd on sys.path; ninepd --synthetic puts it there."""
    (tmp_path / "mytree.py").write_text(
        "from ninep.fs.synthetic import Directory, StaticFile\n"
        "ROOT = Directory({'greeting': StaticFile(b'from cwd')})\n")
    port = free_port()
    process = subprocess.Popen(
        [*NINEPD_SCRIPT, "--synthetic", "mytree:ROOT", "--listen", f"tcp://127.0.0.1:{port}"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    with reaped(process):
        peer = await connect_when_up(process, port)
        async with peer.stream:
            await peer.start()
            assert await read_file(peer, "greeting") == m.Rread(3, b"from cwd")
        stderr = stop(process)
    assert process.returncode == 0, stderr
