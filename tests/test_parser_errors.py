"""Parser diagnostics: message, file:line:col, and the rendered source line with a caret.

Where an op can be read by the one-line fast path (OP_LINE) and by the general
grammar, both spellings are checked to report the same error at the same place.
"""
import pytest
from hypothesis import given, settings, strategies as st

from meshir.diagnostics import MeshirError, Source
from meshir.frontends.text import parse_module, read_source

HEAD = "func @f(%x: f32[a=2], %y: f32[a=2]) -> f32[a=2] {\n"


def parse_error(text: str, **options) -> MeshirError:
    with pytest.raises(MeshirError) as info:
        parse_module(text, "t.mir", **options)
    return info.value


def check(error: MeshirError, line: int, column: int, message: str, *, exact: bool = False) -> None:
    """The error is at line:column, says `message`, and renders with that source line and a caret."""
    assert (error.loc.line, error.loc.column) == (line, column), error.render()
    assert "\n" not in error.message
    assert error.message == message if exact else message in error.message, error.message
    header, source_line, caret = error.render().split("\n")[:3]
    assert header == f"{error.loc.source.name}:{line}:{column}: error: {error.message}"
    assert source_line == error.loc.source.text.split("\n")[line - 1]
    assert caret == " " * (column - 1) + "^"


def column_of(text: str, line: int, fragment: str) -> int:
    """1-based column of `fragment` on `line` of `text`: the expectation, read off the input."""
    return text.split("\n")[line - 1].index(fragment) + 1


def test_syntax_error_names_what_was_expected_in_words():
    text = HEAD + "  %h = add(%x, %y }\n  return %h\n}\n"
    check(parse_error(text), 2, 19, "expected ',' or ')' after an operand, found '}'", exact=True)


@pytest.mark.parametrize("text,line,column,message", [
    ("foo @m\n", 1, 1, "expected 'mesh', 'layout', 'var' or 'func', found 'foo'"),
    (HEAD + "  %h = relu(%x) ?\n", 2, 17, "found '?'"),
    (HEAD + "  %h = relu(%x)\n", 2, 16, "expected an op or 'return' after an op, found the end of the input"),
    ("func @f() -> () {", 1, 18, "found the end of the input"),
    ("mesh @m = <rows=2 cols=2>\n", 1, 19, "expected ',' or '>' after '2', found 'cols'"),
    ("var @v : f32[] = \n", 1, 17, "expected a name"),
    ("func @f(%x f32[]) -> () {\n  return\n}\n", 1, 12, "expected ':' after '%x', found 'f32[]'"),
    (HEAD + "  %h = einsum(%x) {output = }\n", 2, 29, "expected an attribute value after '=', found '}'"),
    ("func @f(%x: ) -> () {\n", 1, 13, "expected a type like f32[batch=8]"),
    (HEAD + '  %h = relu(%x) {s = "a\\qb"}\n', 2, 24, "bad string: Invalid \\escape"),
])
def test_syntax_errors(text, line, column, message):
    check(parse_error(text), line, column, message)


@pytest.mark.parametrize("body,line,fragment", [
    ("  %h = add(%x, %z) : f32[a=2]\n", 2, "%z"),            # one line: the fast path
    ("  %h = add(%x,\n      %z)\n", 3, "%z"),                # over two lines
    ("  %h = read @w, %z\n", 2, "%z"),
    ("", 2, "%nope"),
])
def test_use_of_undefined_value(body, line, fragment):
    text = "var @w : f32[a=2] = zeros\n" + HEAD + body + "  return %nope\n}\n"
    line += 1
    check(parse_error(text), line, column_of(text, line, fragment), f"use of undefined value {fragment}", exact=True)


def test_use_before_definition_is_undefined():
    text = HEAD + "  %h = neg(%later)\n  %later = neg(%x)\n  return %h\n}\n"
    check(parse_error(text), 2, 12, "use of undefined value %later", exact=True)


@pytest.mark.parametrize("second,line,fragment", [
    ("  %h = neg(%y) : f32[a=2]\n", 3, "%h"),
    ("  %k, %h = split(%x) {dim = a,\n    sizes = [1, 1]}\n", 3, "%h"),
])
def test_redefinition_of_a_value_says_where_it_was_first_defined(second, line, fragment):
    text = HEAD + "  %h = neg(%x)\n" + second + "  return %x\n}\n"
    check(parse_error(text), line, column_of(text, line, fragment), "redefinition of %h (first defined at t.mir:2:3)", exact=True)


def test_redefinition_of_an_argument():
    text = HEAD + "  %x = neg(%y)\n  return %x\n}\n"
    check(parse_error(text), 2, 3, "redefinition of %x (first defined at t.mir:1:9)", exact=True)
    text = "func @f(%x: f32[], %x: f32[]) -> () {\n  return\n}\n"
    check(parse_error(text), 1, 20, "redefinition of %x (first defined at t.mir:1:9)", exact=True)


@pytest.mark.parametrize("text,line,column,first", [
    ("mesh @m = <r=2>\nvar @m : f32[] = zeros\n", 2, 5, "t.mir:1:6"),
    ("func @f() -> () {\n  return\n}\nfunc @f() -> () {\n  return\n}\n", 4, 6, "t.mir:1:6"),
    ("layout @l = {}\nlayout @l = {}\n", 2, 8, "t.mir:1:8"),
])
def test_redefinition_of_a_symbol(text, line, column, first):
    check(parse_error(text), line, column, f"first defined at {first})")


@pytest.mark.parametrize("op", [
    "  %h = gelu(%x) {approximate = true, approximate = false}\n",
    "  %h = gelu(%x) {approximate = true,\n                 approximate = false}\n",
])
def test_duplicate_attribute(op):
    text = HEAD + op + "  return %h\n}\n"
    line = 2 + op.count("\n") - 1
    error = parse_error(text)
    check(error, line, column_of(text, line, "approximate = false"), "duplicate attribute 'approximate' (first given at t.mir:2:18)",
          exact=True)


def test_duplicate_attribute_whose_name_is_also_an_earlier_value():
    text = HEAD + "  %h = neg(%x) {a = b, b = 1, b = 2}\n  return %h\n}\n"
    first = column_of(text, 2, "b = 1")
    check(parse_error(text), 2, column_of(text, 2, "b = 2"), f"duplicate attribute 'b' (first given at t.mir:2:{first})", exact=True)


def test_duplicate_initializer_argument():
    text = "var @v : f32[] = normal(seed=1, seed=2)\n"
    check(parse_error(text), 1, 33, "duplicate initializer argument 'seed'")


@pytest.mark.parametrize("op", ["  %h = frob(%x) : f32[a=2]\n", "  %h = frob(%x,\n %y)\n"])
def test_unknown_op_is_reported_at_its_name(op):
    check(parse_error(HEAD + op + "  return %h\n}\n"), 2, 8, "unknown op 'frob'")


@pytest.mark.parametrize("op,line,column,message", [
    ("  relu(%x) : f32[a=2]\n", 2, 12, "relu has no result names, so it cannot have result types"),
    ("  %a, %b = relu(%x) : f32[a=2]\n", 2, 21, "2 result names but 1 result type"),
    ("  %a = relu(%x) : f32[a=2], f32[a=2]\n", 2, 17, "1 result name but 2 result types"),
    ("  %a = relu(%x) :\n  f32[a=2], f32[a=2]\n", 2, 17, "1 result name but 2 result types"),
    ("  %a, %b = relu(\n  %x) : f32[a=2]\n", 3, 7, "2 result names but 1 result type"),
])
def test_result_type_count_must_match_result_names(op, line, column, message):
    check(parse_error(HEAD + op + "  return %x\n}\n"), line, column, message)


@pytest.mark.parametrize("text,line,fragment", [
    ("func @f(%x: f33[a=2]) -> () {\n  return\n}\n", 1, "f33"),
    ("func @f(%x: f33 [a=2]) -> () {\n  return\n}\n", 1, "f33"),
    (HEAD + "  %h = neg(%x) : f33[a=2]\n", 2, "f33"),          # reported before the missing `return`
    (HEAD + "  %h = neg(%x) : f33[a=2]\n  return %h\n}\n", 2, "f33"),
    ("var @v : float[] = zeros\n", 1, "float"),
])
def test_unknown_dtype(text, line, fragment):
    check(parse_error(text), line, column_of(text, line, fragment), f"unknown dtype '{fragment}' (dtypes: f32, bf16, ")


@pytest.mark.parametrize("type_text", ["f32[a=2, b=3, a=4]", "f32[a=2, b=3,\n a=4]"])
def test_dimension_twice_in_a_type(type_text):
    text = f"func @f(%x: {type_text}) -> () {{\n  return\n}}\n"
    line = 1 + type_text.count("\n")
    check(parse_error(text), line, column_of(text, line, "a=4"), "dimension 'a' appears twice in shape")


def test_bad_dimensions_in_a_type():
    check(parse_error("var @v : f32[a=2, b=-1] = zeros\n"), 1, 19, "dimension 'b' has negative size -1")
    check(parse_error("var @v : f32[i32=2] = zeros\n"), 1, 14, "'i32' is a dtype and cannot name a dimension")


@pytest.mark.parametrize("text,fragment,message", [
    ("mesh @m = <rows=2, rows=3>\n", "rows=3", "mesh @m names axis 'rows' twice"),
    ("mesh @m = <rows=2, cols=0>\n", "cols=0", "mesh @m axis 'cols' has size 0"),
    ("layout @l = {batch: rows, batch: cols}\n", "batch: cols", "layout gives dimension 'batch' two rules"),
    ("layout @l = {batch: (rows, rows)}\n", "batch", "layout rule for 'batch' uses mesh axis 'rows' twice"),
    ("func @f() -> () attributes {layout = {a: x, a: y}} {\n  return\n}\n", "a: y", "layout gives dimension 'a' two rules"),
])
def test_bad_mesh_and_layout_declarations(text, fragment, message):
    check(parse_error(text), 1, column_of(text, 1, fragment), message)


SYMBOL_MODULE = "var @w : f32[a=2] = zeros\n" + HEAD


@pytest.mark.parametrize("op,fragment,message", [
    ("  %h = relu @w\n", "@w", "relu takes no symbol operand"),
    ("  %h = relu(@w)\n", "@w", "relu takes no symbol operand"),
    ("  assign(%x, @w)\n", "@w", "the symbol operand of assign comes first"),
    ("  %h = frob @w\n", "frob", "unknown op 'frob'"),
    ("  %h = read @w {var = @w}\n", "@w", "read gets 'var' twice"),
])
def test_symbol_operands(op, fragment, message):
    text = SYMBOL_MODULE + op + "  return %x\n}\n"
    check(parse_error(text), 3, column_of(text, 3, fragment), message)


def test_symbol_operand_becomes_the_attribute_its_op_names():
    text = SYMBOL_MODULE + "  %r = read(@w)\n  assign @w, %r\n  return %r\n}\n"
    ops = parse_module(text).functions["f"].ops
    assert [op.attributes["var"].name for op in ops] == ["w", "w"]


def test_verifier_errors_point_at_the_op():
    text = "func @f(%x: f32[a=2], %y: f32[a=3]) -> f32[a=2] {\n  %h = add(%x, %y)\n  return %h\n}\n"
    check(parse_error(text), 2, 8, "add: dimension 'a' has size 2 in operand 0 but size 3 in operand 1")


def test_empty_input_is_an_empty_module():
    module = parse_module("", "empty.mir")
    assert not (module.meshes or module.layouts or module.variables or module.functions)


# --- chunks of a larger file (--split-input-file) ---------------------------

FILE = "mesh @m = <r=2>\n// -----\nfunc @f() -> () {\n  %h = neg(%q)\n  return\n}\n"


def test_chunk_with_line_offset_numbers_lines_from_there():
    chunk = FILE.split("// -----\n")[1]
    check(parse_error(chunk, line_offset=2), 4, 12, "use of undefined value %q")


def test_chunk_of_a_source_shows_the_files_own_lines():
    source = Source("whole.mir", FILE)
    chunk = FILE.split("// -----\n")[1]
    with pytest.raises(MeshirError) as info:
        parse_module(chunk, "ignored", line_offset=2, source=source)
    error = info.value
    assert str(error.loc) == "whole.mir:4:12" and error.loc.source is source
    assert error.render().split("\n")[1:] == ["  %h = neg(%q)", "           ^"]


def test_chunk_must_come_from_the_source():
    with pytest.raises(ValueError, match="not the text of whole.mir from line 3"):
        parse_module("mesh", line_offset=2, source=Source("whole.mir", FILE))


# --- files -----------------------------------------------------------------

def test_read_source_reads_utf8_and_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "m.mir"
    path.write_bytes("\ufeffmesh @m = <r=2> // caf\u00e9\n".encode())
    source = read_source(str(path))
    assert source.name == str(path) and source.text == "mesh @m = <r=2> // caf\u00e9\n"
    assert "m" in parse_module(source).meshes


def test_read_source_reports_the_first_bad_byte(tmp_path):
    path = tmp_path / "bad.mir"
    path.write_bytes(b"mesh @m = <r=2>\n// caf\xe9 ok\n")
    with pytest.raises(MeshirError) as info:
        read_source(str(path))
    check(info.value, 2, 7, "not UTF-8 text: byte 0xe9")


def test_read_source_reports_unreadable_files(tmp_path):
    with pytest.raises(MeshirError, match="cannot read .*absent.mir"):
        read_source(str(tmp_path / "absent.mir"))
    with pytest.raises(MeshirError, match="cannot read"):
        read_source(str(tmp_path))


# --- nothing but MeshirError escapes -----------------------------------------

VALID = (
    "mesh @m = <rows=2>\nlayout @l = {a: rows}\nvar @w : f32[a=2] = normal(seed=1, stddev=0.5) {trainable = false}\n"
    "func @f(%x: f32[a=2]) -> (f32[a=2], f32[]) attributes {mesh = @m, layout = @l} {\n"
    "  %r = read @w : f32[a=2]\n  %h = einsum(%x, %r) {output = [a]} : f32[a=2]\n"
    '  %s = reduce_sum(%h) {dims = [a]}\n  %c = pad(%h) {dim = a, low = 0, high = 0, value = -1.5e3}\n'
    "  assign @w, %c\n  return %c, %s\n}\n"
)


def test_every_prefix_parses_or_gives_a_diagnostic():
    parse_module(VALID)
    for end in range(len(VALID)):
        try:
            parse_module(VALID[:end], "prefix.mir")
        except MeshirError as exc:
            assert exc.loc is None or exc.loc.line >= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.text(alphabet='%@{}[]()<>=:,"-.0123456789 \n/aefirx_', max_size=6))
def test_spliced_garbage_gives_only_diagnostics(position, garbage):
    try:
        parse_module(VALID[:position] + garbage + VALID[position:], "spliced.mir")
    except MeshirError as exc:
        assert "\n" not in exc.message


@pytest.mark.parametrize("text", [
    "var @v : f32[] = normal(seed=" + "9" * 5000 + ")\n",
    HEAD + "  %h = neg(%x) {k = " + "9" * 5000 + "}\n  return %h\n}\n",
    "var @v : f32[a=" + "9" * 5000 + "] = zeros\n",
])
def test_integer_literals_too_long_for_python(text):
    error = parse_error(text)
    assert "digits is too long" in error.message and error.loc is not None
