"""One readable line per message for --trace (like lib9p's -D). Pure."""

from __future__ import annotations

from dataclasses import fields

from ..protocol.constants import Errno
from ..protocol.messages import Message, Qid

_PAYLOAD_PREVIEW = 16  # bytes of Rread/Twrite/Rreaddir data shown


def _qid(qid: Qid) -> str:
    return f"({qid.type:#x},{qid.version},{qid.path:#x})"


def _value(name: str, value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        head = bytes(value[:_PAYLOAD_PREVIEW])
        more = "..." if len(value) > _PAYLOAD_PREVIEW else ""
        return f"<{len(value)} bytes {head!r}{more}>"
    if isinstance(value, Qid):
        return _qid(value)
    if isinstance(value, tuple) and value and isinstance(value[0], Qid):
        return "[" + " ".join(_qid(q) for q in value) + "]"
    if name == "ecode":
        try:
            return f"{value} ({Errno(value).name})"
        except ValueError:
            return str(value)
    return repr(value)


def describe(msg: Message) -> str:
    """``Twalk tag=1 fid=0 newfid=1 wnames=('etc',)``; payloads abbreviated."""
    parts = [type(msg).__name__]
    for f in fields(msg):
        parts.append(f"{f.name}={_value(f.name, getattr(msg, f.name))}")
    return " ".join(parts)
