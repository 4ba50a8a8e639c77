"""The launcher's decisions without booting: QEMU argv, kernel command line, CLI errors."""

import shutil
import tempfile
from pathlib import Path

import pytest

from ninep.vm import cli, qemu
from ninep.vm.initramfs import read_cpio
from ninep.vm.qemu import LaunchError, VmConfig, plan_vm

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed")


def _plan(tmp_path, rootfs=None, **options):
    config = VmConfig(rootfs=rootfs or tmp_path / "root", kernel=Path("/boot/vmlinuz-test"),
                      **options)
    return plan_vm(config, tmp_path, tmp_path / "initrd.cpio", "tcg")


def _option(argv, flag):
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


@needs_qemu
def test_virtio_serial_with_ninepd_uses_a_reconnecting_unix_chardev(tmp_path):
    plan = _plan(tmp_path)
    chardev = _option(plan.qemu_argv, "-chardev")
    assert chardev == [f"socket,id=ninep0,path={tmp_path}/ninepd.sock,reconnect=1"]
    assert "virtserialport,bus=vser0.0,chardev=ninep0,name=ninep" in _option(plan.qemu_argv,
                                                                               "-device")
    assert plan.server_argv[-4:] == ["--export", str(tmp_path / "root"), "--listen",
                                     f"unix://{tmp_path}/ninepd.sock"]
    append = plan.append.split()
    assert {"root=9p", "ninep.src=virtio-serial://ninep", "ninep.cache=loose",
            "ninep.msize=512000", "console=ttyS0", "panic=-1"} <= set(append)
    assert not any(word.startswith("ninep.aname=") for word in append)
    assert _option(plan.qemu_argv, "-accel") == ["tcg"] and "-no-reboot" in plan.qemu_argv


@needs_qemu
def test_tcp_with_diod_forwards_a_virtual_address_through_the_relay(tmp_path):
    # diod needs every parent of the export open to others; tmp_path's are 0700
    export = Path(tempfile.gettempdir()) / "ninep-test-export-never-created"
    plan = _plan(tmp_path, export, transport="tcp", server="diod", overlay=True, quiet=True)
    port = plan.server_ready[1]
    assert plan.server_argv[:2] == ["diod", "-f"] and f"127.0.0.1:{port}" in plan.server_argv
    netdev = _option(plan.qemu_argv, "-netdev")[0]
    assert netdev.startswith("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:564-cmd:")
    assert netdev.endswith(f"-m ninep.vm.relay tcp:127.0.0.1:{port}")
    append = plan.append.split()
    assert {"ninep.src=tcp://10.0.2.100:564", f"ninep.aname={export}",
            "ninep.overlay=tmpfs", "quiet"} <= set(append)


@needs_qemu
def test_qemu_9p_and_disk_need_no_server(tmp_path):
    plan = _plan(tmp_path, transport="virtio")
    assert plan.server_argv is None
    assert _option(plan.qemu_argv, "-fsdev") == [
        f"local,id=fs0,path={tmp_path}/root,security_model=passthrough"]
    disk = _plan(tmp_path, transport="disk", disk_image=tmp_path / "a,b.img")
    assert _option(disk.qemu_argv, "-drive") == [f"file={tmp_path}/a,,b.img,format=raw,if=virtio"]
    assert "root=/dev/vda" in disk.append.split() and "root=9p" not in disk.append.split()
    with pytest.raises(LaunchError, match="disk_image"):
        _plan(tmp_path, transport="disk")


@needs_qemu
def test_vsock_without_vhost_vsock_makes_ninepd_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "kernel_vhost_vsock_usable", lambda: False)
    plan = _plan(tmp_path, transport="vsock")
    socket_path = f"{tmp_path}/vm.vsock"
    assert f"vhost-user-vsock://{socket_path}?cid=3&port=564" in plan.server_argv
    assert plan.server_ready == ("listening", socket_path)  # never a connecting probe
    assert _option(plan.qemu_argv, "-device")[-1] == "vhost-user-vsock-pci,chardev=vsock0"
    assert _option(plan.qemu_argv, "-object") == [
        "memory-backend-memfd,id=guest-ram,size=512M,share=on"]
    assert plan.helper_argv is None and "ninep.src=vsock://2:564" in plan.append.split()
    with pytest.raises(LaunchError, match="server ninepd"):
        _plan(tmp_path, transport="vsock", server="diod")


@needs_qemu
def test_virtiofs_runs_debians_virtiofsd_and_mounts_the_root_by_tag(tmp_path, monkeypatch):
    virtiofsd = tmp_path / "virtiofsd"
    virtiofsd.write_text("#!/bin/sh\n")
    virtiofsd.chmod(0o755)
    monkeypatch.setattr(qemu, "VIRTIOFSD", str(virtiofsd))
    plan = _plan(tmp_path, transport="virtiofs")
    socket_path = f"{tmp_path}/virtiofs.sock"
    assert plan.server_argv[:2] == [qemu.VIRTIOFSD, f"--socket-path={socket_path}"]
    assert f"source={tmp_path}/root" in plan.server_argv
    assert plan.server_ready == ("listening", socket_path)  # QEMU's one connection
    assert _option(plan.qemu_argv, "-device")[-1] == "vhost-user-fs-pci,chardev=fs0,tag=rootfs"
    assert {"root=rootfs", "rootfstype=virtiofs"} <= set(plan.append.split())
    assert "root=9p" not in plan.append.split()
    monkeypatch.setattr(qemu, "VIRTIOFSD", str(tmp_path / "not-installed"))
    with pytest.raises(LaunchError, match="qemu-system-common"):
        _plan(tmp_path, transport="virtiofs")


@needs_qemu
def test_vsock_with_kernel_vhost_vsock_keeps_the_relay(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "kernel_vhost_vsock_usable", lambda: True)
    plan = _plan(tmp_path, transport="vsock")
    assert "vhost-vsock-pci,guest-cid=3" in _option(plan.qemu_argv, "-device")
    assert "--listen-vsock" in plan.helper_argv


def test_cli_initramfs_writes_an_image_with_the_init(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "initrd.cpio"
    assert cli.main(["initramfs", "--no-modules", "-o", str(out)]) == 0
    paths = {entry.path for entry in read_cpio(out.read_bytes())}
    assert {"init", "dev/console", "newroot"} <= paths
    assert not any(path.startswith("lib/modules") for path in paths)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert cli.main(["vm", str(tmp_path / "missing"), "--cmd", "true"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["initramfs", "--modules-dir", str(tmp_path), "-o",
                     str(tmp_path / "x")]) == 1
    assert "modules.dep not found" in capsys.readouterr().err


def test_a_mapped_tree_is_served_mapped_whoever_boots_it(tmp_path, monkeypatch, capsys):
    """Root booting a tree made by `rootfs import` (or without root) must not get
    passthrough's view of it: 0600 files and symlinks stored as files."""
    from ninep.fs.hostmodel import write_mapped

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/sh").write_text("")
    (root / "bin/sh").chmod(0o755)
    kernel = tmp_path / "vmlinuz"
    kernel.write_text("")
    try:
        write_mapped(str(root), uid=0, gid=0, mode=0o40755)
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    seen = []

    def fake_run_vm(config, **_):
        seen.append(config)
        raise LaunchError("stop here")

    monkeypatch.setattr(cli, "run_vm", fake_run_vm)
    monkeypatch.setattr(cli, "kvm_problem", lambda kernel: None)
    assert cli.main(["vm", str(root), "--cmd", "true", "--kernel", str(kernel),
                     "--accel", "tcg"]) == 1
    assert "stop here" in capsys.readouterr().err
    assert seen[0].server_args[-2:] == ("--identity", "mapped")
    assert seen[0].virtio_security_model == "mapped-xattr"
    assert cli.main(["vm", str(root), "--cmd", "true", "--server", "diod"]) == 2
    assert "mapped tree" in capsys.readouterr().err
