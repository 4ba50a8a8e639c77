"""ninep.protocol: the 9P2000.L wire protocol, pure (no trio, no I/O).

Import the codec from ``ninep.protocol.codec``; the names below are re-exported for
convenience. See docs/protocol.md.
"""

from .codec import (
    FrameReader,
    ProtocolError,
    decode,
    encode,
    encode_bytes,
    pack_dirents,
    unpack_dirents,
)

__all__ = [
    "FrameReader", "ProtocolError", "decode", "encode", "encode_bytes",
    "pack_dirents", "unpack_dirents",
]
