"""The lock table against a model that cannot be clever: one cell per byte.

Random sequences of Tlock (every type, with a limit sometimes), Tgetlock, release of a
file and release of a connection; after each step the table must say what the byte
model says: granted or not, released or not, refused for the limit or not, the ranges
each owner holds (maximal runs of one type, so merging and splitting are checked), the
counts, and that a reported conflict is a real one. Offsets stay below ``SPAN``;
length 0 ("to EOF") covers the model's cells up to ``CELLS``."""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol.constants import LockType
from ninep.server import locks as locks_module
from ninep.server.locks import TO_EOF, LockLimitError, LockOwner, LockTable, owner_cost

RD, WR, UN = LockType.RDLCK, LockType.WRLCK, LockType.UNLCK
SPAN = 24  # finite ranges end at or before this ...
CELLS = SPAN + 4  # ... and to-EOF ones at the model's last cell
OWNERS = [LockOwner("c1", "h", 1), LockOwner("c1", "h", 2), LockOwner("c2", "h", 1),
          LockOwner("c3", "x" * 300, 9)]  # a long client_id: costs one range more

KEYS = ["f", "g"]


class ByteModel:
    def __init__(self) -> None:
        self.cells: dict[tuple, list] = {}  # (key, owner) -> [None | RD | WR] * CELLS

    def row(self, key, owner) -> list:
        return self.cells.get((key, owner), [None] * CELLS)

    @staticmethod
    def span(start, length):
        return range(start, CELLS if length == 0 else start + length)

    def conflicts(self, key, owner, type_, start, length) -> bool:
        if type_ == UN:
            return False
        for (k, other), row in self.cells.items():
            if k == key and other != owner:
                if any(row[i] is not None and (row[i] == WR or type_ == WR)
                       for i in self.span(start, length)):
                    return True
        return False

    def after_set(self, key, owner, type_, start, length) -> tuple[list, bool]:
        row = list(self.row(key, owner))
        released = False
        for i in self.span(start, length):
            if row[i] is not None and (type_ == UN or (row[i] == WR and type_ == RD)):
                released = True
            row[i] = None if type_ == UN else type_
        return row, released

    def runs(self, key, owner, row=None) -> list[tuple]:
        row = self.row(key, owner) if row is None else row
        out, i = [], 0
        while i < CELLS:
            if row[i] is None:
                i += 1
                continue
            j = i
            while j < CELLS and row[j] == row[i]:
                j += 1
            out.append((owner, row[i], i, TO_EOF if j == CELLS else j))
            i = j
        return out

    def held_by(self, connection) -> int:
        """Ranges, plus owner_cost per (file, owner) holding anything."""
        return sum(self.cost(k, o) for (k, o) in self.cells if o.connection == connection)

    def cost(self, key, owner, row=None) -> int:
        runs = len(self.runs(key, owner, row))
        return runs + owner_cost(owner) if runs else 0


def as_tuples(table, key):
    return sorted(((h.owner, h.type, h.start, h.end) for h in table.locks(key)), key=repr)


def model_tuples(model, key):
    return sorted((r for (k, o) in model.cells if k == key for r in model.runs(k, o)), key=repr)


def assert_indexes_consistent(table):
    """The cross-owner indexes are what a rebuild from the owners' ranges gives."""
    for file in table._files.values():
        fresh = copy.copy(file)
        fresh.rebuild()
        assert (file.w_starts, file.w_ends, file.w_owners) == (fresh.w_starts, fresh.w_ends, fresh.w_owners)
        assert (file.r_starts, file.r_ends) == (fresh.r_starts, fresh.r_ends)
        assert all(s[0].starts or s[1].starts for s in file.owners.values())


def ranges_():
    return st.integers(0, SPAN - 1).flatmap(
        lambda start: st.tuples(st.just(start), st.integers(0, SPAN - start)))


set_op = st.tuples(st.just("set"), st.sampled_from(KEYS), st.integers(0, len(OWNERS) - 1),
                   st.sampled_from([RD, WR, UN]), ranges_(),
                   st.one_of(st.none(), st.integers(0, 8)))
get_op = st.tuples(st.just("get"), st.sampled_from(KEYS), st.integers(0, len(OWNERS) - 1),
                   st.sampled_from([RD, WR]), ranges_())
release_op = st.tuples(st.just("release"), st.sampled_from(KEYS), st.sampled_from(["c1", "c2", "c3"]))
drop_op = st.tuples(st.just("drop"), st.sampled_from(["c1", "c2", "c3"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(set_op, set_op, set_op, get_op, release_op, drop_op), max_size=60))
def test_table_matches_the_byte_model(ops):
    run_against_model(ops)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(set_op, set_op, set_op, get_op, release_op, drop_op), max_size=60))
def test_table_matches_the_byte_model_when_every_change_rebuilds_the_indexes(ops):
    """The same, with the bulk path (rebuild the file's indexes) taken every time."""
    saved, locks_module._REBUILD_AT = locks_module._REBUILD_AT, 0
    try:
        run_against_model(ops)
    finally:
        locks_module._REBUILD_AT = saved


def run_against_model(ops):
    table, model = LockTable(), ByteModel()
    for op in ops:
        if op[0] == "set":
            _, key, who, type_, (start, length), limit = op
            owner = OWNERS[who]
            if model.conflicts(key, owner, type_, start, length):
                assert table.set(key, owner, type_, start, length, limit) == (False, set())
                continue
            row, released = model.after_set(key, owner, type_, start, length)
            growth = model.cost(key, owner, row) - model.cost(key, owner)
            if limit is not None and growth > 0 and model.held_by(owner.connection) + growth > limit:
                with pytest.raises(LockLimitError):
                    table.set(key, owner, type_, start, length, limit)
            else:
                granted, keys = table.set(key, owner, type_, start, length, limit)
                assert granted and keys == ({key} if released else set())
                model.cells[(key, owner)] = row
        elif op[0] == "get":
            _, key, who, type_, (start, length) = op
            owner = OWNERS[who]
            held = table.conflict(key, owner, type_, start, length)
            assert (held is not None) == model.conflicts(key, owner, type_, start, length)
            if held is not None:
                assert held.owner != owner and (held.type == WR or type_ == WR)
                hi = TO_EOF if length == 0 else start + length
                assert held.start < hi and start < held.end
                assert (held.owner, held.type, held.start, held.end) in as_tuples(table, key)
        elif op[0] == "release":
            _, key, connection = op
            had = any(model.runs(k, o) for (k, o) in model.cells if k == key and o.connection == connection)
            assert table.release(key, connection) == ({key} if had else set())
            for cell in [c for c in model.cells if c[0] == key and c[1].connection == connection]:
                del model.cells[cell]
        else:
            _, connection = op
            keys = {k for (k, o) in model.cells if o.connection == connection and model.runs(k, o)}
            assert table.release_connection(connection) == keys
            for cell in [c for c in model.cells if c[1].connection == connection]:
                del model.cells[cell]
        for key in KEYS:
            assert as_tuples(table, key) == model_tuples(model, key)
        for connection in ("c1", "c2", "c3"):
            assert table.held_by(connection) == model.held_by(connection)
        assert len(table) == sum(len(model.runs(k, o)) for (k, o) in model.cells)
        assert_indexes_consistent(table)
