"""The flat Rreaddir record packer is the schema's DIRENT layout, byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from protocol_strategies import DIRENTS

from ninep.protocol import codec, fastpath, schema
from ninep.protocol.messages import Dirent, Qid


@settings(max_examples=300, deadline=None)
@given(entries=DIRENTS)
def test_flat_packer_matches_the_interpreted_schema(entries):
    for entry in entries:
        flat = codec.pack_dirent_fields(entry.qid.type, entry.qid.version, entry.qid.path,
                                        entry.offset, entry.type, entry.name.encode())
        assert flat == schema.DIRENT.build(entry) == fastpath.encode_dirent(entry)
        head = codec.DIRENT_HEAD.pack(entry.qid.type, entry.qid.version, entry.qid.path,
                                      entry.offset, entry.type, len(entry.name.encode()))
        assert head + entry.name.encode() == flat


def test_head_is_the_fixed_part_of_a_record():
    # qid[13] offset[8] type[1] len[2]
    assert codec.DIRENT_HEAD.size == 24
    assert codec.dirent_size("abc") == codec.DIRENT_HEAD.size + 3
    record = codec.pack_dirent_fields(0x80, 7, 1 << 40, (1 << 64) - 1, 4, "é".encode())
    assert codec.unpack_dirents(record) == [Dirent(Qid(0x80, 7, 1 << 40), (1 << 64) - 1, 4, "é")]


@pytest.mark.parametrize("con", [schema.STAT, schema.QID.subcon, schema.s])
def test_flat_layout_refuses_what_is_not_a_flat_record(con):
    with pytest.raises(TypeError):
        fastpath._flat_record_layout(con)
