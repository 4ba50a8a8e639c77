"""Diskless VMs on a 9P root: initramfs builder, QEMU launcher, the `ninep` command."""
