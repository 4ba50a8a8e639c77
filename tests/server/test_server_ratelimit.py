"""The log limiter as a table, and 50,000 malformed requests on one connection."""

import logging
import struct

import pytest

from ninep.protocol import messages as m
from ninep.protocol.constants import MessageType
from ninep.server.ratelimit import LogLimiter

from srv_memfs import MemFilesystem
from srv_wire import served

# (cause, time) -> (written?, dropped count carried), for burst 2 and a 60 s window
STEPS = [
    (("a", 0.0), (True, 0)),
    (("a", 1.0), (True, 0)),
    (("a", 2.0), (False, 0)),   # burst spent: counted, not written
    (("b", 2.5), (True, 0)),    # another cause has its own budget
    (("a", 3.0), (False, 0)),
    (("a", 59.9), (False, 0)),  # still the first window
    (("a", 60.0), (True, 3)),   # new window: this line carries the three dropped
    (("a", 61.0), (True, 0)),
    (("a", 62.0), (False, 0)),
    (("a", 200.0), (True, 1)),
    (("b", 200.0), (True, 0)),  # nothing was dropped for b
]


def test_limiter_table():
    limiter = LogLimiter(window=60.0, burst=2)
    for (cause, now), expected in STEPS:
        assert limiter.admit(cause, now) == expected, (cause, now)
    assert limiter.pending() == {}
    assert limiter.admit("a", 201.0) == (True, 0)
    assert limiter.admit("a", 202.0) == (False, 0)
    assert limiter.pending() == {"a": 1}


def twalk_bad_utf8(tag: int) -> bytes:
    body = struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", 1) + b"\xff"
    return struct.pack("<IBH", 7 + len(body), MessageType.Twalk, tag) + body


@pytest.mark.parametrize("count", [50_000])
async def test_malformed_flood_writes_a_handful_of_lines(count, caplog):
    caplog.set_level(logging.WARNING, logger="ninep.server")
    async with served(MemFilesystem()) as (peers, _):
        peer = peers[0]
        await peer.start()
        batch = b"".join(twalk_bad_utf8(tag % 60000 + 2) for tag in range(1000))
        for _ in range(count // 1000):
            await peer.send_raw(batch)
            for _ in range(1000):
                assert isinstance(await peer.recv(), m.Rlerror)
        assert isinstance(await peer.rpc(m.Tstatfs(1, 0)), m.Rstatfs)  # still served
    lines = [r.getMessage() for r in caplog.records if r.name == "ninep.server"]
    assert 1 <= len(lines) <= 5, lines
    assert "malformed request, answering Rlerror(EILSEQ)" in lines[0]  # first one verbatim
    assert any(f"{count - 3} more malformed requests" in line for line in lines), lines
