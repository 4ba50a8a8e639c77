"""The generated fast path behaves exactly like construct's interpreter.

Valid frames: same bytes out of both encoders, same message out of both decoders.
Invalid frames (random truncations, byte changes, insertions, garbage): both raise
ProtocolError with the same text, or both return equal messages. Nothing else -- an
IndexError or struct.error escaping from either side fails the test.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import ALL_TYPES, DIRENTS, MESSAGES, message_of_type

from ninep.protocol import codec, fastpath, schema
from ninep.protocol.codec import ProtocolError
from ninep.protocol.messages import MESSAGE_CLASSES

# Bytes that hit the interesting checks (NUL, UTF-8 lead/continuation bytes, counts of
# 16/17, all-ones lengths) far more often than uniform bytes would.
BYTES = st.one_of(st.sampled_from([0x00, 0x10, 0x11, 0x80, 0xC0, 0xED, 0xFF]), st.integers(0, 255))

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def outcome(decoder, frame):
    """('ok', message) or ('error', text); anything but ProtocolError propagates."""
    try:
        return ("ok", decoder(frame))
    except ProtocolError as e:
        return ("error", str(e), e.tag, e.message_type)


def assert_same_outcome(frame):
    fast = outcome(codec.decode, frame)
    interpreted = outcome(codec.decode_interpreted, frame)
    assert fast == interpreted, frame.hex()
    return fast


def with_size(frame: bytes) -> bytes:
    """Rewrite the size field to the real length, so the body checks get exercised."""
    if len(frame) < 4:
        return frame
    return len(frame).to_bytes(4, "little") + frame[4:]


@pytest.mark.parametrize("type_byte", ALL_TYPES,
                         ids=[MESSAGE_CLASSES[t].__name__ for t in ALL_TYPES])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_type_round_trips_identically(type_byte, data):
    msg = data.draw(message_of_type(type_byte))
    fast = codec.encode(msg)
    interpreted = codec.encode_interpreted(msg)
    assert len(fast) == len(interpreted)
    assert [bytes(b) for b in fast] == [bytes(b) for b in interpreted]
    frame = b"".join(fast)
    decoded = codec.decode(frame)
    assert decoded == msg
    assert codec.decode_interpreted(frame) == msg
    # built by fastpath's slot-storing constructor: still the real frozen class
    assert type(decoded) is type(msg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.tag = 0
    if not hasattr(msg, "data"):
        assert hash(decoded) == hash(msg)


@SETTINGS
@given(msg=MESSAGES, cut=st.integers(min_value=0), fix_size=st.booleans())
def test_truncated_frames(msg, cut, fix_size):
    frame = codec.encode_bytes(msg)
    cut %= len(frame)
    truncated = frame[:cut]
    kind, *_ = assert_same_outcome(with_size(truncated) if fix_size else truncated)
    if not fix_size:
        assert kind == "error"


@SETTINGS
@given(msg=MESSAGES, where=st.integers(min_value=0), byte=BYTES, fix_size=st.booleans())
def test_changed_byte(msg, where, byte, fix_size):
    frame = bytearray(codec.encode_bytes(msg))
    frame[where % len(frame)] = byte
    assert_same_outcome(with_size(bytes(frame)) if fix_size else bytes(frame))


@SETTINGS
@given(msg=MESSAGES, where=st.integers(min_value=0), extra=st.binary(min_size=1, max_size=20))
def test_inserted_bytes(msg, where, extra):
    frame = codec.encode_bytes(msg)
    where %= len(frame) + 1
    assert_same_outcome(with_size(frame[:where] + extra + frame[where:]))


@SETTINGS
@given(type_byte=st.one_of(st.sampled_from(ALL_TYPES), st.integers(0, 255)),
       tag=st.integers(0, 0xFFFF), body=st.binary(max_size=80))
def test_garbage_bodies(type_byte, tag, body):
    frame = (7 + len(body)).to_bytes(4, "little") + bytes([type_byte]) + tag.to_bytes(2, "little")
    assert_same_outcome(frame + body)


@SETTINGS
@given(entries=DIRENTS)
def test_dirents_round_trip_identically(entries):
    data, packed = codec.pack_dirents(entries, 1 << 20)
    assert packed == len(entries)
    assert data == b"".join(schema.DIRENT.build(e) for e in entries)
    assert codec.unpack_dirents(data) == entries == codec.unpack_dirents_interpreted(data)


@SETTINGS
@given(entries=DIRENTS, where=st.integers(min_value=0), byte=BYTES,
       cut=st.integers(min_value=0))
def test_damaged_dirents(entries, where, byte, cut):
    data = bytearray(codec.pack_dirents(entries, 1 << 20)[0])
    if data:
        data[where % len(data)] = byte
        del data[cut % (len(data) + 1):]

    def result(unpack):
        try:
            return ("ok", unpack(bytes(data)))
        except ProtocolError as e:
            return ("error", str(e))

    assert result(codec.unpack_dirents) == result(codec.unpack_dirents_interpreted)


def test_the_generated_code_is_derived_for_every_schema_entry():
    assert set(fastpath.DECODERS) == set(schema.BODIES)
    assert set(fastpath.ENCODERS) == {MESSAGE_CLASSES[t] for t in schema.BODIES}
    # The schema's field names are the message classes' fields (after tag), in order.
    for type_byte in schema.BODIES:
        cls = MESSAGE_CLASSES[type_byte]
        names = [f.name for f in dataclasses.fields(cls)]
        assert names == ["tag", *schema.body_field_names(type_byte)]
    assert "unpack_from" in fastpath.SOURCE["decode_Rgetattr"]


def test_fast_constructor_only_replaces_plain_generated_inits():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int
        b: str

    @dataclasses.dataclass(frozen=True, slots=True)
    class Validating:
        a: int

        def __post_init__(self):
            if self.a < 0:
                raise ValueError("negative")

    make_plain = fastpath._constructor(Plain)
    assert make_plain is not Plain
    assert make_plain(1, "x") == Plain(1, "x") and type(make_plain(1, "x")) is Plain
    assert fastpath._constructor(Validating) is Validating
