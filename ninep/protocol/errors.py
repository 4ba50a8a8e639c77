"""The one exception the protocol layer raises for bad input from the peer.

Kept in its own module so that the schema, the generated fast path and the codec can all
raise it without importing each other.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent something malformed; the message says what and where.

    Raised only for *remote* mistakes (bytes we received). Trying to encode a message
    that cannot be put on the wire (a string with NUL, 17 walk names, an int out of
    range) is a *local* mistake and raises ``ValueError`` instead.

    ``tag`` and ``message_type`` are set by ``codec.decode`` when the frame's header was
    intact (the frame is well delimited, only its body is bad -- e.g. a file name that is
    not UTF-8), so a server may answer ``Rlerror`` on that tag instead of hanging up.
    They stay None when the framing itself is broken.
    """

    tag: int | None = None
    message_type: int | None = None


# The wording of each kind of problem lives here so that the construct interpreter and
# the generated fast path report the very same text for the very same bad frame.
TRUNCATED = "truncated"
NOT_UTF8 = "string is not UTF-8"
HAS_NUL = "string contains NUL"
TRAILING = "trailing bytes after the body"


def too_many_elements(count: int, maximum: int) -> str:
    return f"{count} elements, at most {maximum} allowed"


def count_exceeds_data(count: int, present: int) -> str:
    return f"count {count} exceeds the {present} data bytes present"


def size_disagrees(size: int, used: int) -> str:
    return f"size field {size} disagrees with the {used} bytes used"


def in_message(message_name: str, field: str, problem: str) -> ProtocolError:
    """The error for ``problem`` at ``field`` (dotted path, may be empty) of a message."""
    where = f"{message_name}.{field}" if field else message_name
    return ProtocolError(f"{where}: {problem}")


def attach_header(error: ProtocolError, frame) -> ProtocolError:
    """Record the tag and type of ``frame`` on ``error`` if its header is intact."""
    if len(frame) >= 7 and int.from_bytes(frame[:4], "little") == len(frame):
        error.tag = int.from_bytes(frame[5:7], "little")
        error.message_type = frame[4]
    return error
