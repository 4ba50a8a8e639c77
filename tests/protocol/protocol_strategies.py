"""Hypothesis strategies for every message, derived from the construct schema.

Deriving them from ``schema.BODIES`` (rather than listing messages again) means a
message added to the schema is automatically covered by the equivalence tests. The
golden tests are what pin the schema itself to the spec.
"""

from __future__ import annotations

from construct import FormatField, Renamed
from hypothesis import strategies as st

from ninep.protocol import schema
from ninep.protocol.messages import MESSAGE_CLASSES

# Valid 9P strings: any Unicode scalar value except NUL (surrogates cannot be UTF-8).
NINEP_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
BULK = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(bytearray),
    st.binary(max_size=64).map(memoryview),
)


def strategy_for(con) -> st.SearchStrategy:
    """A strategy for valid values of one schema node."""
    if isinstance(con, Renamed):
        return strategy_for(con.subcon)
    if isinstance(con, FormatField):
        return st.integers(min_value=0, max_value=(1 << (8 * con.length)) - 1)
    if isinstance(con, schema.Record):
        return st.builds(con.cls, *(strategy_for(sub) for sub in con.subcon.subcons))
    if isinstance(con, schema.String9P):
        return NINEP_TEXT
    if isinstance(con, schema.BoundedArray):
        return st.lists(strategy_for(con.element), max_size=con.maximum).map(tuple)
    if isinstance(con, schema.Payload):
        return BULK
    if isinstance(con, schema.Sized):
        return strategy_for(con.subcon)
    raise TypeError(f"no strategy for {con!r}")


def message_of_type(type_byte: int) -> st.SearchStrategy:
    fields = [strategy_for(sub) for sub in schema.BODIES[type_byte].subcons]
    return st.builds(MESSAGE_CLASSES[type_byte], st.integers(0, 0xFFFF), *fields)


ALL_TYPES = sorted(schema.BODIES)
MESSAGES = st.sampled_from(ALL_TYPES).flatmap(message_of_type)
DIRENTS = st.lists(strategy_for(schema.DIRENT), max_size=6)
