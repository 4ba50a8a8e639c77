"""Extended attributes: set, get, list, remove, create/replace flags."""

import errno

import pytest

from ninep.protocol.constants import XATTR_CREATE, XATTR_REPLACE

from .helpers import raises_errno, walked


@pytest.mark.needs("xattrs")
async def test_xattr_round_trip(root, backend):
    async with walked(root, "dir/file.txt") as f:
        await f.xattr_set("user.color", b"blue", 0)
        assert await f.xattr_get("user.color") == b"blue"
        assert "user.color" in await f.xattr_list()
        await f.xattr_set("user.color", b"red", XATTR_REPLACE)
        assert await f.xattr_get("user.color") == b"red"
        with raises_errno(errno.EEXIST):
            await f.xattr_set("user.color", b"x", XATTR_CREATE)
        await f.xattr_remove("user.color")
        with raises_errno(errno.ENODATA):
            await f.xattr_get("user.color")
        with raises_errno(errno.ENODATA):
            await f.xattr_set("user.other", b"x", XATTR_REPLACE)


@pytest.mark.needs("xattrs")
async def test_xattr_empty_value_and_binary(root, backend):
    async with walked(root, "dir") as d:
        await d.xattr_set("user.empty", b"", 0)
        assert await d.xattr_get("user.empty") == b""
        await d.xattr_set("user.bin", bytes(range(256)), 0)
        assert await d.xattr_get("user.bin") == bytes(range(256))
