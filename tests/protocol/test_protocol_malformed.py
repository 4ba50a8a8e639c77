"""Malformed frames: each row is hand-written bytes and the error text it must produce.

Guest input is untrusted, so every length is checked. Both the fast path and the
construct interpreter must refuse each row with ProtocolError and the same message.
"""

from __future__ import annotations

import pytest

from ninep.protocol import codec
from ninep.protocol import messages as m
from ninep.protocol.codec import ProtocolError
from ninep.protocol.messages import Qid

QHEX = "80 04030201 8877665544332211"
STAT_BODY = ("0000 00000000 " + QHEX +
             " ed010080 01000000 02000000 0000000000000000 0100 64 0100 75 0100 67 0000")

MALFORMED = [
    # framing
    ("empty", "", "shorter than the 7-byte header"),
    ("short header", "06000000 78 01", "shorter than the 7-byte header"),
    ("size larger than frame", "0c000000 78 0100 01000000", "size field 12 disagrees with the frame length 11"),
    ("size smaller than frame", "0a000000 78 0100 01000000", "size field 10 disagrees with the frame length 11"),
    ("unknown type", "07000000 00 0100", "unknown message type 0"),
    ("unknown type 255", "07000000 ff 0100", "unknown message type 255"),
    ("Tlerror never valid", "07000000 06 0100", "unknown message type 6 (Tlerror is never valid"),
    ("Terror never valid", "07000000 6a 0100", "unknown message type 106 (Terror is never valid"),
    # fixed fields
    ("fid cut short", "0a000000 78 0100 010000", "Tclunk.fid: truncated"),
    ("no body at all", "07000000 78 0100", "Tclunk.fid: truncated"),
    ("qid cut short", "0d000000 69 0100 80 04030201 88", "Rattach.qid.path: truncated"),
    ("getattr mask cut", "12000000 18 0100 01000000 ff3f0000000000", "Tgetattr.request_mask: truncated"),
    ("trailing byte", "0c000000 78 0100 01000000 00", "Tclunk: trailing bytes after the body"),
    ("trailing on empty body", "08000000 79 0100 00", "Rclunk: trailing bytes after the body"),
    # strings
    ("string length cut", "08000000 17 0100 05", "Rreadlink.target: truncated"),
    ("string data cut", "0b000000 17 0100 0500 2f78", "Rreadlink.target: truncated"),
    ("string not UTF-8", "0b000000 17 0100 0200 c328", "Rreadlink.target: string is not UTF-8"),
    ("overlong UTF-8 slash", "0b000000 17 0100 0200 c0af", "Rreadlink.target: string is not UTF-8"),
    ("UTF-8 surrogate", "0c000000 17 0100 0300 eda080", "string is not UTF-8"),
    ("NUL in walk name", "16000000 6e 0100 01000000 02000000 0100 0300 610062",
     "Twalk.wnames: string contains NUL"),
    ("NUL in attach uname", "18000000 68 0100 00000000 ffffffff 0100 00 0000 00000000",
     "Tattach.uname: string contains NUL"),
    ("second string cut", "15000000 10 0100 01000000 0100 6c 0600 74 00000000",
     "Tsymlink.symtgt: truncated"),
    ("gid after strings cut", "13000000 10 0100 01000000 0100 6c 0100 74 0000",
     "Tsymlink.gid: truncated"),
    # arrays
    ("17 walk names", "44000000 6e 0100 01000000 02000000 1100" + " 0100 61" * 17,
     "Twalk.wnames: 17 elements, at most 16 allowed"),
    ("17 walk qids", "e6000000 6f 0100 1100" + (" " + QHEX) * 17,
     "Rwalk.qids: 17 elements, at most 16 allowed"),
    ("65535 walk names claimed", "11000000 6e 0100 01000000 02000000 ffff",
     "Twalk.wnames: 65535 elements, at most 16 allowed"),
    ("walk count larger than names", "14000000 6e 0100 01000000 02000000 0300 0100 61",
     "Twalk.wnames: truncated"),
    ("walk count smaller than names", "17000000 6e 0100 01000000 02000000 0100 0100 61 0100 62",
     "Twalk: trailing bytes after the body"),
    ("rwalk qid cut", "11000000 6f 0100 0100 80 04030201 886677",
     "Rwalk.qids.path: truncated"),
    # bulk data
    ("read count exceeds data", "0d000000 75 0100 05000000 6869",
     "Rread.data: count 5 exceeds the 2 data bytes present"),
    ("read count below data", "0d000000 75 0100 01000000 6869", "Rread: trailing bytes after the body"),
    ("read count cut", "09000000 75 0100 0200", "Rread.data: truncated"),
    ("write count exceeds data", "1a000000 76 0800 01000000 0200000000000000 04000000 616263",
     "Twrite.data: count 4 exceeds the 3 data bytes present"),
    ("write offset cut", "0f000000 76 0800 01000000 02000000", "Twrite.offset: truncated"),
    ("readdir count 4G", "0b000000 29 0100 ffffffff",
     "Rreaddir.data: count 4294967295 exceeds the 0 data bytes present"),
    # classic stat: two nested size fields
    ("stat size says more than the stat holds",
     "3e000000 7d 0b00 3500 3300 " + STAT_BODY + " 00",
     "Rstat.stat: size field 51 disagrees with the 50 bytes used"),
    ("stat n says more than stat size",
     "3e000000 7d 0b00 3500 3200 " + STAT_BODY + " 00",
     "Rstat.stat: size field 53 disagrees with the 52 bytes used"),
    ("stat size beyond n", "3d000000 7d 0b00 3400 3300 " + STAT_BODY, "Rstat.stat: truncated"),
    ("stat size too small for its strings", "3d000000 7d 0b00 3400 3100 " + STAT_BODY,
     "Rstat.stat.muid: truncated"),
    ("stat n beyond frame", "0b000000 7d 0b00 3400 3200", "Rstat.stat: truncated"),
]


def frame(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text.replace(" ", ""))


@pytest.mark.parametrize("hex_text, expected", [(h, e) for _, h, e in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_fast_and_interpreted_refuse_with_the_same_named_error(hex_text, expected):
    data = frame(hex_text)
    with pytest.raises(ProtocolError) as fast:
        codec.decode(data)
    with pytest.raises(ProtocolError) as interpreted:
        codec.decode_interpreted(data)
    assert expected in str(fast.value)
    assert str(fast.value) == str(interpreted.value)


BAD_DIRENTS = [
    ("record cut in the qid", "80 040302", "Dirent.qid.version: truncated"),
    ("name length cut", QHEX + " 0100000000000000 04 01", "Dirent.name: truncated"),
    ("name cut", QHEX + " 0100000000000000 04 0300 6161", "Dirent.name: truncated"),
    ("NUL name", QHEX + " 0100000000000000 04 0100 00", "Dirent.name: string contains NUL"),
    ("bad UTF-8 name", QHEX + " 0100000000000000 04 0100 ff", "Dirent.name: string is not UTF-8"),
    ("good then cut", QHEX + " 0100000000000000 04 0100 61 80", "Dirent.qid.version: truncated"),
]


@pytest.mark.parametrize("hex_text, expected", [(h, e) for _, h, e in BAD_DIRENTS],
                         ids=[name for name, _, _ in BAD_DIRENTS])
def test_bad_dirents(hex_text, expected):
    data = frame(hex_text)
    with pytest.raises(ProtocolError) as fast:
        codec.unpack_dirents(data)
    with pytest.raises(ProtocolError) as interpreted:
        codec.unpack_dirents_interpreted(data)
    assert expected in str(fast.value)
    assert str(fast.value) == str(interpreted.value)


Q = Qid(0, 0, 0)
UNENCODABLE = [
    ("NUL in a name", m.Twalk(1, 1, 2, ("a\x00b",))),
    ("17 walk names", m.Twalk(1, 1, 2, ("a",) * 17)),
    ("17 qids", m.Rwalk(1, (Q,) * 17)),
    ("walk names as one str", m.Twalk(1, 1, 2, "usr")),
    ("lone surrogate", m.Rreadlink(1, "\udc80")),
    ("string too long", m.Rerror(1, "x" * 65536)),
    ("not a str", m.Rerror(1, b"bytes")),
    ("tag out of range", m.Tclunk(0x10000, 1)),
    ("negative fid", m.Tclunk(1, -1)),
    ("qid path out of range", m.Rattach(1, Qid(0, 0, 1 << 64))),
    ("data not a buffer", m.Rread(1, "text")),
    ("never on the wire", m.Tlerror(1)),
    ("never on the wire either", m.Terror(1)),
]


@pytest.mark.parametrize("msg", [msg for _, msg in UNENCODABLE],
                         ids=[name for name, _ in UNENCODABLE])
def test_unencodable_messages_raise_value_error_on_both_paths(msg):
    with pytest.raises(ValueError):
        codec.encode(msg)
    with pytest.raises(ValueError):
        codec.encode_interpreted(msg)


def test_errors_in_a_well_framed_body_carry_the_tag_so_the_server_can_reply():
    not_utf8_walk = frame("16000000 6e 2a00 01000000 02000000 0100 0300 61ff62")
    for decode in (codec.decode, codec.decode_interpreted):
        with pytest.raises(ProtocolError) as bad_body:
            decode(not_utf8_walk)
        assert (bad_body.value.tag, bad_body.value.message_type) == (42, 110)
        with pytest.raises(ProtocolError) as unknown:
            decode(frame("07000000 00 2b00"))
        assert unknown.value.tag == 43
        with pytest.raises(ProtocolError) as broken_framing:
            decode(frame("0c000000 78 2a00 01000000"))
        assert broken_framing.value.tag is None
