"""The canonical printer, on modules built with the IR API; expected texts written by hand."""
import math

import pytest

from meshir.attributes import Name, SymbolRef
from meshir.dtypes import DTYPES, bf16, f32, i32
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.mesh import LayoutRules, Mesh
from meshir.printer import format_attribute, print_function, print_module, print_op, value_names
from meshir.types import Dim, tensor_type


def _op(name, operands, types, names=None, **attributes):
    return Operation(name, operands, attributes, types, result_names=names)


@pytest.mark.parametrize("value,text", [
    (3, "3"),
    (-12, "-12"),
    (0.05, "0.05"),
    (1e-05, "1e-05"),
    (1.0, "1.0"),
    (-0.0, "-0.0"),
    (1e16, "1e+16"),
    (math.inf, "inf"),
    (-math.inf, "-inf"),
    (math.nan, "nan"),
    (True, "true"),
    (False, "false"),
    ("hello", '"hello"'),
    ('say "hi"\n\tnow\\', r'"say \"hi\"\n\tnow\\"'),
    ("caf\u00e9", '"caf\u00e9"'),
    (bf16, "bf16"),
    (DTYPES["bool"], "bool"),
    (Name("batch"), "batch"),
    (Dim("classes", 10), "classes=10"),
    ((Name("batch"), Name("hidden")), "[batch, hidden]"),
    ((), "[]"),
    (((1, 2), (3,)), "[[1, 2], [3]]"),
    ([1, 2], "[1, 2]"),
    ((Dim("a", 2), Dim("b", 3)), "[a=2, b=3]"),
    (LayoutRules.of({"batch": "rows", "seq": ("rows", "cols")}), "{batch: rows, seq: (rows, cols)}"),
    (LayoutRules(()), "{}"),
    (SymbolRef("m"), "@m"),
])
def test_format_attribute(value, text):
    assert format_attribute(value) == text


def test_format_attribute_rejects_what_the_format_cannot_spell():
    with pytest.raises(TypeError, match="cannot print attribute value"):
        format_attribute(object())


def test_module_sections_and_blank_lines():
    x = Value(tensor_type(f32, batch=64, pixels=784), "x")
    w = Value(tensor_type(f32, pixels=784, hidden=512), "w")
    einsum = _op("einsum", [x, w], [tensor_type(f32, batch=64, hidden=512)], ["h"],
                 output=(Name("batch"), Name("hidden")))
    loss = Function("loss", [x, w], [tensor_type(f32, batch=64, hidden=512)], [einsum], [einsum.result],
                    attributes={"mesh": SymbolRef("m"), "layout": SymbolRef("dp")})
    a = Value(tensor_type(f32), "a")
    two = Function("two", [a], [tensor_type(f32), tensor_type(f32)], [], [a, a])
    module = Module(
        meshes={"m": Mesh("m", (Dim("rows", 2), Dim("cols", 2)))},
        layouts={"dp": LayoutRules.of({"batch": "rows", "seq": ("rows", "cols")})},
        variables={
            "w1": Variable("w1", tensor_type(f32, pixels=784, hidden=512), "normal", {"stddev": 0.05, "seed": 1}),
            "step": Variable("step", tensor_type(i32), "zeros", attributes={"trainable": False}),
        },
        functions={"loss": loss, "two": two},
    )
    assert print_module(module) == (
        "mesh @m = <rows=2, cols=2>\n"
        "layout @dp = {batch: rows, seq: (rows, cols)}\n"
        "\n"
        "var @w1 : f32[pixels=784, hidden=512] = normal(seed=1, stddev=0.05)\n"
        "var @step : i32[] = zeros {trainable = false}\n"
        "\n"
        "func @loss(%x: f32[batch=64, pixels=784], %w: f32[pixels=784, hidden=512]) -> f32[batch=64, hidden=512]\n"
        "    attributes {layout = @dp, mesh = @m} {\n"
        "  %h = einsum(%x, %w) {output = [batch, hidden]} : f32[batch=64, hidden=512]\n"
        "  return %h\n"
        "}\n"
        "\n"
        "func @two(%a: f32[]) -> (f32[], f32[]) {\n"
        "  return %a, %a\n"
        "}\n"
    )


def test_empty_sections_print_nothing():
    assert print_module(Module()) == ""
    only_function = Module(functions={"f": Function("f", [], [], [], [])})
    assert print_module(only_function) == "func @f() -> () {\n  return\n}\n"
    only_vars = Module(variables={"v": Variable("v", tensor_type(f32, a=2), "zeros")})
    assert print_module(only_vars) == "var @v : f32[a=2] = zeros\n"


def test_ops_symbol_operands_and_results():
    x = Value(tensor_type(f32, a=4), "x")
    read = _op("read", [], [tensor_type(f32, a=4)], ["w"], var=SymbolRef("w1"))
    assign = _op("assign", [read.result], [], var=SymbolRef("w1"))
    split = _op("split", [x], [tensor_type(f32, a=2)] * 2, ["p", "q"], dim=Name("a"), sizes=(2, 2))
    zeros = _op("zeros", [], [tensor_type(f32, a=4)], ["z"], shape=(Dim("a", 4),))
    assert print_op(read) == "%w = read @w1 : f32[a=4]"
    assert print_op(assign) == "assign @w1, %w"
    assert print_op(split) == "%p, %q = split(%x) {dim = a, sizes = [2, 2]} : f32[a=2], f32[a=2]"
    assert print_op(zeros) == "%z = zeros() {shape = [a=4]} : f32[a=4]"


def test_symbol_operand_op_without_its_symbol_prints_the_plain_form():
    read = _op("read", [], [tensor_type(f32)], ["w"])
    assert print_op(read) == "%w = read() : f32[]"


def test_uninferred_result_types_are_left_out():
    x = Value(tensor_type(f32, a=4), "x")
    relu = Operation("relu", [x], {}, [None], result_names=["r"])
    assert print_op(relu) == "%r = relu(%x)"


def test_print_op_without_names_marks_unnamed_values():
    x = Value(tensor_type(f32), None)
    assert print_op(_op("neg", [x], [tensor_type(f32)], [None])) == "%? = neg(%?) : f32[]"


def test_fresh_names_for_unnamed_duplicate_and_unspellable_values():
    t = tensor_type(f32)
    args = [Value(t, None), Value(t, "1"), Value(t, "x")]
    first = _op("neg", [args[0]], [t], ["x"])          # duplicates the argument %x
    second = _op("neg", [first.result], [t], [None])
    third = _op("neg", [second.result], [t], ["has space"])
    fourth = _op("neg", [third.result], [t], ["0"])    # keeps %0: fresh names skip it
    function = Function("f", args, [t], [first, second, third, fourth], [fourth.result])
    assert print_function(function) == (
        "func @f(%2: f32[], %1: f32[], %x: f32[]) -> f32[] {\n"
        "  %3 = neg(%2) : f32[]\n"
        "  %4 = neg(%3) : f32[]\n"
        "  %5 = neg(%4) : f32[]\n"
        "  %0 = neg(%5) : f32[]\n"
        "  return %0\n"
        "}"
    )
    names = value_names(function)
    assert [names[v] for v in function.values()] == ["2", "1", "x", "3", "4", "5", "0"]


def test_attributes_print_sorted_and_bare_initializer():
    variable = Variable("v", tensor_type(bf16, a=2), "uniform", {"seed": 4, "maxval": 1.0, "minval": -1.0})
    module = Module(variables={"v": variable})
    assert print_module(module) == "var @v : bf16[a=2] = uniform(maxval=1.0, minval=-1.0, seed=4)\n"
    x = Value(tensor_type(f32, a=2), "x")
    op = _op("cast", [x], [tensor_type(bf16, a=2)], ["c"], zeta=1, alpha=Name("z"), dtype=bf16)
    assert print_op(op) == "%c = cast(%x) {alpha = z, dtype = bf16, zeta = 1} : bf16[a=2]"


def test_function_attributes_with_inline_layout():
    function = Function("f", [], [], [], [], attributes={"mesh": SymbolRef("m"), "layout": LayoutRules.of({"b": ("x", "y")})})
    assert print_function(function) == (
        "func @f() -> ()\n"
        "    attributes {layout = {b: (x, y)}, mesh = @m} {\n"
        "  return\n"
        "}"
    )
