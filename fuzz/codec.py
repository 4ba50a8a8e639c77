"""The codec: any bytes as a frame. decode must raise only ProtocolError, and the fast
path must agree with construct's interpreter (the reference it is derived from) on the
message or on the fact of an error; a decoded message must encode back to its frame."""

from __future__ import annotations

import struct


from ninep.protocol import codec
from ninep.protocol.errors import ProtocolError


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    # The fuzzer gives type, tag and body; the size field is made true so the decoders
    # see well-delimited frames (lying sizes are the FrameReader's business, fuzzed below).
    frame = struct.pack("<I", len(data) + 4) + data
    fast = reference = None
    try:
        fast = codec.decode(frame)
    except ProtocolError as exc:
        fast = exc
    try:
        reference = codec.decode_interpreted(frame)
    except ProtocolError as exc:
        reference = exc
    if isinstance(fast, Exception) or isinstance(reference, Exception):
        assert isinstance(fast, Exception) and isinstance(reference, Exception), (fast, reference)
    else:
        assert fast == reference, (fast, reference)
        assert codec.encode_bytes(fast) == frame, fast
    # The stream framer over the raw bytes, size field and all: frames or ProtocolError.
    reader = codec.FrameReader(8192)
    reader.feed(data)
    try:
        for chunk in reader:
            assert 7 <= len(chunk) <= 8192
    except ProtocolError:
        pass


def main() -> None:
    from fuzz.driver import run
    run("codec", one_input)


if __name__ == "__main__":
    main()
