"""The request rules, pure: tables of messages in, decisions and replies out (h11 style).

No trio, no socket: ``RequestRules`` is driven by hand, as the pump drives it.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from ninep.protocol import messages as m
from ninep.protocol.codec import ProtocolError, decode
from ninep.protocol.constants import Errno
from ninep.server.rules import (FLUSH, INLINE, REPLY, SMALL_HOLDING, TASK, TRY, VERSION, ByteBudget,
                                RequestRules, bad_frame_reply)
from ninep.server.session import Limits

PROMPT_FID = 1  # a fid of a prompt filesystem (a host export)
OTHER_FID = 2  # a fid of a synthetic tree


def rules(**limits) -> RequestRules:
    return RequestRules(Limits(**limits), lambda fid: fid == PROMPT_FID)


# (message in, decision) for a fresh connection.
DECISIONS = [
    (m.Tgetattr(5, PROMPT_FID, 0x7FF), (INLINE, None)),
    (m.Twalk(5, PROMPT_FID, 9, ("a",)), (INLINE, None)),
    (m.Tread(5, PROMPT_FID, 0, 100), (INLINE, None)),
    (m.Tunlinkat(5, PROMPT_FID, "a", 0), (INLINE, None)),
    (m.Tgetattr(5, OTHER_FID, 0x7FF), (TASK, None)),
    (m.Tgetattr(5, 77, 0x7FF), (TASK, None)),  # unknown fid: the dispatcher says EBADF
    (m.Tlock(5, PROMPT_FID, 1, 1, 0, 0, 1, "c"), (TASK, None)),  # may block: flushable
    (m.Tfsync(5, PROMPT_FID, 0), (TASK, None)),
    (m.Tattach(5, 0, 0xFFFFFFFF, "u", "", 0), (TASK, None)),
    (m.Tflush(5, 9), (REPLY, m.Rflush(5))),  # nothing in flight under tag 9
    (m.Tversion(0xFFFF, 8192, "9P2000.L"), (VERSION, [])),
]


@pytest.mark.parametrize("msg, decision", DECISIONS, ids=lambda x: type(x).__name__)
def test_where_each_request_runs(msg, decision):
    assert rules().receive(msg) == decision


# Tlock with the lock table in this process (prompt_locks) or in a --workers supervisor.
LOCK_DECISIONS = [
    (True, m.Tlock(5, PROMPT_FID, 1, 0, 0, 0, 1, "c"), (INLINE, None)),  # answers at once
    (True, m.Tlock(5, PROMPT_FID, 2, 0, 0, 0, 1, "c"), (INLINE, None)),  # unlock
    (True, m.Tlock(5, PROMPT_FID, 1, 1, 0, 0, 1, "c"), (TRY, None)),  # blocking: tried first
    (True, m.Tlock(5, OTHER_FID, 1, 0, 0, 0, 1, "c"), (TASK, None)),  # a synthetic tree's fid
    (False, m.Tlock(5, PROMPT_FID, 1, 0, 0, 0, 1, "c"), (TASK, None)),  # a call to another process
]


@pytest.mark.parametrize("prompt_locks, msg, decision", LOCK_DECISIONS)
def test_where_a_tlock_runs(prompt_locks, msg, decision):
    r = RequestRules(Limits(), lambda fid: fid == PROMPT_FID, prompt_locks=prompt_locks)
    assert r.receive(msg) == decision


def test_a_tried_tlock_that_must_wait_becomes_a_flushable_task():
    r = RequestRules(Limits(), lambda fid: fid == PROMPT_FID, prompt_locks=True)
    lock = m.Tlock(5, PROMPT_FID, 1, 1, 0, 0, 1, "c")
    assert r.receive(lock) == (TRY, None) and r.idle  # not in flight while tried
    assert r.start_task(lock) == (TASK, None) and not r.idle
    assert r.receive(m.Tflush(6, 5)) == (FLUSH, 5)
    assert r.finished(5, None) == [m.Rflush(6)]


def test_a_tag_in_flight_cannot_be_reused():
    r = rules()
    assert r.receive(m.Tgetattr(5, OTHER_FID, 0)) == (TASK, None)
    assert r.receive(m.Tgetattr(5, PROMPT_FID, 0)) == (REPLY, m.Rlerror(5, Errno.EINVAL))
    assert r.finished(5, m.Rlerror(5, Errno.EIO)) == [m.Rlerror(5, Errno.EIO)]
    assert r.receive(m.Tgetattr(5, PROMPT_FID, 0)) == (INLINE, None)  # free again


RCLUNK = m.Rclunk(5)

# Tflush: (steps, replies). A step is ("in", msg, decision) or ("done", tag, reply, out).
FLUSH_TABLE = {
    "cancelled target: only Rflush": [
        ("in", m.Tclunk(5, OTHER_FID), (TASK, None)),
        ("in", m.Tflush(6, 5), (FLUSH, 5)),
        ("done", 5, None, [m.Rflush(6)]),
    ],
    "target completed anyway: its reply, then Rflush": [
        ("in", m.Tclunk(5, OTHER_FID), (TASK, None)),
        ("in", m.Tflush(6, 5), (FLUSH, 5)),
        ("done", 5, RCLUNK, [RCLUNK, m.Rflush(6)]),
    ],
    "two flushes of one tag: answered in order": [
        ("in", m.Tclunk(5, OTHER_FID), (TASK, None)),
        ("in", m.Tflush(6, 5), (FLUSH, 5)),
        ("in", m.Tflush(7, 5), (FLUSH, 5)),
        ("done", 5, None, [m.Rflush(6), m.Rflush(7)]),
    ],
    "a flush of a flush: after the first Rflush": [
        ("in", m.Tclunk(5, OTHER_FID), (TASK, None)),
        ("in", m.Tflush(6, 5), (FLUSH, 5)),
        ("in", m.Tflush(7, 6), (FLUSH, 6)),
        ("done", 5, RCLUNK, [RCLUNK, m.Rflush(6), m.Rflush(7)]),
    ],
    "flush of a finished tag: Rflush at once": [
        ("in", m.Tclunk(5, OTHER_FID), (TASK, None)),
        ("done", 5, RCLUNK, [RCLUNK]),
        ("in", m.Tflush(6, 5), (REPLY, m.Rflush(6))),
    ],
}


@pytest.mark.parametrize("name", FLUSH_TABLE)
def test_flush_order(name):
    r = rules()
    for step in FLUSH_TABLE[name]:
        if step[0] == "in":
            assert r.receive(step[1]) == step[2], step
        else:
            assert r.finished(step[1], step[2]) == step[3], step
    assert r.idle


def test_version_waits_for_everything_in_flight():
    r = rules()
    r.receive(m.Tclunk(5, OTHER_FID))
    r.receive(m.Tflush(6, 5))
    r.receive(m.Tclunk(7, OTHER_FID))
    assert r.receive(m.Tversion(0xFFFF, 8192, "9P2000.L")) == (VERSION, [5, 6, 7])
    assert not r.may_read()  # nothing more is read until Rversion
    assert r.finished(7, None) == []
    assert r.finished(5, None) == [m.Rflush(6)]
    assert r.idle
    reply = r.versioned(m.Tversion(0xFFFF, 8192, "9P2000.L"), 8192, "9P2000.L")
    assert reply == m.Rversion(0xFFFF, 8192, "9P2000.L")
    assert r.may_read() and r.msize == 8192


def test_backpressure_counts_tags_and_promised_bytes():
    r = rules(max_in_flight=3, max_buffered=1 << 20)
    r.receive(m.Tclunk(1, OTHER_FID))
    r.receive(m.Tclunk(2, OTHER_FID))
    assert r.may_read()
    r.receive(m.Tclunk(3, OTHER_FID))
    assert not r.may_read()  # three tags in flight
    r.finished(3, m.Rclunk(3))
    assert r.may_read()
    r.receive(m.Tread(4, OTHER_FID, 0, 1 << 20))  # its reply may be 1 MiB: counted now
    assert not r.may_read()
    r.finished(4, None)
    assert r.may_read()


def test_buffered_reply_bytes_stop_reading_until_sent():
    r = rules(max_buffered=100)
    buffers, size = r.encode_reply(m.Rread(1, b"x" * 90))
    assert size == 7 + 4 + 90 and b"".join(bytes(b) for b in buffers)[7 + 4:] == b"x" * 90
    assert not r.may_read()
    r.sent(size)
    assert r.may_read()


def test_twrite_frames_of_running_tasks_count_as_held_bytes():
    r = rules(max_buffered=100_000)
    r.receive(m.Twrite(1, OTHER_FID, 0, b"x" * 60_000))
    assert r.may_read()
    r.receive(m.Twrite(2, OTHER_FID, 0, b"x" * 60_000))  # two frames held: 120,000 bytes
    assert not r.may_read() and r.budget.used == 120_000
    r.finished(1, m.Rwrite(1, 60_000))
    assert r.may_read() and r.budget.used == 60_000


def test_the_process_budget_stops_connections_holding_bytes_not_idle_ones():
    KiB = 1024
    budget = ByteBudget(limit=1000 * KiB)
    a, b, c = (RequestRules(Limits(max_buffered=800 * KiB), lambda fid: True, budget)
               for _ in range(3))
    _, size_a = a.encode_reply(m.Rread(1, b"a" * 600 * KiB))
    assert a.may_read() and budget.used == size_a  # under both limits
    _, size_b = b.encode_reply(m.Rread(1, b"b" * 500 * KiB))
    assert budget.spent
    # Both hold bytes, each under its own max_buffered: only the process's budget stops them.
    assert not a.may_read() and a.held_back_by_budget()
    assert not b.may_read() and b.held_back_by_budget()
    # c holds nothing, then less than SMALL_HOLDING (metadata replies, batched): it reads on.
    assert c.may_read()
    _, size_small = c.encode_reply(m.Rread(1, b"c" * (SMALL_HOLDING - 100)))
    assert c.may_read() and not c.held_back_by_budget()
    _, size_c = c.encode_reply(m.Rread(2, b"c" * 100))
    assert not c.may_read() and c.held_back_by_budget()
    a.sent(size_a)
    assert not budget.spent and a.may_read() and b.may_read() and c.may_read()
    a.encode_reply(m.Rread(2, b"a" * 10))
    a.forget_buffered()  # a connection gone with replies unsent gives them back
    assert budget.used == size_b + size_small + size_c
    b.sent(size_b)
    c.sent(size_small + size_c)
    assert budget.used == 0


def test_reply_of_msize_or_more_becomes_erange_and_unencodable_eio():
    r = rules(max_msize=4096)
    buffers, _ = r.encode_reply(m.Rreadlink(3, "x" * 5000))
    assert decode(b"".join(buffers)) == m.Rlerror(3, Errno.ERANGE)
    buffers, _ = r.encode_reply(m.Rreadlink(3, "a\0b"))
    assert decode(b"".join(buffers)) == m.Rlerror(3, Errno.EIO)


BAD_FRAMES = [
    # a name that is not UTF-8: EILSEQ
    (bytes.fromhex("140000006e0400" "00000000" "01000000" "0100") + b"\x01\x00\xff", errno.EILSEQ),
    # a walk of 17 names: EINVAL
    (bytes.fromhex("110000006e0400" "00000000" "01000000" "1100"), errno.EINVAL),
    # an unknown type inside an intact frame: EINVAL
    (bytes.fromhex("070000000d0400"), errno.EINVAL),
]


@pytest.mark.parametrize("frame, code", BAD_FRAMES)
def test_a_bad_body_gets_rlerror(frame, code):
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert bad_frame_reply(caught.value) == m.Rlerror(4, code)


def test_broken_framing_has_no_reply():
    assert bad_frame_reply(ProtocolError("size field 3 outside 7..msize (8192)")) is None


def test_the_rules_load_no_trio_socket_or_pwd():
    code = ("import sys; import ninep.server.rules; "
            "bad = {'trio', 'socket', 'pwd'} & set(sys.modules); assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
