"""The `ninep` command: build an initramfs, build a root tree, boot a VM on a 9P root.

    ninep initramfs [--kernel-release R | --modules-dir DIR | --no-modules] [--module M] -o FILE
    ninep rootfs busybox|debian DIR [--mapped]
    ninep rootfs import ROOT.tar[.gz|.xz|.bz2|.zst] DIR      (a mapped tree, no root needed)
    ninep vm ROOTFS|IMAGE.tar[.gz|.xz|.zst] [--cow] [--upper DIR] [--kernel PATH] [--modules-dir DIR] [--transport T] [--server ninepd|diod]
                    [--cmd "..."] [--overlay] [--memory MIB] [--smp N] [--accel auto|kvm|tcg]
                    [--cache MODE] [--msize N] [--timeout S] [--disk-image IMG]
                    [--append ARG ...] [--verbose]

Exit status: `ninep vm --cmd` exits with the command's status (125 if it never reported
one); 1 when the guest kernel panics, QEMU cannot start or a build step fails; 2 for a
root that cannot boot or bad arguments; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import trio

from ninep.vm.accel import KvmUnavailable, default_kernel, kvm_problem
from ninep.vm.initramfs import BuildError, DEFAULT_MODULES, build_initramfs, modules_dir_for
from ninep.vm.preflight import RootProblem, check_root, is_mapped_tree, panic_reason
from ninep.vm.qemu import SERVERS, TRANSPORTS, LaunchError, VmConfig, run_vm
from ninep.vm.rootfs import build_busybox_rootfs, build_debian_rootfs
from ninep.vm.tarimport import import_tarball

#: Console lines that only say the machine stopped; hidden when showing a command's output.
POWER_OFF_NOISE = ("ninep-init: run: exit status", "reboot: Power down")
EXIT_NO_STATUS = 125
EXIT_INTERRUPTED = 130

ROOTFS_HELP = """\
busybox: a static busybox with every applet, busybox init, users root and guest
(about 2 MB, built in seconds; needs busybox-static). debian: Debian bookworm (minbase
with systemd and udev, serial-console autologin as root); the first run debootstraps it
from deb.debian.org, about 258 MB downloaded, and keeps a tarball in ~/.cache/ninep
(XDG_CACHE_HOME), so later runs only extract it (making it needs debootstrap and root).
import: unpack any root tarball (debootstrap or mmdebstrap output, a stage3, an image
layer) into a mapped tree, owners, modes, devices and hard links from its headers.
A mapped tree keeps owners and modes in user.virtfs.* xattrs (ninepd --identity mapped,
QEMU mapped-xattr), so no root is needed to make or serve it; busybox and debian make
one when not run as root, or with --mapped. `ninep vm` serves a mapped tree mapped."""

VM_HELP = """\
Serve ROOTFS with ninepd (or diod), build or reuse the guest initramfs, and boot QEMU
with the root over 9P. Without --cmd the guest console is this terminal (Ctrl-A X
quits QEMU). With --cmd the command runs in the guest with /bin/sh -c, its output is
printed, the guest powers off, and ninep vm exits with the command's status. The root
is checked first: it needs /sbin/init (or the init= given with --append), or /bin/sh
for --cmd. A guest kernel panic exits 1 with its reason on the last line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ninep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    initramfs = commands.add_parser(
        "initramfs", help="write the guest initramfs",
        description="Write an initramfs: the static ninep init (compiled once, cached in "
                    "~/.cache/ninep) and the 9P, virtio and vsock modules of the kernel.")
    source = initramfs.add_mutually_exclusive_group()
    source.add_argument("--kernel-release", help="take modules from /lib/modules/RELEASE")
    source.add_argument("--modules-dir", type=Path, help="a lib/modules/RELEASE directory")
    source.add_argument("--no-modules", action="store_true",
                        help="the kernel has 9P and virtio built in")
    initramfs.add_argument("--module", action="append", default=[],
                           help="also include this module (repeatable)")
    initramfs.add_argument("-o", "--output", type=Path, required=True)

    rootfs = commands.add_parser("rootfs", help="build a root tree to export (busybox, debian or import)",
                                 description="Build a root tree to boot with `ninep vm` "
                                             "or to export with ninepd. " + ROOTFS_HELP)
    rootfs.add_argument("kind", choices=("busybox", "debian", "import"),
                        help="busybox: a 2 MB demo root; debian: bookworm with systemd "
                             "(first run downloads about 258 MB); import: unpack a root "
                             "tarball into a mapped tree")
    rootfs.add_argument("dest", type=Path,
                        help="directory to fill, created if missing (import: the tarball)")
    rootfs.add_argument("import_dest", type=Path, nargs="?", metavar="DIR",
                        help="import: the directory to fill")
    rootfs.add_argument("--mapped", action=argparse.BooleanOptionalAction, default=None,
                        help="owners and modes in user.virtfs.* xattrs (ninepd --identity "
                             "mapped, QEMU mapped-xattr); default when not root")

    vm = commands.add_parser("vm", help="boot a guest whose root is ROOTFS over 9P",
                             description=VM_HELP)
    d = " (default: %(default)s)"
    vm.add_argument("rootfs", type=Path, metavar="ROOTFS",
                    help="the host directory that becomes the guest's /, or a root tarball "
                         "(served in place, implies --cow)")
    vm.add_argument("--cow", action="store_true",
                    help="ROOTFS stays untouched: the guest's writes go to a per-guest upper "
                         "directory, temporary unless --upper (docs/cow.md; default: off)")
    vm.add_argument("--upper", type=Path, metavar="DIR",
                    help="with --cow: keep the guest's changes here (default: a temporary one)")
    vm.add_argument("--kernel", type=Path, metavar="PATH",
                    help="guest kernel (default: the newest /boot/vmlinuz-* with modules)")
    vm.add_argument("--modules-dir", type=Path, metavar="DIR",
                    help="modules for the initramfs (default: /lib/modules/<kernel release>)")
    vm.add_argument("--transport", choices=TRANSPORTS, default="virtio-serial",
                    help="how the guest reaches the 9P server" + d)
    vm.add_argument("--server", choices=SERVERS, default="ninepd", help="9P server to run" + d)
    vm.add_argument("--cmd", metavar='"COMMAND"',
                    help="run this shell command in the guest, print its output, power off, "
                         "exit with its status (default: an interactive console)")
    vm.add_argument("--overlay", action="store_true",
                    help="guest writes go to a tmpfs over the read-only 9P root (default: off)")
    vm.add_argument("--memory", type=int, default=512, metavar="MIB", help="guest RAM in MiB" + d)
    vm.add_argument("--smp", type=int, default=1, metavar="N", help="guest CPUs" + d)
    vm.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="auto: KVM if a probe boot works here, else TCG; kvm fails at once "
                         "where KVM cannot run a guest" + d)
    vm.add_argument("--cache", choices=("none", "loose", "fscache", "mmap"), default="loose",
                    help="the guest's v9fs cache mode" + d)
    vm.add_argument("--msize", type=int, default=512000, metavar="N",
                    help="9P msize the guest asks for" + d)
    vm.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                    help="how long a --cmd run may take before QEMU is killed" + d)
    vm.add_argument("--disk-image", type=Path, metavar="IMG",
                    help="with --transport disk: an ext4 image (default: none)")
    vm.add_argument("--append", action="append", default=[], metavar="ARG",
                    help="extra kernel argument, e.g. init=/bin/sh (repeatable; default: none)")
    vm.add_argument("--verbose", action="store_true",
                    help="with --cmd, show the kernel's boot messages too (default: off)")
    return parser


def _cow_server_args(args: argparse.Namespace) -> tuple[str, ...] | None:
    """ninepd arguments for a copy-on-write root, None for a plain one."""
    from ninep.fs.tarbase import is_tarball

    if not (args.cow or args.upper or is_tarball(str(args.rootfs))):
        return None
    if args.upper:
        return ("--upper", str(args.upper.resolve()))
    return ("--throwaway-upper",)


def _vm(args: argparse.Namespace) -> int:
    cow = _cow_server_args(args)
    if cow is not None and (args.server != "ninepd" or args.transport in ("virtio", "disk")):
        print("ninep vm: --cow and tarball roots need --server ninepd over virtio-serial, "
              "tcp or vsock", file=sys.stderr)
        return 2
    if not args.rootfs.is_dir() and args.transport != "disk" and cow is None:
        print(f"ninep vm: {args.rootfs} is not a directory", file=sys.stderr)
        return 2
    if args.transport != "disk" and args.rootfs.is_dir():  # a tarball is read by ninepd
        try:
            check_root(args.rootfs, args.cmd, tuple(args.append))
        except RootProblem as problem:
            print(f"ninep vm: {problem}", file=sys.stderr)
            return 2
    # A mapped tree (rootfs import, or busybox/debian made without root) must be served
    # mapped whoever boots it: as root ninepd would default to passthrough and show
    # 0600 files and symlinks as plain files.
    mapped = args.rootfs.is_dir() and is_mapped_tree(args.rootfs)
    if mapped and args.server == "diod":
        print(f"ninep vm: {args.rootfs} is a mapped tree (owners in user.virtfs.* xattrs), "
              "which diod cannot serve: use --server ninepd", file=sys.stderr)
        return 2
    kernel = args.kernel or default_kernel()
    if not kernel.is_file():
        print(f"ninep vm: --kernel {kernel}: no such file", file=sys.stderr)
        return 2
    if args.accel == "kvm":  # before anything starts: a guest that cannot run just hangs
        problem = kvm_problem(kernel)
        if problem:
            print(f"ninep vm: --accel kvm: {problem}", file=sys.stderr)
            return 1
    scratch = None
    if cow == ("--throwaway-upper",):
        # ninepd is killed at the end of the run, before it could remove its temporary
        # upper: it makes it below a directory this launcher removes.
        scratch = tempfile.mkdtemp(prefix="ninep-vm-upper-")
        cow = ("--throwaway-upper", "--upper", os.path.join(scratch, "{aname}"))
    server_args = (*(cow or ()), *(("--identity", "mapped") if mapped else ()))
    config = VmConfig(
        rootfs=args.rootfs.resolve(), kernel=kernel,
        modules_dir=args.modules_dir, transport=args.transport, server=args.server,
        script=args.cmd, overlay=args.overlay, memory_mb=args.memory, smp=args.smp,
        accel=args.accel, cache=args.cache, msize=args.msize,
        timeout=args.timeout if args.cmd else 10 ** 9, quiet=bool(args.cmd) and not args.verbose,
        interactive=args.cmd is None, disk_image=args.disk_image,
        extra_append=tuple(args.append), server_args=server_args,
        virtio_security_model="mapped-xattr" if mapped else "passthrough")

    def show(line: str) -> None:
        if config.quiet and re.sub(r"^\[[ \d.]+\] ", "", line).startswith(POWER_OFF_NOISE):
            return
        print(line, flush=True)

    # Interactive: QEMU's output is passed through as it comes, not line by line.
    try:
        result = trio.run(functools.partial(run_vm, config,
                                            on_line=None if config.interactive else show))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    panic = panic_reason(result.console)
    if args.cmd is None or result.exit_status is None:
        if args.cmd is not None and result.server_log.strip():
            print(f"9P server log:\n{result.server_log[-2000:]}", file=sys.stderr)
        if panic:
            print(f"ninep vm: the guest kernel panicked: {panic}", file=sys.stderr)
            return 1 if args.cmd is None else EXIT_NO_STATUS
        if result.timed_out:
            print(f"ninep vm: timed out after {args.timeout:g} s", file=sys.stderr)
        if args.cmd is None:
            return 0 if result.qemu_returncode == 0 else 1
        why = "timed out" if result.timed_out else f"QEMU exited {result.qemu_returncode}"
        print(f"ninep vm: the command never reported an exit status ({why})", file=sys.stderr)
        return EXIT_NO_STATUS
    return result.exit_status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:  # Ctrl-C inside trio comes wrapped in nurseries
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        return EXIT_INTERRUPTED
    except (BuildError, LaunchError, KvmUnavailable, OSError, tarfile.TarError) as error:
        # One line; a build step's captured output (a compiler's errors) stays below it,
        # its last line (debootstrap's "E: ...") joins the first.
        first, *detail = [line for line in str(error).splitlines() if line.strip()] or [""]
        text = f"{first.rstrip(':')}: {detail.pop().strip()}" if detail else first
        if detail:
            text += "".join(f"\n  {line}" for line in detail)
        if isinstance(error, OSError) and error.strerror:
            text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
            if isinstance(error, PermissionError) and args.command == "rootfs":
                text += " (building a root tree with its owners needs root)"
        print(f"ninep {args.command}: {text}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"ninep {args.command}: {' '.join(map(str, error.cmd))} exited "
              f"{error.returncode}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if args.command == "initramfs":
        modules_dir = None if args.no_modules else (
            args.modules_dir or modules_dir_for(args.kernel_release or default_kernel()
                                                .name.removeprefix("vmlinuz-")))
        build_initramfs(modules_dir, args.output,
                        modules=DEFAULT_MODULES + tuple(args.module))
        print(args.output)
        return 0
    if args.command == "rootfs":
        if args.kind == "import":
            if args.import_dest is None:
                print("ninep rootfs import: give ROOT.tar and DIR", file=sys.stderr)
                return 2
            report = import_tarball(args.dest, args.import_dest)
            print(f"{args.import_dest}: {report.summary()}")
            return 0
        builder = build_busybox_rootfs if args.kind == "busybox" else build_debian_rootfs
        print(builder(args.dest, mapped=args.mapped))
        return 0
    return _vm(args)


def main_entry() -> None:
    sys.exit(main())
