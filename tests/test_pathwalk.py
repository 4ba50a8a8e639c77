"""The symlink walk shared by the client shell and ninep vm's root check, over a table."""

import errno

import pytest

from ninep.pathwalk import MAX_SYMLINKS, resolve

LINKS = {"lib": "usr/lib", "sbin/init": "/lib/systemd/systemd", "loop": "loop",
         "up": "../../etc", "usr/lib/rel": "../bin/sh"}


@pytest.mark.parametrize("path, expected", [
    ("/sbin/init", "usr/lib/systemd/systemd"),   # absolute target, through a dir link
    ("lib/x", "usr/lib/x"),
    ("../../etc/passwd", "etc/passwd"),          # .. at the root stays at the root
    ("up/hosts", "etc/hosts"),
    ("usr/lib/rel", "usr/bin/sh"),
    ("./a//b/.", "a/b"),
    ("/", ""),
])
def test_resolves_like_the_kernel_inside_the_root(path, expected):
    asked = []

    def target_of(candidate):
        asked.append(candidate)
        return LINKS.get(candidate)

    assert resolve(path, target_of) == expected
    assert all(not a.startswith("/") for a in asked)


def test_a_loop_is_eloop_after_the_kernels_limit():
    hops = []
    with pytest.raises(OSError) as caught:
        resolve("loop", lambda c: hops.append(c) or LINKS.get(c))
    assert caught.value.errno == errno.ELOOP and len(hops) == MAX_SYMLINKS + 1
