"""Parse `.mir` text into a `Module`.

    module = parse_module(text, "model.mir")            # parses and verifies
    module = parse_module(read_source("model.mir"))      # a file, checked UTF-8

Parsing one chunk of a larger file (`--split-input-file`): pass the chunk's
text, `line_offset` (the lines before it) and `source=` the whole file's
`Source`; positions then count from the start of the file and diagnostics
show the file's own lines.

The grammar is grammar.lark (LALR); the callbacks below build the IR while
lark parses, so no parse tree is built. Every failure is a `MeshirError` at a
`file:line:col`.
"""
from __future__ import annotations

import gc
import json
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedToken

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import Location, MeshirError, Source
from meshir.dtypes import DTYPES, DType
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.mesh import LayoutRules, Mesh
from meshir.registry import find
from meshir.types import Dim, TensorType
from meshir.verifier import verify_module

from .lexer import ContextualLexer, LexInput, syntax_error

_VALUE_NAME = re.compile(r"%([A-Za-z0-9_.]+)")
_SYMBOL_NAME = re.compile(r"@([A-Za-z_][A-Za-z0-9_.]*)")
_TYPE_TEXT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[[^\]]*\]")
# The parts of an OP_LINE token; the lexer has already checked its syntax.
_OP_PARTS = re.compile(
    r"(?:(?P<results>%[^=]*)=[ \t]*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]*(?P<operands>\([^)]*\)|@[^{:]*)"
    r"[ \t]*(?P<attrs>\{[^}]*\})?[ \t]*(?:(?P<colon>:)[ \t]*(?P<types>.*))?\Z"
)
_COARSE_ATTR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(\[[^\]]*\]|[^,}]+)")
_SIZED_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*([0-9]+)")
_DIGITS = re.compile(r"[+-]?[0-9]+\Z")
_KNOWN_DTYPES = ", ".join(DTYPES)


def read_source(path: str) -> Source:
    """The file as a `Source`; MeshirError when it cannot be read or is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MeshirError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = data[: exc.start].decode("utf-8")
        line = good.count("\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        shown = Source(path, data.decode("utf-8", errors="replace"))
        raise MeshirError(f"the file is not UTF-8 text: byte 0x{data[exc.start]:02x} cannot start or continue a character",
                          Location(shown, line, column)) from None
    return Source(path, text.removeprefix("\ufeff"))


def parse_module(
    text: str | Source,
    filename: str = "<input>",
    *,
    line_offset: int = 0,
    source: Source | None = None,
    verify: bool = True,
) -> Module:
    """Parse a module and, when `verify`, run the verifier (which infers omitted result types).

    `text` is a `Source` (diagnostics use its name) or a string named
    `filename`. A string may be a chunk cut from a larger file at the start of
    its line `line_offset + 1` (`--split-input-file`): its lines are numbered
    from there, and when `source` is that whole file, diagnostics show the
    file's own lines from it.
    """
    if isinstance(text, Source):
        whole, start, end = text, 0, len(text.text)
    elif source is not None:
        start = _line_start(source.text, line_offset)
        end = start + len(text)
        if not source.text.startswith(text, start):
            raise ValueError(f"the chunk is not the text of {source.name} from line {line_offset + 1}")
        whole = source
    else:
        whole = Source(filename, "\n" * line_offset + text)
        start, end = line_offset, line_offset + len(text)
    with _gc_paused():
        module = _parse(whole, start, end)
        if verify:
            verify_module(module)
    return module


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing makes only live objects, many in cycles (a value and its op): the cyclic
    collector would rescan them again and again, making a 100k-op parse ~1.5x slower per op."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _line_start(text: str, line_offset: int) -> int:
    """The offset of line `line_offset + 1` of `text`."""
    start = 0
    for _ in range(line_offset):
        start = text.index("\n", start) + 1
    return start


_LOCK = threading.Lock()
_parser: Lark | None = None
_builder: _ModuleBuilder | None = None


def _parse(source: Source, start: int, end: int) -> Module:
    global _parser, _builder
    with _LOCK:
        if _parser is None:
            _builder = _ModuleBuilder()
            grammar = (Path(__file__).parent / "grammar.lark").read_text()
            # Not cache=True: it would unpickle a file at a predictable path in /tmp to save ~0.1 s.
            _parser = Lark(grammar, parser="lalr", lexer=ContextualLexer, transformer=_builder, maybe_placeholders=True)
        source_input = LexInput(source, start, end)
        module = _builder.begin(source)
        try:
            _parser.parse(source_input)
        except UnexpectedToken as exc:
            raise syntax_error(_parser.parser.lexer, exc.token, exc.expected, source_input) from None
        except MeshirError as exc:
            if exc.loc is None and source_input.last is not None:  # a check without a position: the token at hand
                exc.loc = Location(source, source_input.last.line, source_input.last.column)
            raise
        except LarkError as exc:  # lark reports nothing else for this grammar; never show a traceback
            raise MeshirError(f"cannot parse {source.name}: {exc}") from None
        finally:
            _builder.end()
        return module


def _located(build: Callable[[Sequence[Any]], Any], items: Sequence[Any], locs: Sequence[Location], whole: Location) -> Any:
    """`build(items)`; a MeshirError from it goes to the first item whose prefix fails."""
    try:
        return build(items)
    except MeshirError as exc:
        for count, loc in enumerate(locs, start=1):
            try:
                build(items[:count])
            except MeshirError:
                raise MeshirError(exc.message, loc) from None
        raise MeshirError(exc.message, whole) from None


def _scalar(text: str) -> Any:
    """One attribute value of an OP_LINE: a number, a symbol or what `_atom` reads."""
    first = text[0]
    if first == "@":
        return SymbolRef(text[1:])
    if first in "+-.0123456789":
        return _int(text) if _DIGITS.match(text) else float(text)
    return _atom(text)


def _int(text: str) -> int:
    """An integer literal; Python refuses to convert very long ones, so say so here."""
    limit = sys.get_int_max_str_digits()
    if limit and len(text) > limit:
        raise MeshirError(f"integer literal of {len(text)} digits is too long (at most {limit})")
    return int(text)


def _atom(text: str) -> Any:
    """A bare word or `name=size` in attribute position."""
    if "=" in text:
        name, size = text.split("=")
        return Dim(name.strip(), _int(size.strip()))
    if text == "true":
        return True
    if text == "false":
        return False
    if text in ("inf", "nan"):
        return float(text)
    dtype = DTYPES.get(text)
    return dtype if dtype is not None else Name(text)


class _ModuleBuilder(Transformer):
    """lark callbacks: one per rule, given the rule's children (None for an
    absent optional part) when lark reduces it, and one per coarse terminal
    (OP_LINE, TYPE), given the token when lark shifts it. Together they build
    the IR in source order. Methods take the children list rather than using
    `v_args(inline=True)`, which costs two calls more per reduction."""

    def begin(self, source: Source) -> Module:
        self._source = source
        self._module = Module()
        self._function: Function | None = None
        self._values: dict[str, Value] = {}
        self._arg_locs: dict[str, Location] = {}
        self._types: dict[str, TensorType] = {}
        return self._module

    def end(self) -> None:
        self._source = self._module = self._function = None
        self._values, self._arg_locs, self._types = {}, {}, {}

    def _loc(self, token: Token, offset: int = 0) -> Location:
        return Location(self._source, token.line, token.column + offset)

    def _define_symbol(self, token: Token) -> tuple[str, Location]:
        name, loc = token[1:], self._loc(token)
        first = self._module.locs.get(name)
        if first is not None:
            raise MeshirError(f"redefinition of @{name} (first defined at {first})", loc)
        self._module.locs[name] = loc
        return name, loc

    # Module items

    def start(self, items: list[None]) -> None:
        return None

    def mesh_axis(self, children: list) -> tuple[Token, Token]:
        return children[0], children[1]

    def mesh_decl(self, children: list) -> None:
        symbol, *axes = children
        name, loc = self._define_symbol(symbol)
        pairs = [a for a in axes if a is not None]
        dims = [Dim(n.value, _int(s)) for n, s in pairs]
        self._module.meshes[name] = _located(lambda d: Mesh(name, tuple(d)), dims, [self._loc(n) for n, _ in pairs], loc)

    def layout_decl(self, children: list) -> None:
        symbol, rules = children
        name, _ = self._define_symbol(symbol)
        self._module.layouts[name] = rules

    def var_decl(self, children: list) -> None:
        symbol, ttype, init, args, attrs = children
        name, loc = self._define_symbol(symbol)
        self._module.variables[name] = Variable(name, ttype, init.value, args or {}, attrs or {}, loc)

    def init_args(self, children: list) -> dict[str, Any]:
        return self._keyed([a for a in children if a is not None], "initializer argument")

    def init_arg(self, children: list) -> tuple[Token, Any]:
        return children[0], children[1]

    # Functions

    def func_head(self, children: list) -> None:
        symbol, args, results, attrs = children
        name, loc = self._define_symbol(symbol)
        self._values, self._arg_locs = {}, {}
        values = []
        for token, ttype in args:
            value = Value(ttype, token[1:])
            if value.name in self._values:
                raise MeshirError(f"redefinition of %{value.name} (first defined at {self._arg_locs[value.name]})", self._loc(token))
            self._values[value.name] = value
            self._arg_locs[value.name] = self._loc(token)
            values.append(value)
        self._function = Function(name, values, results, attributes=attrs or {}, loc=loc)
        self._module.functions[name] = self._function

    def func_args(self, children: list) -> list[tuple[Token, TensorType]]:
        return [a for a in children if a is not None]

    def func_arg(self, children: list) -> tuple[Token, TensorType]:
        return children[0], children[1]

    def single_result(self, children: list) -> list[TensorType]:
        return children

    def result_tuple(self, children: list) -> list[TensorType]:
        return [t for t in children if t is not None]

    def func_attrs(self, children: list) -> dict[str, Any]:
        return children[0]

    def return_stmt(self, children: list) -> None:
        keyword, *tokens = children
        function = self._function
        function.returns = [self._use(t) for t in tokens if t is not None]
        function.return_loc = self._loc(keyword)

    def op_list(self, children: list) -> None:
        return None

    def func_decl(self, children: list) -> None:
        self._function = None

    # Ops

    def op_line(self, children: list) -> None:
        return None

    def OP_LINE(self, token: Token) -> None:  # noqa: N802 (lark calls terminal callbacks by the terminal's name)
        """A whole op on one line, taken apart by regex. As a terminal callback it runs
        when lark shifts the token, so its errors come before any in later tokens."""
        parts = _OP_PARTS.match(token)
        name = parts["name"]
        values = self._values
        operands = parts["operands"]
        attributes = {}
        if parts["attrs"] is not None:
            attributes = self._coarse_attributes(token, parts.start("attrs"), parts["attrs"])
        try:
            operand_values = [values[n] for n in _VALUE_NAME.findall(operands)]
        except KeyError:
            raise self._undefined_in(token, parts.start("operands")) from None
        if operands[0] == "@":
            symbol = _SYMBOL_NAME.match(operands)
            self._attach_symbol(name, self._loc(token, parts.start("name")), symbol.group(1),
                                self._loc(token, parts.start("operands")), attributes, first=True)
        results = parts["results"]
        names = _VALUE_NAME.findall(results) if results is not None else []
        types: list[TensorType | None] = [None] * len(names)
        if parts["types"] is not None:
            types = [self._type_text(m.group(), token, parts.start("types") + m.start()) for m in _TYPE_TEXT.finditer(parts["types"])]
            if len(types) != len(names):
                raise MeshirError(_count_mismatch(name, len(names), len(types)), self._loc(token, parts.start("colon")))
        self._add_op(name, operand_values, attributes, types, names, self._loc(token, parts.start("name")),
                     lambda n: self._loc(token, parts.start("results") + _name_position(results, n)))

    def op(self, children: list) -> None:
        *results, name, operand_tokens, attrs, types = children
        attributes = attrs if attrs is not None else {}
        name_loc = self._loc(name)
        operand_values = []
        for index, token in enumerate(operand_tokens):
            if token.type == "SYMBOL":
                self._attach_symbol(name.value, name_loc, token[1:], self._loc(token), attributes, first=index == 0)
            else:
                operand_values.append(self._use(token))
        result_tokens = [t for t in results if t is not None]
        names = [t[1:] for t in result_tokens]
        result_types: list[TensorType | None] = [None] * len(names)
        if types is not None:
            colon, *result_types = types
            if len(result_types) != len(names):
                raise MeshirError(_count_mismatch(name.value, len(names), len(result_types)), self._loc(colon))
        self._add_op(name.value, operand_values, attributes, result_types, names, name_loc,
                     lambda n: self._loc(next(t for t in result_tokens if t[1:] == n)))

    def _add_op(self, name: str, operands: list[Value], attributes: dict[str, Any], types: list[TensorType | None],
                names: list[str], loc: Location, locate_result: Callable[[str], Location]) -> None:
        values = self._values
        op = Operation(name, operands, attributes, types, loc, names)
        for value in op.results:
            if value.name in values:
                raise MeshirError(f"redefinition of %{value.name} (first defined at {self._definition(values[value.name])})",
                                  locate_result(value.name))
            values[value.name] = value
        self._function.ops.append(op)

    def _attach_symbol(self, op_name: str, op_loc: Location, symbol: str, loc: Location,
                       attributes: dict[str, Any], first: bool) -> None:
        """`read @w`: the symbol operand becomes the attribute the op's OpDef names."""
        opdef = find(op_name)
        if opdef is None:
            raise MeshirError(f"unknown op '{op_name}'", op_loc)
        if opdef.symbol_operand is None:
            raise MeshirError(f"{op_name} takes no symbol operand; symbols go in attributes, as in {{to = @{symbol}}}", loc)
        if not first:
            raise MeshirError(f"the symbol operand of {op_name} comes first: {op_name} @{symbol}, ...", loc)
        if opdef.symbol_operand in attributes:
            raise MeshirError(f"{op_name} gets '{opdef.symbol_operand}' twice: as its symbol operand and as an attribute", loc)
        attributes[opdef.symbol_operand] = SymbolRef(symbol)

    def operands(self, children: list) -> list[Token]:
        return [t for t in children if t is not None]

    def op_types(self, children: list) -> list:
        return children

    def _use(self, token: Token) -> Value:
        value = self._values.get(token[1:])
        if value is None:
            raise MeshirError(f"use of undefined value {token}", self._loc(token))
        return value

    def _undefined_in(self, token: Token, offset: int) -> MeshirError:
        for match in _VALUE_NAME.finditer(token, offset):
            if match.group(1) not in self._values:
                return MeshirError(f"use of undefined value %{match.group(1)}", self._loc(token, match.start()))
        raise AssertionError("every operand is defined")

    def _definition(self, value: Value) -> Location:
        """Where `value` was defined, for 'redefinition' messages."""
        if value.owner is None:
            return self._arg_locs[value.name]
        # Result names sit left of the op name, usually on its line.
        op_loc = value.owner.loc
        column = _name_position(self._source.line(op_loc.line)[: op_loc.column - 1], value.name)
        return op_loc if column < 0 else Location(self._source, op_loc.line, column + 1)

    def _coarse_attributes(self, token: Token, offset: int, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        starts: dict[str, int] = {}
        for match in _COARSE_ATTR.finditer(text):
            key, value = match.group(1), match.group(2)
            if key in out:
                first = self._loc(token, offset + starts[key])
                raise MeshirError(f"duplicate attribute '{key}' (first given at {first})", self._loc(token, offset + match.start()))
            starts[key] = match.start()
            if value[0] == "[":
                inner = value[1:-1].strip()
                out[key] = tuple(_scalar(part.strip()) for part in inner.split(",")) if inner else ()
            else:
                out[key] = _scalar(value.strip())
        return out

    # Types

    def coarse_type(self, children: list) -> TensorType:
        return children[0]

    def TYPE(self, token: Token) -> TensorType:  # noqa: N802 (a terminal callback, run when lark shifts the token)
        return self._type_text(token.value, token, 0)

    def _type_text(self, text: str, token: Token, offset: int) -> TensorType:
        """The type spelled `text` (TYPE syntax), at `offset` in `token`; cached per parse."""
        ttype = self._types.get(text)
        if ttype is None:
            bracket = text.index("[")
            dtype = self._dtype(text[:bracket], self._loc(token, offset))
            matches = list(_SIZED_NAME.finditer(text, bracket))
            dims = [Dim(m.group(1), _int(m.group(2))) for m in matches]
            locs = [self._loc(token, offset + m.start()) for m in matches]
            ttype = _located(lambda d: TensorType(dtype, tuple(d)), dims, locs, self._loc(token, offset))
            self._types[text] = ttype
        return ttype

    def fine_type(self, children: list) -> TensorType:
        dtype_token, *dims = children
        dtype = self._dtype(dtype_token.value, self._loc(dtype_token))
        pairs = [d for d in dims if d is not None]
        sized = [Dim(n.value, _int(s)) for n, s in pairs]
        return _located(lambda d: TensorType(dtype, tuple(d)), sized, [self._loc(n) for n, _ in pairs], self._loc(dtype_token))

    def _dtype(self, text: str, loc: Location) -> DType:
        dtype = DTYPES.get(text)
        if dtype is None:
            raise MeshirError(f"unknown dtype '{text}' (dtypes: {_KNOWN_DTYPES})", loc)
        return dtype

    def sized_name(self, children: list) -> tuple[Token, Token]:
        return children[0], children[1]

    # Attributes

    def attr_dict(self, children: list) -> dict[str, Any]:
        if len(children) == 1:  # the common case, and `{}` (children == [None])
            pair = children[0]
            return {} if pair is None else {pair[0].value: pair[1]}
        return self._keyed(children, "attribute")

    def _keyed(self, pairs: list[tuple[Token, Any]], what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key.value in out:
                first = next(k for k, _ in pairs if k.value == key.value)
                raise MeshirError(f"duplicate {what} '{key}' (first given at {self._loc(first)})", self._loc(key))
            out[key.value] = value
        return out

    def attr(self, children: list) -> tuple[Token, Any]:
        return children[0], children[1]

    def int_value(self, children: list) -> int:
        return _int(children[0])

    def float_value(self, children: list) -> float:
        return float(children[0])

    def string_value(self, children: list) -> str:
        token = children[0]
        try:
            return json.loads(token, strict=False)
        except json.JSONDecodeError as exc:
            raise MeshirError(f"bad string: {exc.msg}", self._loc(token, exc.pos)) from None

    def name_value(self, children: list) -> Any:
        return _atom(children[0].value)

    def dim_value(self, children: list) -> Dim:
        return Dim(children[0].value, _int(children[1]))

    def symbol_value(self, children: list) -> SymbolRef:
        return SymbolRef(children[0][1:])

    def list_value(self, children: list) -> tuple[Any, ...]:
        return () if children == [None] else tuple(children)

    def layout_map(self, children: list) -> LayoutRules:
        pairs = [r for r in children if r is not None]
        entries = [(dim.value, axes) for dim, axes in pairs]
        locs = [self._loc(dim) for dim, _ in pairs]
        return _located(lambda e: LayoutRules(tuple(e)), entries, locs, locs[0] if locs else None)

    def layout_rule(self, children: list) -> tuple[Token, tuple[str, ...]]:
        return children[0], children[1]

    def one_axis(self, children: list) -> tuple[str, ...]:
        return (children[0].value,)

    def axis_tuple(self, children: list) -> tuple[str, ...]:
        return tuple(a.value for a in children if a is not None)


def _name_position(text: str, name: str) -> int:
    """Where `%name` (whole) is in `text`, or -1."""
    match = re.search(rf"%{re.escape(name)}(?![A-Za-z0-9_.])", text)
    return match.start() if match else -1


def _count_mismatch(op_name: str, names: int, types: int) -> str:
    if not names:
        return f"{op_name} has no result names, so it cannot have result types; write `%r = {op_name}(...) : T`"
    plural = lambda n, word: f"{n} {word}{'s' if n != 1 else ''}"  # noqa: E731
    return f"{plural(names, 'result name')} but {plural(types, 'result type')}"
