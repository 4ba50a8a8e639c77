"""Golden bytes for every message, both directions, written by hand from the spec.

Each hex literal was typed from the layouts in the kernel's net/9p/protocol.c / diod's
protocol.md (size[4] type[1] tag[2] then the body, little-endian), NOT produced by our
encoder. Spaces separate fields. Both the fast path and the construct interpreter must
turn the message into these bytes and these bytes back into the message.
"""

from __future__ import annotations

import pytest

from ninep.protocol import codec
from ninep.protocol import messages as m
from ninep.protocol.constants import NOFID, MessageType
from ninep.protocol.messages import Dirent, Qid, Stat

Q = Qid(type=0x80, version=0x01020304, path=0x1122334455667788)
QHEX = "80 04030201 8877665544332211"
Q2 = Qid(type=0x00, version=0, path=9)
Q2HEX = "00 00000000 0900000000000000"

STAT = Stat(type=0, dev=0, qid=Q, mode=0x800001ED, atime=1, mtime=2, length=0,
            name="d", uid="u", gid="g", muid="")
# n[2]=52, then the stat's own size[2]=50, then the 50 bytes of the stat
STATHEX = ("3400 3200 0000 00000000 " + QHEX +
           " ed010080 01000000 02000000 0000000000000000 0100 64 0100 75 0100 67 0000")

DIRENT_A = Dirent(qid=Q, offset=1, type=4, name="a")
DIRENT_AHEX = QHEX + " 0100000000000000 04 0100 61"

GOLDEN = [
    # --- shared with classic 9P2000 ---
    (m.Tversion(tag=0xFFFF, msize=8192, version="9P2000.L"),
     "15000000 64 ffff 00200000 0800 3950323030302e4c"),
    (m.Rversion(tag=0xFFFF, msize=8192, version="9P2000.L"),
     "15000000 65 ffff 00200000 0800 3950323030302e4c"),
    (m.Tauth(tag=1, afid=5, uname="u", aname="", n_uname=1000),
     "14000000 66 0100 05000000 0100 75 0000 e8030000"),
    (m.Rauth(tag=1, aqid=Q), "14000000 67 0100 " + QHEX),
    (m.Tattach(tag=1, fid=0, afid=NOFID, uname="root", aname="/srv", n_uname=0),
     "1f000000 68 0100 00000000 ffffffff 0400 726f6f74 0400 2f737276 00000000"),
    (m.Rattach(tag=1, qid=Q), "14000000 69 0100 " + QHEX),
    (m.Rerror(tag=2, ename="no"), "0b000000 6b 0200 0200 6e6f"),
    (m.Tflush(tag=3, oldtag=2), "09000000 6c 0300 0200"),
    (m.Rflush(tag=3), "07000000 6d 0300"),
    (m.Twalk(tag=4, fid=1, newfid=2, wnames=("usr", "lib", "x")),
     "1e000000 6e 0400 01000000 02000000 0300 0300 757372 0300 6c6962 0100 78"),
    (m.Twalk(tag=4, fid=1, newfid=1, wnames=()),
     "11000000 6e 0400 01000000 01000000 0000"),
    (m.Rwalk(tag=4, qids=(Q, Q2)), "23000000 6f 0400 0200 " + QHEX + " " + Q2HEX),
    (m.Rwalk(tag=4, qids=()), "09000000 6f 0400 0000"),
    (m.Topen(tag=5, fid=1, mode=2), "0c000000 70 0500 01000000 02"),
    (m.Ropen(tag=5, qid=Q, iounit=8168), "18000000 71 0500 " + QHEX + " e81f0000"),
    (m.Tcreate(tag=6, fid=1, name="f", perm=0o644, mode=1),
     "13000000 72 0600 01000000 0100 66 a4010000 01"),
    (m.Rcreate(tag=6, qid=Q, iounit=0), "18000000 73 0600 " + QHEX + " 00000000"),
    (m.Tread(tag=7, fid=1, offset=0x1000, count=4096),
     "17000000 74 0700 01000000 0010000000000000 00100000"),
    (m.Rread(tag=7, data=b"hi"), "0d000000 75 0700 02000000 6869"),
    (m.Rread(tag=7, data=b""), "0b000000 75 0700 00000000"),
    (m.Twrite(tag=8, fid=1, offset=2, data=b"abc"),
     "1a000000 76 0800 01000000 0200000000000000 03000000 616263"),
    (m.Rwrite(tag=8, count=3), "0b000000 77 0800 03000000"),
    (m.Tclunk(tag=9, fid=1), "0b000000 78 0900 01000000"),
    (m.Rclunk(tag=9), "07000000 79 0900"),
    (m.Tremove(tag=10, fid=1), "0b000000 7a 0a00 01000000"),
    (m.Rremove(tag=10), "07000000 7b 0a00"),
    (m.Tstat(tag=11, fid=1), "0b000000 7c 0b00 01000000"),
    (m.Rstat(tag=11, stat=STAT), "3d000000 7d 0b00 " + STATHEX),
    (m.Twstat(tag=12, fid=1, stat=STAT), "41000000 7e 0c00 01000000 " + STATHEX),
    (m.Rwstat(tag=12), "07000000 7f 0c00"),
    # --- 9P2000.L ---
    (m.Rlerror(tag=1, ecode=2), "0b000000 07 0100 02000000"),
    (m.Tstatfs(tag=1, fid=1), "0b000000 08 0100 01000000"),
    (m.Rstatfs(tag=1, type=0x01021997, bsize=4096, blocks=100, bfree=50, bavail=40,
               files=1000, ffree=900, fsid=7, namelen=255),
     "43000000 09 0100 97190201 00100000 6400000000000000 3200000000000000 "
     "2800000000000000 e803000000000000 8403000000000000 0700000000000000 ff000000"),
    (m.Tlopen(tag=1, fid=1, flags=0x8002), "0f000000 0c 0100 01000000 02800000"),
    (m.Rlopen(tag=1, qid=Q, iounit=0), "18000000 0d 0100 " + QHEX + " 00000000"),
    (m.Tlcreate(tag=1, fid=1, name="new", flags=0o102, mode=0o644, gid=100),
     "1c000000 0e 0100 01000000 0300 6e6577 42000000 a4010000 64000000"),
    (m.Rlcreate(tag=1, qid=Q, iounit=4096), "18000000 0f 0100 " + QHEX + " 00100000"),
    (m.Tsymlink(tag=1, fid=1, name="l", symtgt="t", gid=0),
     "15000000 10 0100 01000000 0100 6c 0100 74 00000000"),
    (m.Rsymlink(tag=1, qid=Q), "14000000 11 0100 " + QHEX),
    (m.Tmknod(tag=1, dfid=1, name="p", mode=0o10644, major=0, minor=0, gid=0),
     "1e000000 12 0100 01000000 0100 70 a4110000 00000000 00000000 00000000"),
    (m.Rmknod(tag=1, qid=Q), "14000000 13 0100 " + QHEX),
    (m.Trename(tag=1, fid=1, dfid=2, name="b"), "12000000 14 0100 01000000 02000000 0100 62"),
    (m.Rrename(tag=1), "07000000 15 0100"),
    (m.Treadlink(tag=1, fid=1), "0b000000 16 0100 01000000"),
    (m.Rreadlink(tag=1, target="/x"), "0b000000 17 0100 0200 2f78"),
    (m.Tgetattr(tag=1, fid=1, request_mask=0x3FFF), "13000000 18 0100 01000000 ff3f000000000000"),
    (m.Rgetattr(tag=1, valid=0x7FF, qid=Q, mode=0o100644, uid=1000, gid=1000, nlink=1, rdev=0,
                size=5, blksize=4096, blocks=8, atime_sec=1, atime_nsec=2, mtime_sec=3,
                mtime_nsec=4, ctime_sec=5, ctime_nsec=6, btime_sec=0, btime_nsec=0, gen=0,
                data_version=0),
     "a0000000 19 0100 ff07000000000000 " + QHEX + " a4810000 e8030000 e8030000 "
     "0100000000000000 0000000000000000 0500000000000000 0010000000000000 0800000000000000 "
     "0100000000000000 0200000000000000 0300000000000000 0400000000000000 "
     "0500000000000000 0600000000000000 0000000000000000 0000000000000000 "
     "0000000000000000 0000000000000000"),
    (m.Tsetattr(tag=1, fid=1, valid=0x8, mode=0, uid=0, gid=0, size=10, atime_sec=0,
                atime_nsec=0, mtime_sec=0, mtime_nsec=0),
     "43000000 1a 0100 01000000 08000000 00000000 00000000 00000000 0a00000000000000 "
     "0000000000000000 0000000000000000 0000000000000000 0000000000000000"),
    (m.Rsetattr(tag=1), "07000000 1b 0100"),
    (m.Txattrwalk(tag=1, fid=1, newfid=2, name="user.a"),
     "17000000 1e 0100 01000000 02000000 0600 757365722e61"),
    (m.Rxattrwalk(tag=1, size=3), "0f000000 1f 0100 0300000000000000"),
    (m.Txattrcreate(tag=1, fid=1, name="user.a", attr_size=3, flags=1),
     "1f000000 20 0100 01000000 0600 757365722e61 0300000000000000 01000000"),
    (m.Rxattrcreate(tag=1), "07000000 21 0100"),
    (m.Treaddir(tag=1, fid=1, offset=0, count=8192),
     "17000000 28 0100 01000000 0000000000000000 00200000"),
    (m.Rreaddir(tag=1, data=bytes.fromhex(DIRENT_AHEX.replace(" ", ""))),
     "24000000 29 0100 19000000 " + DIRENT_AHEX),
    (m.Tfsync(tag=1, fid=1, datasync=1), "0f000000 32 0100 01000000 01000000"),
    (m.Rfsync(tag=1), "07000000 33 0100"),
    (m.Tlock(tag=1, fid=1, type=1, flags=1, start=0, length=0, proc_id=42, client_id="h"),
     "27000000 34 0100 01000000 01 01000000 0000000000000000 0000000000000000 2a000000 0100 68"),
    (m.Rlock(tag=1, status=0), "08000000 35 0100 00"),
    (m.Tgetlock(tag=1, fid=1, type=0, start=10, length=5, proc_id=42, client_id="h"),
     "23000000 36 0100 01000000 00 0a00000000000000 0500000000000000 2a000000 0100 68"),
    (m.Rgetlock(tag=1, type=2, start=10, length=5, proc_id=42, client_id="h"),
     "1f000000 37 0100 02 0a00000000000000 0500000000000000 2a000000 0100 68"),
    (m.Tlink(tag=1, dfid=1, fid=2, name="h"), "12000000 46 0100 01000000 02000000 0100 68"),
    (m.Rlink(tag=1), "07000000 47 0100"),
    (m.Tmkdir(tag=1, dfid=1, name="d", mode=0o755, gid=0),
     "16000000 48 0100 01000000 0100 64 ed010000 00000000"),
    (m.Rmkdir(tag=1, qid=Q), "14000000 49 0100 " + QHEX),
    (m.Trenameat(tag=1, olddirfid=1, oldname="a", newdirfid=2, newname="b"),
     "15000000 4a 0100 01000000 0100 61 02000000 0100 62"),
    (m.Rrenameat(tag=1), "07000000 4b 0100"),
    (m.Tunlinkat(tag=1, dirfid=1, name="a", flags=0x200), "12000000 4c 0100 01000000 0100 61 00020000"),
    (m.Runlinkat(tag=1), "07000000 4d 0100"),
]

IDS = [f"{type(msg).__name__}-{i}" for i, (msg, _) in enumerate(GOLDEN)]


def wire(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text.replace(" ", ""))


def test_every_message_type_has_a_golden_frame():
    covered = {msg.TYPE for msg, _ in GOLDEN}
    never_on_the_wire = {MessageType.Tlerror, MessageType.Terror}
    assert covered == set(MessageType) - never_on_the_wire


@pytest.mark.parametrize("msg, hex_text", GOLDEN, ids=IDS)
def test_encode_matches_the_spec(msg, hex_text):
    assert codec.encode_bytes(msg) == wire(hex_text)
    assert b"".join(codec.encode_interpreted(msg)) == wire(hex_text)


@pytest.mark.parametrize("msg, hex_text", GOLDEN, ids=IDS)
def test_decode_matches_the_spec(msg, hex_text):
    assert codec.decode(wire(hex_text)) == msg
    assert codec.decode_interpreted(wire(hex_text)) == msg


@pytest.mark.parametrize("msg, hex_text", GOLDEN, ids=IDS)
def test_decode_accepts_any_buffer_type(msg, hex_text):
    frame = wire(hex_text)
    assert codec.decode(bytearray(frame)) == msg
    assert codec.decode(memoryview(frame)) == msg


def test_bulk_data_is_a_view_of_the_frame_not_a_copy():
    frame = wire("0d000000 75 0700 02000000 6869")
    decoded = codec.decode(frame)
    assert isinstance(decoded.data, memoryview)
    assert decoded.data.obj is frame
    frame_w = wire("1a000000 76 0800 01000000 0200000000000000 03000000 616263")
    assert codec.decode(frame_w).data.obj is frame_w


def test_encode_hands_the_payload_back_uncopied():
    payload = bytearray(b"x" * 100)
    buffers = codec.encode(m.Rread(tag=1, data=payload))
    assert len(buffers) == 2
    assert buffers[1] is payload
    assert bytes(buffers[0]) == wire("6f000000 75 0100 64000000")
    view = memoryview(b"abcdef")[2:5]
    write = codec.encode(m.Twrite(tag=2, fid=3, offset=4, data=view))
    assert write[1] is view
    assert b"".join(write) == wire("1a000000 76 0200 03000000 0400000000000000 03000000 636465")


def test_small_messages_are_one_buffer():
    assert codec.encode(m.Tclunk(tag=9, fid=1)) == [wire("0b000000 78 0900 01000000")]


def test_dirents_pack_and_unpack_to_the_spec():
    second = Dirent(qid=Q2, offset=2, type=8, name="bcd")
    second_hex = Q2HEX + " 0200000000000000 08 0300 626364"
    data, packed = codec.pack_dirents([DIRENT_A, second], 8192)
    assert packed == 2
    assert data == wire(DIRENT_AHEX + " " + second_hex)
    assert codec.unpack_dirents(data) == [DIRENT_A, second]
    assert codec.unpack_dirents(memoryview(data)) == [DIRENT_A, second]
    assert codec.unpack_dirents_interpreted(data) == [DIRENT_A, second]


def test_pack_dirents_stops_at_the_first_entry_that_does_not_fit():
    entries = [Dirent(Q, i, 8, "n" * 10) for i in range(5)]  # 34 bytes each
    data, packed = codec.pack_dirents(entries, 34 * 3 + 33)
    assert packed == 3 and len(data) == 34 * 3
    assert codec.pack_dirents(entries, 33) == (b"", 0)
    assert codec.dirent_size("n" * 10) == 34
