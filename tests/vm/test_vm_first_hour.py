"""`ninep vm`, `ninep initramfs` and `ninep rootfs` as a new user meets them (issue 13):
the real command in a subprocess, its exit status and the one line it prints.

Only test_a_guest_panic_* boots a guest; the others stop before QEMU starts."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ninep.vm.preflight import check_root, panic_reason, RootProblem
from ninep.vm.rootfs import cached_busybox_rootfs, copy_tree

REPO = Path(__file__).resolve().parents[2]
NINEP = [sys.executable, "-c", "import sys, ninep.vm.cli as c; sys.exit(c.main())"]
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or not list(Path("/boot").glob("vmlinuz-*")),
    reason="needs qemu-system-x86 and a kernel in /boot")
needs_busybox = pytest.mark.skipif(
    not any(os.path.isfile(p) for p in ("/bin/busybox", "/usr/bin/busybox")),
    reason="needs busybox-static")


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), **extra)


def run(argv, timeout=120, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", env())
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    return lines[-1]


@pytest.fixture
def busybox(tmp_path) -> Path:
    os.chmod(tmp_path, 0o755)
    return copy_tree(cached_busybox_rootfs(), tmp_path / "root")


# ---- 2. the root is checked before booting -------------------------------------

@needs_busybox
def test_a_root_without_init_is_refused_before_booting(busybox: Path):
    (busybox / "sbin" / "init").unlink()
    started = time.monotonic()
    result = run([*NINEP, "vm", str(busybox), "--accel", "tcg"])
    assert result.returncode == 2, result.stderr
    assert last_line(result) == result.stderr.strip()  # one line
    assert f"ninep vm: {busybox}: /sbin/init does not exist" in result.stderr
    assert time.monotonic() - started < 30  # no QEMU, no 60 s guest timeout


@needs_busybox
def test_cmd_needs_bin_sh_and_init_may_come_from_append(busybox: Path):
    (busybox / "bin" / "sh").unlink()
    result = run([*NINEP, "vm", str(busybox), "--cmd", "true"])
    assert result.returncode == 2
    assert "/bin/sh does not exist; --cmd runs its command with /bin/sh -c" in last_line(result)
    (busybox / "sbin" / "init").unlink()
    (busybox / "etc" / "myinit").write_text("#!/bin/busybox sh\n")  # not executable
    result = run([*NINEP, "vm", str(busybox), "--append", "init=/etc/myinit"])
    assert result.returncode == 2
    assert f"{busybox}: /etc/myinit is not executable" in last_line(result)


def test_check_root_follows_symlinks_inside_the_root(tmp_path: Path):
    """/sbin/init -> /lib/systemd/systemd with /lib -> usr/lib (Debian's layout) is
    found inside the root, not on the host."""
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd").write_text("")
    os.chmod(tmp_path / "usr/lib/systemd/systemd", 0o755)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("/lib/systemd/systemd")
    check_root(tmp_path, None)
    (tmp_path / "sbin/init").unlink()
    (tmp_path / "sbin/init").symlink_to("/etc/passwd")  # exists on the host, not here
    with pytest.raises(RootProblem, match="/sbin/init does not exist"):
        check_root(tmp_path, None)


def test_check_root_reads_a_mapped_tree(tmp_path: Path):
    """In a mapped tree (`ninep rootfs busybox` without root) symlinks are files holding
    their target and modes live in user.virtfs.mode: /bin/sh -> busybox is executable
    there though every host file is 0600."""
    from ninep.fs.hostmodel import has_user_xattrs, write_mapped

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not has_user_xattrs(fd):
            pytest.skip("no user xattrs on this filesystem")
    finally:
        os.close(fd)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"\x7fELF")
    (tmp_path / "bin/sh").write_text("busybox")
    for name in ("bin/busybox", "bin/sh"):
        os.chmod(tmp_path / name, 0o600)
    write_mapped(str(tmp_path / "bin/busybox"), uid=0, gid=0, mode=0o100755)
    write_mapped(str(tmp_path / "bin/sh"), uid=0, gid=0, mode=0o120777)
    check_root(tmp_path, "echo hi")
    write_mapped(str(tmp_path / "bin/busybox"), mode=0o100644)
    with pytest.raises(RootProblem, match="/bin/sh is not executable"):
        check_root(tmp_path, "echo hi")


def test_panic_reason_is_one_line():
    console = ("[    1.0] ninep-init: mounting 9p\n"
               "[    1.2] ninep-init: panic: exec /sbin/init: No such file or directory\n"
               "[    1.3] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
               "[    1.3] CPU: 0 PID: 1 Comm: init Not tainted\n")
    assert panic_reason(console) == ("exec /sbin/init: No such file or directory "
                                     "(Attempted to kill init! exitcode=0x00000100)")
    assert panic_reason("reboot: Power down\n") is None


@pytest.mark.vm
@needs_qemu
@needs_busybox
def test_a_guest_panic_exits_nonzero_with_the_reason(busybox: Path):
    """init=/bin/false passes the host check (it exists, it runs) and exits at once:
    PID 1 exiting panics the kernel; ninep vm used to exit 0 after that."""
    result = run([*NINEP, "vm", str(busybox), "--accel", "tcg", "--append", "init=/bin/false"],
                 timeout=600)
    assert "Kernel panic" in result.stdout  # the console was passed through
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result) == ("ninep vm: the guest kernel panicked: Attempted to kill "
                                 "init! exitcode=0x00000100")


@pytest.mark.vm
@needs_qemu
@needs_busybox
def test_the_interactive_console_still_works_and_power_off_exits_0(busybox: Path):
    """Without --cmd QEMU's output now goes through ninep vm (to spot a panic): typing
    on the terminal must still reach the guest's shell, and a clean power-off is 0."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: ninep vm on a terminal, as a user runs it
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [*NINEP, "vm", str(busybox), "--accel", "tcg"])
    seen, typed, deadline = b"", False, time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: ninep vm exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not typed and b"busybox rootfs up" in seen:
                time.sleep(1)  # let the shell print its prompt
                os.write(terminal, b"echo TYPED$((6*7)); poweroff\r")
                typed = True
    finally:
        os.close(terminal)
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert "TYPED42" in text, text[-2000:]
    assert "reboot: Power down" in text
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]


# ---- 3. --accel kvm where KVM cannot run a guest --------------------------------

@needs_qemu
@needs_busybox
def test_accel_kvm_without_access_to_dev_kvm():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    if os.path.exists("/dev/kvm") and os.stat("/dev/kvm").st_mode & 0o006 == 0o006:
        pytest.skip("/dev/kvm is open to everyone here")
    # Not under pytest's tmp_path, whose parent is closed to other users.
    with tempfile.TemporaryDirectory(prefix="ninep-kvm-") as parent:
        os.chmod(parent, 0o755)
        _kvm_refused_as_nobody(Path(parent))


def _kvm_refused_as_nobody(tmp_path: Path) -> None:
    busybox = copy_tree(cached_busybox_rootfs(), tmp_path / "root")
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    started = time.monotonic()
    result = run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                  *NINEP, "vm", str(busybox), "--accel", "kvm", "--cmd", "true"],
                 env=env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert last_line(result).startswith("ninep vm: --accel kvm: /dev/")
    assert "use --accel tcg" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.vm
@needs_qemu
@needs_busybox
def test_accel_kvm_where_the_probe_guest_hangs(busybox: Path):
    from ninep.vm.accel import default_kernel, kvm_problem

    if kvm_problem(default_kernel()) is None:
        pytest.skip("KVM runs guests here")
    started = time.monotonic()
    result = run([*NINEP, "vm", str(busybox), "--accel", "kvm", "--cmd", "true"], timeout=120)
    assert result.returncode == 1, result.stderr
    assert last_line(result).startswith("ninep vm: --accel kvm: ")
    assert time.monotonic() - started < 60  # the probe's 15 s (cached), not --timeout's 600


# ---- 9. progress on a terminal, quiet in a pipe ---------------------------------

def _on_a_terminal(argv, environment) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; return (status, what the terminal saw)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=terminal, env=environment)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        return process.wait(timeout=300), seen.decode(errors="replace")
    finally:
        os.close(controller)


@pytest.mark.skipif(shutil.which("musl-gcc") is None and shutil.which("gcc") is None,
                    reason="needs musl-tools or gcc")
def test_initramfs_build_shows_progress_on_a_terminal_only(tmp_path: Path):
    argv = [*NINEP, "initramfs", "--no-modules", "-o", str(tmp_path / "a.cpio")]
    status, seen = _on_a_terminal(argv, env(XDG_CACHE_HOME=str(tmp_path / "cache1")))
    assert status == 0, seen
    assert "ninep: compiling ninep-init.c (once; cached in" in seen
    assert "ninep: building the initramfs (no modules" in seen
    piped = run(argv, env=env(XDG_CACHE_HOME=str(tmp_path / "cache2")), timeout=300)
    assert (piped.returncode, piped.stderr) == (0, "")
    assert (tmp_path / "a.cpio").stat().st_size > 10_000


# ---- 8. help that says what it does ----------------------------------------------

def test_help_describes_and_shows_defaults():
    vm = run([*NINEP, "vm", "--help"])
    assert vm.returncode == 0
    text = re.sub(r"(\w-) (\w)", r"\1\2", " ".join(vm.stdout.split()))  # unwrap "virtio- serial"
    assert "Serve ROOTFS with ninepd" in text
    for default in ("(default: virtio-serial)", "(default: ninepd)", "(default: 512)",
                    "(default: auto)", "(default: loose)", "(default: 512000)",
                    "(default: 600.0)", "(default: 1)", "(default: off)",
                    "(default: the newest /boot/vmlinuz-*"):
        assert default in text, default
    rootfs = " ".join(run([*NINEP, "rootfs", "--help"]).stdout.split())
    assert "about 258 MB" in rootfs and "~/.cache/ninep" in rootfs and "busybox:" in rootfs


def test_a_long_command_shows_its_latest_line_on_a_terminal_only():
    """What debootstrap's progress goes through: each output line replaces the last on
    one status line; in a pipe nothing is shown, and the output is kept either way."""
    script = ("import sys; from ninep.vm.progress import run_showing_progress as r; "
              "res = r(['sh', '-c', 'echo I: Retrieving one; echo I: Retrieving two; exit 3'], "
              "'debootstrap'); print(res.returncode, repr(res.stdout))")
    status, seen = _on_a_terminal([sys.executable, "-c", script], env())
    assert status == 0
    assert "ninep: debootstrap ..." in seen
    assert "\r\x1b[K  I: Retrieving one\r\x1b[K  I: Retrieving two" in seen
    piped = run([sys.executable, "-c", script])
    assert piped.stderr == ""
    assert piped.stdout == "3 'I: Retrieving one\\nI: Retrieving two\\n'\n"


def test_a_failed_debootstrap_is_one_line(tmp_path: Path):
    """A stand-in debootstrap (first on PATH) fails as the real one does for a user
    who is not root; no network is touched and nothing is cached."""
    fake = tmp_path / "bin" / "debootstrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'I: Retrieving InRelease'\necho 'E: debootstrap can only run as root' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = run([*NINEP, "rootfs", "debian", str(tmp_path / "root")],
                 env=env(PATH=f"{fake.parent}:{os.environ['PATH']}",
                         XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert result.returncode == 1
    assert result.stderr == ("ninep rootfs: debootstrap failed: E: debootstrap can only run "
                             "as root\n  I: Retrieving InRelease\n")


@needs_busybox
def test_a_missing_kernel_is_named(busybox: Path):
    result = run([*NINEP, "vm", str(busybox), "--kernel", "/nonexistent/vmlinuz", "--cmd", "true"])
    assert (result.returncode, result.stderr) == (
        2, "ninep vm: --kernel /nonexistent/vmlinuz: no such file\n")
