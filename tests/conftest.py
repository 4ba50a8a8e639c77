"""Shared fixtures. Warnings are errors (pyproject); anything that sleeps uses autojump."""

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Skip, with a reason, what this machine cannot run (VM tests without QEMU etc.)."""
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    have_diod = shutil.which("diod") is not None or os.path.exists("/usr/sbin/diod")
    is_root = os.geteuid() == 0
    for item in items:
        if "vm" in item.keywords and not have_qemu:
            item.add_marker(pytest.mark.skip(reason="qemu-system-x86_64 not installed"))
        if "diod" in item.keywords and not have_diod:
            item.add_marker(pytest.mark.skip(reason="diod not installed"))
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root"))
