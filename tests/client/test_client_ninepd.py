"""The same host checks as test_client_diod.py, against ninep's own server (in process).

Client and server share only the codec, so this cross-checks both: the server's
HostFilesystem export on one side, the client's helpers on the other, the host
directory as the referee.
"""

from __future__ import annotations

import uuid
from functools import partial

import pytest

from client_host_checks import CHECKS, Target
from ninep.fs.host import HostFilesystem
from ninep.server import serve

pytestmark = [pytest.mark.root]  # chown, and attaching as uid 0


@pytest.fixture
async def ninepd(nursery, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    server = await nursery.start(partial(serve, HostFilesystem(str(export)), "tcp://127.0.0.1:0",
                                         grace_period=1.0))
    yield server.addresses[0], export
    server.shutdown()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
async def test_against_ninepd(ninepd, check):
    url, export = ninepd
    sub = f"{check.__name__[6:40]}-{uuid.uuid4().hex[:6]}"
    (export / sub).mkdir()
    await check(Target(url=url, aname="", export=export, sub=sub, server="ninepd"))
