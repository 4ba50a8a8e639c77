"""Root filesystems to export to a guest: a busybox demo and a debootstrapped Debian.

Both are built once into the cache (~/.cache/ninep) and copied out per use, so a test
starts from a pristine tree in a second (busybox) or from a tarball instead of the
network (Debian).
"""

from __future__ import annotations

import hashlib
import os
import stat
import shutil
import subprocess
from pathlib import Path

from ninep.fs.hostmodel import write_mapped
from ninep.vm.initramfs import BuildError, cache_dir
from ninep.vm.progress import note, run_showing_progress

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = "systemd-sysv,udev"

#: Printed on the console by the Debian marker unit once multi-user.target is reached.
BOOT_MARKER = "NINEP-BOOT-MARKER multi-user reached"

BUSYBOX_INITTAB = """\
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/sync
"""
BUSYBOX_RCS = """\
#!/bin/sh
# ninep-init has already moved /dev, /proc and /sys into this root.
mount -t tmpfs tmpfs /tmp 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
hostname ninep-guest
echo "busybox rootfs up: $(uname -r), root is $(grep ' / ' /proc/mounts | head -n 1)"
"""
PASSWD = "root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000:guest:/home/guest:/bin/sh\n"
GROUP = "root:x:0:\nguest:x:1000:\n"


def busybox_binary() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.isfile(candidate):
            return Path(candidate)
    raise BuildError("busybox not found: install busybox-static")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_busybox_rootfs(dest: Path, mapped: bool | None = None) -> Path:
    """A static busybox with every applet linked, busybox init, root and guest users.

    ``mapped`` (default: when not root) builds the tree for ninepd's mapped identity
    model without root: owners and modes in user.virtfs.* xattrs, symlinks as files
    holding their target (QEMU's mapped-xattr layout, so QEMU can serve it too)."""
    if mapped is None:
        mapped = os.geteuid() != 0
    busybox = busybox_binary()
    dest.mkdir(parents=True, exist_ok=True)
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys",
                      "dev", "tmp", "run", "root", "home/guest", "var/tmp"):
        (dest / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin/busybox")
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    links: list[tuple[Path, str]] = []
    for applet in applets:
        link = dest / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(dest / "bin/busybox", link.parent)
        if mapped:
            link.write_text(target)
            links.append((link, target))
        else:
            link.symlink_to(target)
    _write(dest / "etc/inittab", BUSYBOX_INITTAB)
    _write(dest / "etc/init.d/rcS", BUSYBOX_RCS, 0o755)
    _write(dest / "etc/passwd", PASSWD)
    _write(dest / "etc/group", GROUP)
    if mapped:
        _map_ownership(dest, {dest / "home/guest": (1000, 1000)},
                       {dest / "tmp": stat.S_IFDIR | 0o1777}, links)
    else:
        (dest / "tmp").chmod(0o1777)
        os.chown(dest / "home/guest", 1000, 1000)
    return dest


def _map_ownership(root: Path, owners: dict[Path, tuple[int, int]], modes: dict[Path, int],
                   links: list[tuple[Path, str]]) -> None:
    """Give every entry of a tree built without root its guest owner and mode in
    mapped xattrs (root:root and the host mode unless said otherwise)."""
    link_paths = {path for path, _ in links}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if path in link_paths:
            mode = stat.S_IFLNK | 0o777
        else:
            mode = modes.get(path, st.st_mode)
            path.chmod(stat.S_IMODE(st.st_mode) | (0o700 if path.is_dir() else 0o600))
        uid, gid = owners.get(path, (0, 0))
        write_mapped(str(path), uid=uid, gid=gid, mode=mode)


def cached_busybox_rootfs() -> Path:
    """The pristine busybox tree in the cache, built on first use (keyed by busybox)."""
    busybox = busybox_binary()
    key = hashlib.sha256(busybox.read_bytes() + BUSYBOX_RCS.encode() + BUSYBOX_INITTAB.encode()
                         + PASSWD.encode()).hexdigest()[:12]
    base = cache_dir() / f"rootfs-busybox-{key}"
    if not base.exists():
        staging = base.with_name(base.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        build_busybox_rootfs(staging)
        staging.rename(base)
    return base


def copy_tree(source: Path, dest: Path) -> Path:
    """Copy a root tree keeping owners, modes, symlinks and special files."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{source}/.", str(dest)], check=True)
    return dest


# ---- Debian ----------------------------------------------------------------------

MARKER_UNIT = f"""\
[Unit]
Description=ninep boot marker: say multi-user.target was reached, then power off
ConditionKernelCommandLine=ninep.marker=1
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{BOOT_MARKER}" > /dev/console; systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
"""
AUTOLOGIN_DROPIN = """\
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
"""


def configure_debian(root: Path) -> None:
    """Serial console autologin, the marker unit, no root password, a hostname."""
    _write(root / "etc/systemd/system/ninep-boot-marker.service", MARKER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "ninep-boot-marker.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/ninep-boot-marker.service")
    _write(root / "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
           AUTOLOGIN_DROPIN)
    _write(root / "etc/hostname", "ninep-debian\n")
    _write(root / "etc/fstab", "# root is mounted over 9P by ninep-init\n")
    subprocess.run(["chroot", str(root), "passwd", "-d", "root"], check=True,
                   capture_output=True)


def debian_tarball() -> Path:
    return cache_dir() / f"rootfs-debian-{DEBIAN_SUITE}.tar"


def build_debian_rootfs(dest: Path, mirror: str = DEBIAN_MIRROR,
                        mapped: bool | None = None) -> Path:
    """Extract the cached Debian tree into dest; debootstrap it first if not cached.

    ``mapped`` (default: when not root) imports the tarball as a mapped tree
    (ninep.vm.tarimport), which needs no root; making the tarball does (debootstrap)."""
    if mapped is None:
        mapped = os.geteuid() != 0
    if mapped:
        from ninep.vm.tarimport import import_tarball
        tarball = debian_tarball()
        if not tarball.exists():
            if os.geteuid() != 0:
                raise BuildError(
                    f"no Debian tarball cached at {tarball}, and making one needs root "
                    f"(debootstrap): run `ninep rootfs debian` once as root with the same "
                    f"XDG_CACHE_HOME, or `ninep rootfs import` any root tarball")
            tarball = cached_debian_tarball(mirror)
        import_tarball(tarball, dest)
        return dest
    tarball = cached_debian_tarball(mirror)
    dest.mkdir(parents=True, exist_ok=True)
    note(f"extracting {tarball} into {dest}")
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(dest), "-xpf",
                    str(tarball)], check=True)
    return dest


def cached_debian_tarball(mirror: str = DEBIAN_MIRROR) -> Path:
    """The debootstrapped, configured Debian root as a tarball (made once, as root)."""
    tarball = debian_tarball()
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap not found: install debootstrap")
        staging = cache_dir() / f"debootstrap.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        result = run_showing_progress(
            ["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", DEBIAN_SUITE,
             str(staging), mirror],
            f"debootstrap {DEBIAN_SUITE} from {mirror} (once: about 258 MB; cached in {tarball})")
        if result.returncode != 0:
            raise BuildError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        configure_debian(staging)
        partial = tarball.with_suffix(f".tmp{os.getpid()}")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(staging), "-cf",
                        str(partial), "."], check=True)
        partial.rename(tarball)
        shutil.rmtree(staging, ignore_errors=True)
    return tarball
