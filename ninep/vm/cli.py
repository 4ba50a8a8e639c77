"""The `ninep` command: build an initramfs, build a root tree, boot a VM on a 9P root.

    ninep initramfs [--kernel-release R | --modules-dir DIR] -o FILE
    ninep rootfs busybox|debian DIR
    ninep vm ROOTFS|IMAGE.tar[.gz|.xz|.zst] [--cow] [--upper DIR] [--kernel PATH] [--transport T] [--server ninepd|diod] [--cmd "..."]
                    [--overlay] [--memory M] [--smp N] [--accel auto|kvm|tcg] [--cache MODE]
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

import trio

from ninep.vm.accel import default_kernel
from ninep.vm.initramfs import BuildError, DEFAULT_MODULES, build_initramfs, modules_dir_for
from ninep.vm.qemu import SERVERS, TRANSPORTS, LaunchError, VmConfig, run_vm
from ninep.vm.rootfs import build_busybox_rootfs, build_debian_rootfs

#: Console lines that only say the machine stopped; hidden when showing a command's output.
POWER_OFF_NOISE = ("ninep-init: run: exit status", "reboot: Power down")
EXIT_NO_STATUS = 125


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ninep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    initramfs = commands.add_parser("initramfs", help="write the guest initramfs")
    source = initramfs.add_mutually_exclusive_group()
    source.add_argument("--kernel-release", help="take modules from /lib/modules/RELEASE")
    source.add_argument("--modules-dir", type=Path, help="a lib/modules/RELEASE directory")
    source.add_argument("--no-modules", action="store_true",
                        help="the kernel has 9P and virtio built in")
    initramfs.add_argument("--module", action="append", default=[],
                           help="also include this module (repeatable)")
    initramfs.add_argument("-o", "--output", type=Path, required=True)

    rootfs = commands.add_parser("rootfs", help="build a root tree to export")
    rootfs.add_argument("kind", choices=("busybox", "debian"))
    rootfs.add_argument("dest", type=Path)

    vm = commands.add_parser("vm", help="boot a guest whose root is ROOTFS over 9P")
    vm.add_argument("rootfs", type=Path, help="a directory, or a tarball (implies --cow)")
    vm.add_argument("--cow", action="store_true",
                    help="ROOTFS stays untouched: the guest's writes go to a per-guest upper "
                         "directory, temporary unless --upper (docs/cow.md)")
    vm.add_argument("--upper", type=Path, help="with --cow: keep the guest's changes here")
    vm.add_argument("--kernel", type=Path, help="default: newest /boot/vmlinuz-*")
    vm.add_argument("--modules-dir", type=Path, help="default: /lib/modules/<kernel release>")
    vm.add_argument("--transport", choices=TRANSPORTS, default="virtio-serial")
    vm.add_argument("--server", choices=SERVERS, default="ninepd")
    vm.add_argument("--cmd", help="run this shell command in the guest, print its output, "
                                  "power off, exit with its status")
    vm.add_argument("--overlay", action="store_true",
                    help="guest writes go to a tmpfs over the read-only 9P root")
    vm.add_argument("--memory", type=int, default=512, help="MiB (default 512)")
    vm.add_argument("--smp", type=int, default=1)
    vm.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    vm.add_argument("--cache", choices=("none", "loose", "fscache", "mmap"), default="loose")
    vm.add_argument("--msize", type=int, default=512000)
    vm.add_argument("--timeout", type=float, default=600.0, help="seconds, for --cmd runs")
    vm.add_argument("--disk-image", type=Path, help="with --transport disk: an ext4 image")
    vm.add_argument("--append", action="append", default=[], help="extra kernel argument")
    vm.add_argument("--verbose", action="store_true", help="show the kernel's boot messages")
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
    config = VmConfig(
        rootfs=args.rootfs.resolve(), kernel=args.kernel or default_kernel(),
        modules_dir=args.modules_dir, transport=args.transport, server=args.server,
        script=args.cmd, overlay=args.overlay, memory_mb=args.memory, smp=args.smp,
        accel=args.accel, cache=args.cache, msize=args.msize,
        timeout=args.timeout if args.cmd else 10 ** 9, quiet=bool(args.cmd) and not args.verbose,
        interactive=args.cmd is None, disk_image=args.disk_image,
        extra_append=tuple(args.append), server_args=cow or ())

    def show(line: str) -> None:
        if config.quiet and re.sub(r"^\[[ \d.]+\] ", "", line).startswith(POWER_OFF_NOISE):
            return
        print(line, flush=True)

    result = trio.run(functools.partial(run_vm, config, on_line=show))
    if args.cmd is None:
        return 0
    if result.exit_status is None:
        why = "timed out" if result.timed_out else f"QEMU exited {result.qemu_returncode}"
        print(f"ninep vm: the command never reported an exit status ({why})", file=sys.stderr)
        if result.server_log.strip():
            print(f"9P server log:\n{result.server_log[-2000:]}", file=sys.stderr)
        return EXIT_NO_STATUS
    return result.exit_status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "initramfs":
            modules_dir = None if args.no_modules else (
                args.modules_dir or modules_dir_for(args.kernel_release or default_kernel()
                                                    .name.removeprefix("vmlinuz-")))
            build_initramfs(modules_dir, args.output,
                            modules=DEFAULT_MODULES + tuple(args.module))
            print(args.output)
            return 0
        if args.command == "rootfs":
            builder = build_busybox_rootfs if args.kind == "busybox" else build_debian_rootfs
            print(builder(args.dest))
            return 0
        return _vm(args)
    except (BuildError, LaunchError, FileNotFoundError) as error:
        print(f"ninep {args.command}: {error}", file=sys.stderr)
        return 1


def main_entry() -> None:
    sys.exit(main())
