"""Specialised decoders and encoders, generated once at import from ``schema``.

construct's interpreter walks a tree of objects per field and costs tens of microseconds
per message. Here the same tree is walked *once*, at import, and turned into straight-line
Python: consecutive fixed-width integers (qids included) become one precompiled
``struct.Struct`` run, read with a single ``unpack_from`` after a single bounds check;
strings, arrays, bulk data and sized blocks get explicit length checks. Nothing about a
layout is written here by hand -- add a message to ``schema.BODIES`` and it appears in
``DECODERS``/``ENCODERS``. ``SOURCE`` keeps the generated text for reading and debugging.

The generated code must raise exactly what the interpreter raises (same ProtocolError
text for the same bad frame, ValueError for unencodable messages); the hypothesis tests in
tests/protocol/test_protocol_fastpath_equivalence.py hold it to that. construct's own
``.compile()`` is not used: it is documented as unsafe for untrusted input.

Decoders: ``decode_X(frame) -> message``, header checks included (``codec.decode`` only
dispatches on the type byte). Encoders: ``encode_X(msg) -> list of buffers``.
"""

from __future__ import annotations

import dataclasses
import struct

from construct import FormatField, Renamed

from . import errors, schema
from .errors import ProtocolError
from .messages import MESSAGE_CLASSES, PLAIN_INIT_FILE

SOURCE: dict[str, str] = {}
"""Generated function name -> its Python source."""


# --- helpers the generated code calls, only on error paths ---------------------------------

def _truncated(message_name: str, field_ends: tuple, available: int) -> ProtocolError:
    """Name the first field of a fixed run that does not fit in ``available`` bytes --
    the same field construct's interpreter stops at."""
    for end_offset, field in field_ends:
        if end_offset > available:
            return errors.in_message(message_name, field, errors.TRUNCATED)
    raise AssertionError("bounds check failed but every field fits")  # pragma: no cover


def _truncated_array(message_name: str, element_ends: tuple, element_size: int,
                     available: int) -> ProtocolError:
    """Same, for an array of fixed-size elements: every element before the partial one
    fits, so the culprit is a field of the element ``available % element_size`` cuts."""
    return _truncated(message_name, element_ends, available % element_size)


def _short_frame(frame, message_name: str, field_ends: tuple) -> ProtocolError:
    """A frame too short for its first run: header problems first, as the interpreter."""
    schema.check_header(frame)
    return _truncated(message_name, field_ends, len(frame))


def _encode_failed(message_name: str, exc: Exception) -> ValueError:
    return ValueError(f"cannot encode {message_name}: {exc}")


def _constructor(cls):
    """A function equivalent to ``cls(*fields)`` for a frozen slotted dataclass, faster.

    A frozen dataclass's ``__init__`` stores each field through ``object.__setattr__``,
    which costs about twice a direct slot store -- 2 us for Rgetattr's 21 fields. When the
    class's ``__init__`` is the plain generated one (no ``__post_init__``, no hand-written
    ``__init__`` that might validate), storing into the slots directly builds the very
    same object. Otherwise the class itself is used.
    """
    init_code = getattr(cls.__init__, "__code__", None)
    plain = (dataclasses.is_dataclass(cls) and hasattr(cls, "__slots__")
             and not hasattr(cls, "__post_init__")
             and init_code is not None
             and init_code.co_filename in ("<string>", PLAIN_INIT_FILE))
    if not plain:
        return cls
    names = [field.name for field in dataclasses.fields(cls)]
    namespace = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_set_{name}": cls.__dict__[name].__set__ for name in names})
    source = (f"def make_{cls.__name__}({', '.join(names)}):\n    obj = _new(_cls)\n"
              + "".join(f"    _set_{name}(obj, {name})\n" for name in names)
              + "    return obj\n")
    exec(compile(source, f"<ninep.protocol.fastpath make_{cls.__name__}>", "exec"), namespace)
    return namespace[f"make_{cls.__name__}"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_fixed(con) -> bool:
    """True if ``con`` is a fixed-width run of integers (qids included)."""
    if isinstance(con, Renamed):
        return _is_fixed(con.subcon)
    if isinstance(con, FormatField):
        return True
    if isinstance(con, schema.Record):
        return all(_is_fixed(sub) for sub in con.subcon.subcons)
    return False


class _Generator:
    """Shared bookkeeping: indented source lines, fresh names, constants for the namespace."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"

    def constant(self, value, hint: str) -> str:
        name = f"_{hint}_{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)


# --- decoders ------------------------------------------------------------------------------

class _DecoderGenerator(_Generator):
    """Turns a schema tree into a function body that reads ``buf`` from ``pos``."""

    def __init__(self, namespace: dict, message_name: str):
        super().__init__(namespace)
        self.name = repr(message_name)
        self.run: list[tuple[str, str, str]] = []  # (struct letter, variable, field path)
        self.end = "end"
        self.uses_view = False
        self.uses_strings = False
        self.header_pending = False

    def start_frame(self) -> None:
        """Read the header as the start of the first run: one unpack for both."""
        self.run = [("I", "size", ""), ("B", "_type", ""), ("H", "tag", "")]
        self.header_pending = True

    def layout(self, run) -> tuple[struct.Struct, str, str]:
        """The run's Struct, its name in the namespace, and the field-end table."""
        layout = struct.Struct("<" + "".join(letter for letter, _, _ in run))
        field_ends, offset = [], 0
        for letter, _, field in run:
            offset += struct.calcsize("<" + letter)
            field_ends.append((offset, field))
        return layout, self.constant(layout, "run"), self.constant(tuple(field_ends), "ends")

    def flush(self) -> None:
        """Emit one bounds check and one unpack_from for the pending fixed run."""
        if not self.run:
            return
        layout, run_struct, ends = self.layout(self.run)
        targets = "".join(f"{variable}, " for _, variable, _ in self.run)
        if self.header_pending:
            self.emit("end = len(buf)")
            self.emit(f"if {layout.size} > end: raise _short_frame(buf, {self.name}, {ends})")
            self.emit(f"{targets}= {run_struct}.unpack_from(buf)")
            self.emit("if size != end: _check_header(buf)")
            self.emit(f"pos = {layout.size}")
            self.header_pending = False
            self.run = []
            return
        self.emit(f"if pos + {layout.size} > {self.end}: "
                  f"raise _truncated({self.name}, {ends}, {self.end} - pos)")
        if len(self.run) == 1 and layout.size <= 2:
            # A lone u8/u16 (string lengths, mostly): indexing beats a struct call.
            variable = self.run[0][1]
            self.emit(f"{variable} = buf[pos]" if layout.size == 1 else
                      f"{variable} = buf[pos] | buf[pos + 1] << 8")
        else:
            self.emit(f"{targets}= {run_struct}.unpack_from(buf, pos)")
        self.emit(f"pos += {layout.size}")
        self.run = []

    def fail(self, path: str, problem_expression: str) -> str:
        return f"raise _in_message({self.name}, {path!r}, {problem_expression})"

    def length_prefix(self, con, path: str) -> str:
        """Read a count/length field as the last member of the run, then flush."""
        variable = self.fresh("n")
        self.run.append((con.fmtstr[1], variable, path))
        self.flush()
        return variable

    def value(self, con, path: str) -> str:
        """Generate code reading ``con``; return an expression for its value."""
        if isinstance(con, Renamed):
            return self.value(con.subcon, _join(path, con.name))
        if isinstance(con, FormatField):
            variable = self.fresh("v")
            self.run.append((con.fmtstr[1], variable, path))
            return variable
        if isinstance(con, schema.Record):
            cls = self.constant(_constructor(con.cls), con.cls.__name__)
            members = [self.value(sub, path) for sub in con.subcon.subcons]
            return f"{cls}({', '.join(members)})"
        if isinstance(con, schema.String9P):
            return self.string(con, path)
        if isinstance(con, schema.BoundedArray):
            return self.array(con, path)
        if isinstance(con, schema.Payload):
            return self.payload(con, path)
        if isinstance(con, schema.Sized):
            return self.sized(con, path)
        raise TypeError(f"fastpath cannot generate code for {con!r} at {path}")

    def string(self, con, path: str) -> str:
        length = self.length_prefix(con.length, path)
        text = self.fresh("s")
        self.emit(f"if pos + {length} > {self.end}: {self.fail(path, '_TRUNCATED')}")
        self.emit("try:")
        self.emit(f"    {text} = buf[pos:pos + {length}].decode()")  # strict UTF-8
        self.emit("except UnicodeDecodeError:")
        self.emit(f"    {self.fail(path, '_NOT_UTF8')} from None")
        self.emit(f"if '\\x00' in {text}: {self.fail(path, '_HAS_NUL')}")
        self.emit(f"pos += {length}")
        self.uses_strings = True
        return text

    def array(self, con, path: str) -> str:
        count = self.length_prefix(con.count, path)
        self.emit(f"if {count} > {con.maximum}: "
                  f"{self.fail(path, f'_too_many_elements({count}, {con.maximum})')}")
        if _is_fixed(con.element):
            return self.fixed_array(con, count, path)
        items = self.fresh("items")
        self.emit(f"{items} = []")
        self.emit(f"for _ in range({count}):")
        self.depth += 1
        element = self.value(con.element, path)
        self.flush()
        self.emit(f"{items}.append({element})")
        self.depth -= 1
        return f"tuple({items})"

    def fixed_array(self, con, count: str, path: str) -> str:
        """Fixed-size elements (Rwalk qids): one bounds check, one iter_unpack."""
        element = self.value(con.element, path)
        layout, run_struct, ends = self.layout(self.run)
        variables = "".join(f"{variable}, " for _, variable, _ in self.run)
        self.run = []
        extent = self.fresh("extent")
        self.emit(f"{extent} = {count} * {layout.size}")
        self.emit(f"if pos + {extent} > {self.end}: raise _truncated_array("
                  f"{self.name}, {ends}, {layout.size}, {self.end} - pos)")
        items = self.fresh("items")
        self.emit(f"{items} = tuple([{element} for {variables}in "
                  f"{run_struct}.iter_unpack(buf[pos:pos + {extent}])])")
        self.emit(f"pos += {extent}")
        return items

    def payload(self, con, path: str) -> str:
        count = self.length_prefix(con.count, path)
        self.emit(f"if {count} > {self.end} - pos: "
                  f"{self.fail(path, f'_count_exceeds_data({count}, {self.end} - pos)')}")
        data = self.fresh("data")
        self.emit(f"{data} = view[pos:pos + {count}]")  # zero-copy slice of the frame
        self.emit(f"pos += {count}")
        self.uses_view = True
        return data

    def sized(self, con, path: str) -> str:
        size = self.length_prefix(con.prefix, path)
        start, block_end = self.fresh("start"), self.fresh("block_end")
        self.emit(f"{start} = pos")
        self.emit(f"{block_end} = pos + {size}")
        self.emit(f"if {block_end} > {self.end}: {self.fail(path, '_TRUNCATED')}")
        outer_end, self.end = self.end, block_end
        inner = self.value(con.subcon, path)
        self.flush()
        self.end = outer_end
        self.emit(f"if pos != {block_end}: "
                  f"{self.fail(path, f'_size_disagrees({size}, pos - {start})')}")
        return inner

    def prologue(self, convert: bool = True) -> list[str]:
        lines = ["    view = memoryview(buf)"] if self.uses_view else []
        if self.uses_strings and convert:
            # bytes.decode is the fastest strict UTF-8 decoder; frames with strings are
            # small, so a bytearray/memoryview frame is copied once rather than sliced.
            lines.append("    if buf.__class__ is not bytes: buf = bytes(buf)")
        return lines


def _generate_message_decoder(namespace: dict, type_byte: int) -> str:
    cls = MESSAGE_CLASSES[type_byte]
    gen = _DecoderGenerator(namespace, cls.__name__)
    gen.start_frame()
    members = [gen.value(sub, "") for sub in schema.BODIES[type_byte].subcons]
    gen.flush()
    gen.emit(f"if pos != end: raise _in_message({gen.name}, '', _TRAILING)")
    cls_name = gen.constant(_constructor(cls), cls.__name__)
    gen.emit(f"return {cls_name}({', '.join(['tag', *members])})")
    function = f"decode_{cls.__name__}"
    return _define(namespace, function, "buf", gen.prologue() + gen.lines)


def _generate_dirents_decoder(namespace: dict) -> str:
    """All the records of an Rreaddir's data, in one loop (no call per record)."""
    gen = _DecoderGenerator(namespace, "Dirent")
    gen.emit("pos = 0")
    gen.emit("entries = []")
    gen.emit("while pos < end:")
    gen.depth += 1
    record = gen.value(schema.DIRENT, "")
    gen.flush()
    gen.emit(f"entries.append({record})")
    gen.depth -= 1
    gen.emit("return entries")
    # The caller (codec.unpack_dirents) hands over bytes, so strings take the fast path.
    return _define(namespace, "decode_dirents", "buf, end", gen.prologue(False) + gen.lines)


# --- encoders ------------------------------------------------------------------------------

class _EncoderGenerator(_Generator):
    """Turns a schema tree into a function body that appends packed bytes to ``parts``."""

    def __init__(self, namespace: dict, message_name: str):
        super().__init__(namespace)
        self.name = repr(message_name)
        self.run: list[tuple[str, str]] = []  # (struct letter, expression)
        self.parts = "parts"
        self.payload: tuple[str, str] | None = None  # (buffer variable, length variable)

    def flush(self) -> None:
        if not self.run:
            return
        layout = struct.Struct("<" + "".join(letter for letter, _ in self.run))
        run_struct = self.constant(layout, "run")
        arguments = ", ".join(expression for _, expression in self.run)
        self.emit(f"{self.parts}.append({run_struct}.pack({arguments}))")
        self.run = []

    def bind(self, expression: str, hint: str) -> str:
        """Evaluate ``expression`` once into a local (attribute lookups are not free)."""
        variable = self.fresh(hint)
        self.emit(f"{variable} = {expression}")
        return variable

    def value(self, con, expression: str) -> None:
        if isinstance(con, Renamed):
            return self.value(con.subcon, expression)
        if isinstance(con, FormatField):
            self.run.append((con.fmtstr[1], expression))
        elif isinstance(con, schema.Record):
            record = self.bind(expression, "r")
            for sub in con.subcon.subcons:
                self.value(sub, f"{record}.{sub.name}")
        elif isinstance(con, schema.String9P):
            raw = self.bind(f"_encode_string({expression})", "b")
            self.run.append((con.length.fmtstr[1], f"len({raw})"))
            self.flush()
            self.emit(f"{self.parts}.append({raw})")
        elif isinstance(con, schema.BoundedArray):
            items = self.bind(expression, "seq")
            self.emit(f"if {items}.__class__ is str: raise ValueError("
                      f"'a 9P array needs a sequence of elements, not a str')")
            self.emit(f"if len({items}) > {con.maximum}: raise ValueError("
                      f"_too_many_elements(len({items}), {con.maximum}))")
            self.run.append((con.count.fmtstr[1], f"len({items})"))
            self.flush()
            item = self.fresh("item")
            self.emit(f"for {item} in {items}:")
            self.depth += 1
            self.value(con.element, item)
            self.flush()
            self.depth -= 1
        elif isinstance(con, schema.Payload):
            data = self.bind(expression, "data")
            length = self.bind(f"_payload_length({data})", "n")
            self.run.append((con.count.fmtstr[1], length))
            self.payload = (data, length)
        elif isinstance(con, schema.Sized):
            self.flush()  # what precedes the block belongs to the outer parts
            outer_parts, self.parts = self.parts, self.bind("[]", "block_parts")
            self.value(con.subcon, expression)
            self.flush()
            block = self.bind(f"b''.join({self.parts})", "block")
            self.parts = outer_parts
            self.emit(f"if len({block}) > {schema.MAX_STRING_BYTES}: "
                      f"raise ValueError('sized block too long')")
            self.run.append((con.prefix.fmtstr[1], f"len({block})"))
            self.flush()
            self.emit(f"{self.parts}.append({block})")
        else:
            raise TypeError(f"fastpath cannot generate code for {con!r}")


def _generate_message_encoder(namespace: dict, type_byte: int) -> str:
    cls = MESSAGE_CLASSES[type_byte]
    gen = _EncoderGenerator(namespace, cls.__name__)
    fields = schema.BODIES[type_byte].subcons
    is_payload = [isinstance(sub.subcon, schema.Payload) for sub in fields]
    assert not any(is_payload[:-1]), f"{cls.__name__}: bulk data must be the last field"
    gen.depth = 2  # inside try:
    if all(_is_fixed(sub) or payload for sub, payload in zip(fields, is_payload)):
        # Everything but a trailing payload is fixed: the size is known up front, so the
        # whole header and fixed part is one struct.pack.
        gen.run = [("I", "size"), ("B", str(type_byte)), ("H", "msg.tag")]
        for sub in fields:
            gen.value(sub, f"msg.{sub.name}")
        layout_struct = struct.Struct("<" + "".join(letter for letter, _ in gen.run))
        fixed = layout_struct.size
        size = f"{fixed} + {gen.payload[1]}" if gen.payload else str(fixed)
        layout = gen.constant(layout_struct, "run")
        arguments = ", ".join(expression for _, expression in gen.run)
        gen.emit(f"size = {size}")
        head = f"{layout}.pack({arguments})"
    else:
        gen.emit("parts = []")
        gen.run = [("H", "msg.tag")]
        for sub in fields:
            gen.value(sub, f"msg.{sub.name}")
        gen.flush()
        gen.emit("body = b''.join(parts)")
        extra = f" + {gen.payload[1]}" if gen.payload else ""
        head = f"_SIZE_TYPE.pack(5 + len(body){extra}, {type_byte}) + body"
    result = f"[{head}, {gen.payload[0]}]" if gen.payload else f"[{head}]"
    gen.emit(f"return {result}")
    lines = ["    try:", *gen.lines, "    except _struct_error as e:",
             f"        raise _encode_failed({gen.name}, e) from None"]
    return _define(namespace, f"encode_{cls.__name__}", "msg", lines)


def _generate_dirent_encoder(namespace: dict) -> str:
    gen = _EncoderGenerator(namespace, "Dirent")
    gen.depth = 2
    gen.emit("parts = []")
    gen.value(schema.DIRENT, "entry")
    gen.flush()
    gen.emit("return b''.join(parts)")
    lines = ["    try:", *gen.lines, "    except _struct_error as e:",
             f"        raise _encode_failed({gen.name}, e) from None"]
    return _define(namespace, "encode_dirent", "entry", lines)


def _flat_record_layout(con, prefix: str = "") -> tuple[list[tuple[str, str]], str]:
    """A Record of fixed integers (nested records allowed) ending in one string ->
    ([(struct letter, flat field name)...] including the string's length, string field
    name). Anything else is not a flat record, and TypeError says so."""
    if isinstance(con, Renamed):
        return _flat_record_layout(con.subcon, _join(prefix, con.name))
    if not isinstance(con, schema.Record):
        raise TypeError(f"not a record: {con!r}")
    letters: list[tuple[str, str]] = []
    subcons = con.subcon.subcons
    for position, sub in enumerate(subcons):
        path = _join(prefix, sub.name)
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        if isinstance(inner, FormatField):
            letters.append((inner.fmtstr[1], path.replace(".", "_")))
        elif isinstance(inner, schema.Record):
            nested, string = _flat_record_layout(inner, path)
            if string:
                raise TypeError(f"{path}: a string inside a nested record")
            letters += nested
        elif isinstance(inner, schema.String9P) and position == len(subcons) - 1:
            letters.append((inner.length.fmtstr[1], f"len({path.replace('.', '_')})"))
            return letters, path.replace(".", "_")
        else:
            raise TypeError(f"{path}: not a fixed integer or a final string")
    return letters, ""


def _generate_flat_dirent_packer(namespace: dict) -> tuple[str, struct.Struct]:
    """``pack_dirent_fields(qid_type, qid_version, qid_path, offset, type, name)``:
    one Rreaddir record from plain ints and the name's UTF-8 bytes, no Dirent or Qid
    objects (backends that list thousands of entries build wire records directly).
    The caller vouches for ``name``: UTF-8, no NUL, at most 65535 bytes. Also returns
    the struct of everything before the name (name length included) for callers that
    pack into their own buffer."""
    layout, string = _flat_record_layout(schema.DIRENT)
    head = struct.Struct("<" + "".join(letter for letter, _ in layout))
    head_name = _Generator(namespace).constant(head, "dirent_head")
    parameters = [name for _, name in layout if not name.startswith("len(")] + [string]
    arguments = ", ".join(name for _, name in layout)
    lines = [f"    return {head_name}.pack({arguments}) + {string}"]
    return _define(namespace, "pack_dirent_fields", ", ".join(parameters), lines), head


# --- assembly --------------------------------------------------------------------------------

def _define(namespace: dict, function: str, parameters: str, body: list[str]) -> str:
    source = f"def {function}({parameters}):\n" + "\n".join(body) + "\n"
    SOURCE[function] = source
    exec(compile(source, f"<ninep.protocol.fastpath {function}>", "exec"), namespace)
    return function


def _build():
    namespace = {
        "_truncated": _truncated,
        "_truncated_array": _truncated_array,
        "_short_frame": _short_frame,
        "_check_header": schema.check_header,
        "_in_message": errors.in_message,
        "_TRUNCATED": errors.TRUNCATED,
        "_NOT_UTF8": errors.NOT_UTF8,
        "_HAS_NUL": errors.HAS_NUL,
        "_TRAILING": errors.TRAILING,
        "_too_many_elements": errors.too_many_elements,
        "_count_exceeds_data": errors.count_exceeds_data,
        "_size_disagrees": errors.size_disagrees,
        "_encode_string": schema.encode_string,
        "_payload_length": schema.payload_length,
        "_encode_failed": _encode_failed,
        "_struct_error": struct.error,
        "_SIZE_TYPE": struct.Struct("<IB"),
    }
    decoders, encoders = {}, {}
    for type_byte in schema.BODIES:
        decoders[type_byte] = namespace[_generate_message_decoder(namespace, type_byte)]
        encoders[MESSAGE_CLASSES[type_byte]] = namespace[
            _generate_message_encoder(namespace, type_byte)]
    dirents_decoder = namespace[_generate_dirents_decoder(namespace)]
    dirent_encoder = namespace[_generate_dirent_encoder(namespace)]
    flat_packer, dirent_head = _generate_flat_dirent_packer(namespace)
    return (decoders, encoders, dirents_decoder, dirent_encoder, namespace[flat_packer],
            dirent_head)


(DECODERS, ENCODERS, decode_dirents, encode_dirent, pack_dirent_fields,
 DIRENT_HEAD) = _build()
"""type byte -> decoder; message class -> encoder; Rreaddir data decoder; record encoder;
record packer from plain fields; struct of a record's fixed part + name length."""
