"""Boot a guest whose root is a host directory served over 9P.

`plan_vm(config, workdir)` is pure: it decides the server command, the QEMU argv and
the kernel command line.  `run_vm(config)` (trio) starts the 9P server, boots QEMU,
reads the console line by line, enforces the timeout, and kills both in the end.

Transports and what serves them:
  virtio-serial  QEMU chardev socket (reconnect=1) to the server's unix socket (ninepd)
                 or TCP port (diod); the guest init relays the port to the kernel.
  tcp            QEMU user net, restrict=on, guestfwd 10.0.2.100:564 -> ninep.vm.relay
                 -> server.  (restrict=on refuses connections to 10.0.2.2.)
  vsock          vhost-vsock-pci + ninep.vm.relay --listen-vsock where /dev/vhost-vsock
                 works; everywhere else ninepd itself is the device (vhost-user-vsock-pci,
                 guest RAM shared by memfd), unprivileged and with no relay.
  virtio         QEMU's own 9P server (virtio-9p-pci, security_model=passthrough, or
                 mapped-xattr with virtio_security_model).
  virtiofs       no 9P: Debian's virtiofsd behind vhost-user-fs-pci (the benchmark's
                 comparison with what VM users pick instead of 9P; needs root).
  disk           no 9P: an ext4 image on virtio-blk (the benchmark's baseline).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ninep.vm.accel import kernel_release, qemu_binary, resolve_accel
from ninep.vm.initramfs import BLOCK_MODULES, DEFAULT_MODULES, VIRTIOFS_MODULES, \
    build_initramfs, run_script_archive

TRANSPORTS = ("virtio-serial", "tcp", "vsock", "virtio", "virtiofs", "disk")
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # Debian's qemu-system-common
SERVERS = ("ninepd", "diod")
GUEST_SERVER_ADDRESS = "10.0.2.100"
GUEST_SERVER_PORT = 564
VSOCK_GUEST_CID = 3
RUN_STATUS = re.compile(r"ninep-init: run: exit status (\d+)")
REPO_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(Exception):
    """The VM cannot be started as asked; the message says why and what to do."""


@dataclass(frozen=True)
class VmConfig:
    rootfs: Path
    kernel: Path
    modules_dir: Path | None = None       # None: take /lib/modules/<release of kernel>
    transport: str = "virtio-serial"
    server: str = "ninepd"                # ninepd | diod (ignored by virtio and disk)
    script: str | None = None             # run this with /bin/sh -c instead of init
    overlay: bool = False
    memory_mb: int = 512
    smp: int = 1
    accel: str = "tcg"
    cache: str = "loose"
    msize: int = 512000
    timeout: float = 180.0                # whole run, QEMU killed after it
    guest_timeout: int = 60               # ninep.timeout: how long the guest retries
    server_delay: float = 0.0             # start the server this long after QEMU ...
    server_wait_for: str | None = None    # ... or after the first console line matching this
    quiet: bool = False
    interactive: bool = False             # console on this terminal instead of captured
    disk_image: Path | None = None        # transport "disk"
    extra_append: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    server_argv: tuple[str, ...] | None = None  # override the server command entirely
    server_args: tuple[str, ...] = ()     # more ninepd arguments ("--workers", "2")
    qemu_args: tuple[str, ...] = ()       # more QEMU arguments ("-monitor", "unix:...")
    virtio_security_model: str = "passthrough"  # transport virtio: or mapped-xattr


@dataclass
class VmPlan:
    qemu_argv: list[str]
    server_argv: list[str] | None
    server_ready: tuple[str, object] | None   # ("unix", path) | ("tcp", port)
    append: str
    helper_argv: list[str] | None = None      # vsock relay


@dataclass
class VmResult:
    console: str
    exit_status: int | None       # the --cmd script's status, None if it never reported
    qemu_returncode: int | None
    timed_out: bool
    elapsed: float
    seen: dict[str, float] = field(default_factory=dict)  # watched pattern -> seconds
    server_log: str = ""


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ninepd_command() -> list[str]:
    """The ninepd entry point of this checkout (venv script, else `python -m`)."""
    script = Path(sys.executable).parent / "ninepd"
    if script.exists():
        return [str(script)]
    found = shutil.which("ninepd")
    return [found] if found else [sys.executable, "-m", "ninep.cli"]


def _qemu_escape(value: str) -> str:
    return value.replace(",", ",,")  # QEMU's option parser: a literal comma is doubled


def _check_diod_can_enter(export: Path) -> None:
    """diod answers every attach with EACCES when a parent of the export is closed to
    others (mkdtemp's and pytest's 0700 directories): say so before the guest retries."""
    for parent in Path(export).resolve().parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise LaunchError(f"diod refuses to serve {export}: its parent {parent} is not "
                              f"searchable by others (chmod o+x {parent}, or export elsewhere)")


def _server_plan(config: VmConfig, workdir: Path):
    """-> (server argv, readiness probe, address the QEMU side should use)."""
    export = str(config.rootfs)
    if config.server == "diod":
        _check_diod_can_enter(config.rootfs)
        port = free_tcp_port()
        argv = ["diod", "-f", "-n", "-c", "/dev/null", "-L", "stderr", "-l",
                f"127.0.0.1:{port}", "-e", export]
        return argv, ("tcp", port), ("tcp", port)
    if config.server == "ninepd":
        sock = workdir / "ninepd.sock"
        argv = [*ninepd_command(), "--export", export, "--listen", f"unix://{sock}",
                *config.server_args]
        return argv, ("unix", str(sock)), ("unix", str(sock))
    raise LaunchError(f"server must be one of {SERVERS}, not {config.server!r}")


def plan_vm(config: VmConfig, workdir: Path, initrd: Path, accel: str) -> VmPlan:
    if config.transport not in TRANSPORTS:
        raise LaunchError(f"transport must be one of {TRANSPORTS}, not {config.transport!r}")
    userspace_vsock = config.transport == "vsock" and not kernel_vhost_vsock_usable()
    if userspace_vsock and config.server != "ninepd":
        raise LaunchError("transport vsock without /dev/vhost-vsock needs server ninepd "
                          "(it is its own vhost-user-vsock device); use virtio-serial or tcp")
    append = ["console=ttyS0", "panic=-1", "rw", f"ninep.timeout={config.guest_timeout}"]
    argv = [qemu_binary(), "-accel", accel, "-m", str(config.memory_mb), "-smp", str(config.smp),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "mon:stdio" if config.interactive else "stdio",
            "-kernel", str(config.kernel), "-initrd", str(initrd)]
    server_argv = ready = helper = None
    aname = ""
    if config.transport in ("virtio-serial", "tcp", "vsock"):
        server_argv, ready, address = _server_plan(config, workdir)
        if config.server == "diod":
            aname = str(config.rootfs)  # diod attaches by export path
        if config.server_argv is not None:
            server_argv = list(config.server_argv)
        kind, where = address
        relay_target = f"tcp:127.0.0.1:{where}" if kind == "tcp" else f"unix:{where}"
    if config.transport == "virtio-serial":
        chardev = (f"socket,id=ninep0,host=127.0.0.1,port={where},nodelay=on" if kind == "tcp"
                   else f"socket,id=ninep0,path={_qemu_escape(where)}")
        argv += ["-device", "virtio-serial-pci,id=vser0",
                 "-chardev", chardev + ",reconnect=1",
                 "-device", "virtserialport,bus=vser0.0,chardev=ninep0,name=ninep"]
        append.append("ninep.src=virtio-serial://ninep")
    elif config.transport == "tcp":
        relay = f"{sys.executable} -m ninep.vm.relay {relay_target}"
        if " " in relay.replace(" -m ninep.vm.relay ", "__"):
            raise LaunchError(f"paths with spaces cannot go into QEMU's guestfwd: {relay}")
        argv += ["-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_SERVER_ADDRESS}:"
                 f"{GUEST_SERVER_PORT}-cmd:{_qemu_escape(relay)}",
                 "-device", "virtio-net-pci,netdev=n0"]
        append.append(f"ninep.src=tcp://{GUEST_SERVER_ADDRESS}:{GUEST_SERVER_PORT}")
    elif config.transport == "vsock" and not userspace_vsock:
        helper = [sys.executable, "-m", "ninep.vm.relay", "--listen-vsock",
                  str(GUEST_SERVER_PORT), relay_target]
        argv += ["-device", f"vhost-vsock-pci,guest-cid={VSOCK_GUEST_CID}"]
        append.append(f"ninep.src=vsock://2:{GUEST_SERVER_PORT}")
    elif config.transport == "vsock":
        device_socket = str(workdir / "vm.vsock")
        server_argv = [a if a != f"unix://{where}" else
                       f"vhost-user-vsock://{device_socket}?cid={VSOCK_GUEST_CID}&port={GUEST_SERVER_PORT}"
                       for a in server_argv]
        ready = ("listening", device_socket)  # QEMU connects once: no probe may connect
        argv += [*_shared_guest_ram(config),
                 "-chardev", f"socket,id=vsock0,path={_qemu_escape(device_socket)}",
                 "-device", "vhost-user-vsock-pci,chardev=vsock0"]
        append.append(f"ninep.src=vsock://2:{GUEST_SERVER_PORT}")
    elif config.transport == "virtiofs":
        if not os.access(VIRTIOFSD, os.X_OK):
            raise LaunchError(f"transport virtiofs needs {VIRTIOFSD} (Debian: qemu-system-common)")
        device_socket = str(workdir / "virtiofs.sock")
        server_argv = [VIRTIOFSD, f"--socket-path={device_socket}", "-o",
                       f"source={config.rootfs}", "-o", "cache=auto", "-o", "xattr"]
        ready = ("listening", device_socket)
        argv += [*_shared_guest_ram(config),
                 "-chardev", f"socket,id=fs0,path={_qemu_escape(device_socket)}",
                 "-device", "vhost-user-fs-pci,chardev=fs0,tag=rootfs"]
    elif config.transport == "virtio":
        argv += ["-fsdev", f"local,id=fs0,path={_qemu_escape(str(config.rootfs))},"
                 f"security_model={config.virtio_security_model}",
                 "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=ninep"]
        append.append("ninep.src=virtio://ninep")
    if config.transport == "disk":
        if config.disk_image is None:
            raise LaunchError("transport disk needs disk_image (an ext4 image of the rootfs)")
        argv += ["-drive", f"file={_qemu_escape(str(config.disk_image))},format=raw,if=virtio"]
        append += ["root=/dev/vda", "rootfstype=ext4"]
    elif config.transport == "virtiofs":
        append += ["root=rootfs", "rootfstype=virtiofs"]
    else:
        append += ["root=9p", f"ninep.msize={config.msize}", f"ninep.cache={config.cache}"]
        if aname:
            append.append(f"ninep.aname={aname}")
    if config.overlay:
        append.append("ninep.overlay=tmpfs")
    if config.quiet:
        append.append("quiet")
    append += list(config.extra_append)
    argv += list(config.qemu_args)
    return VmPlan(argv + ["-append", " ".join(append)], server_argv, ready, " ".join(append),
                  helper)


def prepare_initrd(config: VmConfig, workdir: Path) -> Path:
    """The cached image, plus an appended archive carrying the script if there is one."""
    modules_dir = config.modules_dir
    if modules_dir is None:
        release = kernel_release(config.kernel)
        candidate = Path("/lib/modules") / release if release else None
        modules_dir = candidate if candidate and (candidate / "modules.dep").exists() else None
    modules = DEFAULT_MODULES + config.extra_modules
    if config.transport == "disk":
        modules += BLOCK_MODULES
    elif config.transport == "virtiofs":
        modules += VIRTIOFS_MODULES
    base = build_initramfs(modules_dir, modules=modules)
    if config.script is None:
        return base
    initrd = workdir / "initrd.cpio"
    initrd.write_bytes(base.read_bytes() + run_script_archive(config.script))
    return initrd


def _shared_guest_ram(config: VmConfig) -> list[str]:
    """Guest RAM in a memfd that QEMU shares with a vhost-user back-end process."""
    return ["-object", f"memory-backend-memfd,id=guest-ram,size={config.memory_mb}M,share=on",
            "-machine", "memory-backend=guest-ram"]


def kernel_vhost_vsock_usable() -> bool:
    """/dev/vhost-vsock exists and this user may open it (QEMU opens it read-write)."""
    return os.access("/dev/vhost-vsock", os.R_OK | os.W_OK)


def unix_socket_listening(path: str) -> bool:
    """Whether some process listens on the Unix socket ``path``, read from
    /proc/net/unix rather than by connecting (a vhost-user back-end takes QEMU's one
    connection; a probe must not be that connection)."""
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for row in table:
                fields = row.split()
                # Num RefCount Protocol Flags Type St Inode Path; Flags 0x10000 = listening
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
    except OSError:
        pass
    return False


async def wait_until_serving(ready: tuple[str, object], deadline: float) -> None:
    kind, where = ready
    while True:
        if kind == "listening":
            if unix_socket_listening(str(where)):
                return
            if trio.current_time() > deadline:
                raise LaunchError(f"9P server did not start listening on {where}")
            await trio.sleep(0.05)
            continue
        try:
            if kind == "tcp":
                stream = await trio.open_tcp_stream("127.0.0.1", int(where))
            else:
                stream = await trio.open_unix_socket(str(where))
            await stream.aclose()
            return
        except OSError:
            if trio.current_time() > deadline:
                raise LaunchError(f"9P server did not start listening on {kind}:{where}")
            await trio.sleep(0.05)


async def _kill(process: trio.Process | None) -> None:
    if process is not None and process.returncode is None:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def run_vm(config: VmConfig, *, watch: tuple[str, ...] = (),
                 on_line: Callable[[str], None] | None = None,
                 workdir: Path | None = None, stop_when: str | None = None) -> VmResult:
    """Boot, collect the console, return when QEMU exits or the timeout hits.

    `watch`: regexes whose first match time (seconds since QEMU started) lands in
    `VmResult.seen`.  `on_line`: called with every console line as it arrives.
    `stop_when`: a regex; QEMU is killed as soon as a console line matches it.
    """
    with tempfile.TemporaryDirectory(prefix="ninep-vm-") as tmp:
        workdir = workdir or Path(tmp)
        accel = resolve_accel(config.accel, config.kernel)
        initrd = prepare_initrd(config, workdir)
        plan = plan_vm(config, workdir, initrd, accel)
        server_log = workdir / "server.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        lines: list[str] = []
        seen: dict[str, float] = {}
        processes: list[trio.Process] = []
        qemu: trio.Process | None = None
        timed_out = False
        server_started = stopped = False
        started = time.monotonic()
        try:
            async def start_server() -> None:
                if plan.server_argv is None:
                    return
                with open(server_log, "wb") as log:
                    processes.append(await trio.lowlevel.open_process(
                        plan.server_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        env=env))
                if plan.helper_argv is not None:
                    processes.append(await trio.lowlevel.open_process(plan.helper_argv, env=env))

            with trio.move_on_after(config.timeout) as scope:
                late_server = config.server_delay > 0 or config.server_wait_for is not None
                if not late_server:
                    await start_server()
                    if plan.server_ready is not None:
                        await wait_until_serving(plan.server_ready, trio.current_time() + 20)
                if config.interactive:
                    # The terminal stays QEMU's stdin; its output is passed through
                    # as it comes and kept, to tell a panic from a power-off.
                    qemu = await trio.lowlevel.open_process(
                        plan.qemu_argv, stdout=subprocess.PIPE, env=env)
                else:
                    qemu = await trio.lowlevel.open_process(
                        plan.qemu_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, env=env)
                processes.append(qemu)
                started = time.monotonic()
                async with trio.open_nursery() as nursery:
                    async def delayed_server() -> None:
                        await trio.sleep(config.server_delay)
                        await start_server()

                    if late_server and config.server_wait_for is None:
                        nursery.start_soon(delayed_server)
                    pending = b""
                    async for chunk in qemu.stdout:
                        if config.interactive:
                            sys.stdout.buffer.write(chunk)
                            sys.stdout.buffer.flush()
                        pending += chunk
                        *complete, pending = pending.split(b"\n")
                        for raw in complete:
                            line = raw.decode(errors="replace").rstrip("\r")
                            lines.append(line)
                            for pattern in watch:
                                if pattern not in seen and re.search(pattern, line):
                                    seen[pattern] = time.monotonic() - started
                            if (late_server and config.server_wait_for is not None
                                    and not server_started and
                                    re.search(config.server_wait_for, line)):
                                server_started = True
                                nursery.start_soon(delayed_server)
                            if stop_when is not None and re.search(stop_when, line):
                                stopped = True
                                qemu.kill()
                            if on_line is not None:
                                on_line(line)
                    if pending:
                        lines.append(pending.decode(errors="replace"))
                    await qemu.wait()
                    nursery.cancel_scope.cancel()
            timed_out = scope.cancelled_caught
        finally:
            for process in reversed(processes):
                await _kill(process)
        console = "\n".join(lines)
        statuses = RUN_STATUS.findall(console)
        return VmResult(
            console=console,
            exit_status=int(statuses[-1]) if statuses else None,
            qemu_returncode=None if qemu is None or timed_out or stopped else qemu.returncode,
            timed_out=timed_out,
            elapsed=time.monotonic() - started,
            seen=seen,
            server_log=server_log.read_text(errors="replace") if server_log.exists() else "",
        )
