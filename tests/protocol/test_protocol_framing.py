"""FrameReader: whole frames out of a byte stream, however the bytes are chunked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ninep.protocol import codec
from ninep.protocol.codec import FrameReader, ProtocolError

# Hand-written frames (see test_protocol_golden.py for their meaning).
FRAMES = [
    bytes.fromhex("1500000064ffff0020000008003950323030302e4c"),        # Tversion
    bytes.fromhex("0b000000780900" "01000000"),                         # Tclunk
    bytes.fromhex("07000000790900"),                                     # Rclunk
    bytes.fromhex("1e0000006e0400" "0100000002000000" "0300" "0300757372" "03006c6962" "010078"),  # Twalk
    bytes.fromhex("0d000000750700" "02000000" "6869"),                  # Rread
]
STREAM = b"".join(FRAMES)


def drain(reader: FrameReader) -> list[bytes]:
    return list(reader)


def test_whole_stream_at_once():
    reader = FrameReader(8192)
    reader.feed(STREAM)
    assert drain(reader) == FRAMES
    assert reader.buffered == 0
    assert reader.next_frame() is None


def test_byte_by_byte():
    reader = FrameReader(8192)
    frames = []
    for i in range(len(STREAM)):
        reader.feed(STREAM[i:i + 1])
        frames += drain(reader)
        assert reader.buffered == len(STREAM[:i + 1]) - sum(map(len, frames))
    assert frames == FRAMES


@pytest.mark.parametrize("chunk", [2, 3, 5, 7, 11, 13, 64])
def test_odd_chunks(chunk):
    reader = FrameReader(8192)
    frames = []
    for i in range(0, len(STREAM), chunk):
        reader.feed(memoryview(STREAM)[i:i + chunk])
        frames += drain(reader)
    assert frames == FRAMES
    assert [type(codec.decode(f)).__name__ for f in frames] == [
        "Tversion", "Tclunk", "Rclunk", "Twalk", "Rread"]


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1))
def test_any_chunking_gives_the_same_frames(cuts):
    reader = FrameReader(8192)
    frames, position = [], 0
    for cut in cuts:
        reader.feed(STREAM[position:position + cut])
        position += cut
        frames += drain(reader)
    reader.feed(STREAM[position:])
    frames += drain(reader)
    assert frames == FRAMES


def test_waits_for_the_rest_of_a_frame():
    reader = FrameReader(8192)
    reader.feed(FRAMES[0][:10])
    assert reader.next_frame() is None
    assert reader.buffered == 10
    reader.feed(FRAMES[0][10:])
    assert reader.next_frame() == FRAMES[0]


@pytest.mark.parametrize("size_hex, what", [
    ("00000000", "size field 0 outside 7..msize (8192)"),
    ("06000000", "size field 6 outside 7..msize (8192)"),
    ("01200000", "size field 8193 outside 7..msize (8192)"),
    ("ffffffff", "size field 4294967295 outside 7..msize (8192)"),
])
def test_bad_size_is_refused_as_soon_as_the_size_is_in(size_hex, what):
    reader = FrameReader(8192)
    reader.feed(bytes.fromhex(size_hex)[:3])
    assert reader.next_frame() is None  # 3 bytes: cannot judge yet
    reader.feed(bytes.fromhex(size_hex)[3:])
    with pytest.raises(ProtocolError, match="size field .* outside"):
        reader.next_frame()
    with pytest.raises(ProtocolError) as again:  # the stream is out of step for good
        reader.next_frame()
    assert str(again.value) == what


def test_exactly_msize_is_accepted_and_msize_can_change_after_tversion():
    reader = FrameReader(8192)
    big = (8192).to_bytes(4, "little") + bytes([117]) + b"\x01\x00" + (8181).to_bytes(4, "little")
    big += b"z" * 8181
    reader.feed(big)
    assert reader.next_frame() == big
    reader.msize = 4096  # negotiated down by Tversion
    reader.feed(big[:4])
    with pytest.raises(ProtocolError, match="outside 7..msize"):
        reader.next_frame()


def test_minimum_frame():
    reader = FrameReader(4096)
    reader.feed(FRAMES[2])
    assert reader.next_frame() == FRAMES[2]


@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=8),
       st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=50),
       st.booleans())
def test_big_frames_in_their_own_buffers_under_any_chunking(bodies, cuts, direct):
    """Frames of big_frame bytes or more come out whole, however the bytes arrive,
    whether they are fed or received straight into receive_buffer()."""
    frames_in = [codec.encode_bytes(codec.decode(FRAMES[3])) if n == 0 else
                 (7 + 4 + 8 + 4 + n).to_bytes(4, "little") + bytes([118]) + b"\x01\x00"
                 + (1).to_bytes(4, "little") + (0).to_bytes(8, "little") + n.to_bytes(4, "little")
                 + bytes([n % 251]) * n for n in bodies]
    stream = b"".join(frames_in)
    reader = FrameReader(1 << 20, big_frame=1000)
    out, position, i = [], 0, 0
    while position < len(stream):
        cut = cuts[i % len(cuts)]
        i += 1
        target = reader.receive_buffer() if direct else None
        if target is not None:
            take = min(cut, len(target), len(stream) - position)
            target[:take] = stream[position:position + take]
            reader.received(take)
        else:
            take = min(cut, len(stream) - position)
            reader.feed(stream[position:position + take])
        position += take
        out += [bytes(frame) for frame in reader]
    assert out == frames_in
    assert reader.buffered == 0


def test_a_big_frame_gets_its_own_buffer_once_a_quarter_has_come():
    """What a peer makes us hold is what it sent (up to 4x), not what it announced."""
    reader = FrameReader(1 << 20, big_frame=1000)
    size = 400_000
    frame = (size.to_bytes(4, "little") + bytes([118]) + b"\x01\x00" + (1).to_bytes(4, "little")
             + (0).to_bytes(8, "little") + (size - 23).to_bytes(4, "little") + b"w" * (size - 23))
    reader.feed(frame[:10])
    assert reader.receive_buffer() is None and reader.buffered == 10
    reader.feed(frame[10:size // 4 - 1])
    assert reader.receive_buffer() is None and reader.buffered == size // 4 - 1
    reader.feed(frame[size // 4 - 1:size // 4])
    rest = reader.receive_buffer()
    assert rest is not None and len(rest) == size - size // 4
    rest[:] = frame[size // 4:]
    reader.received(len(rest))
    assert bytes(reader.next_frame()) == frame and reader.buffered == 0


def test_a_frame_trickling_in_byte_by_byte_comes_out_whole():
    reader = FrameReader(1 << 20)
    frame = (60_000).to_bytes(4, "little") + bytes([118]) + b"\x01\x00" + b"t" * (60_000 - 7)
    for i in range(len(frame)):
        reader.feed(frame[i:i + 1])
        if i < len(frame) - 1:
            assert reader.next_frame() is None
    assert reader.next_frame() == frame
