"""Per-message decoders/encoders derived from ``schema`` (interim: interpreted).

This first version only dispatches into construct so that the codec API is usable; the
generated specialised code replaces it.
"""

from __future__ import annotations

from . import schema
from .messages import MESSAGE_CLASSES


def _make_decoder(type_byte):
    def decode(frame, length, tag):
        from .codec import decode_interpreted
        return decode_interpreted(frame)
    return decode


def _make_encoder(type_byte):
    def encode(msg):
        from .codec import encode_interpreted
        return encode_interpreted(msg)
    return encode


DECODERS = {t: _make_decoder(t) for t in schema.BODIES}
ENCODERS = {MESSAGE_CLASSES[t]: _make_encoder(t) for t in schema.BODIES}


def encode_dirent(entry):
    return schema.DIRENT.build(entry)


def decode_dirent(data, position, end):
    from .codec import unpack_dirents_interpreted
    raise NotImplementedError
