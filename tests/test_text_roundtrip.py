"""Text round trips: parse -> print gives the canonical text written here by hand,
and print(parse(print(m))) == print(m), for handwritten and generated modules."""
import math
from pathlib import Path

from hypothesis import given, settings, strategies as st

from meshir.attributes import Name, SymbolRef
from meshir.dtypes import DTYPES, bf16, f32
from meshir.frontends.text import parse_module
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.mesh import LayoutRules, Mesh
from meshir.printer import print_module
from meshir.types import Dim, TensorType
from meshir.verifier import verify_module

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CANONICAL = """\
mesh @m = <rows=2, cols=2>
mesh @other = <x=4>
layout @dp_mp = {batch: rows, hidden: cols, seq: (rows, cols)}

var @w1 : f32[pixels=8, hidden=4] = normal(seed=1, stddev=0.05)
var @b1 : f32[hidden=4] = zeros
var @step : i32[] = zeros {trainable = false}

func @loss(%x: f32[batch=4, pixels=8], %y: i32[batch=4]) -> f32[batch=4, hidden=2]
    attributes {layout = @dp_mp, mesh = @m} {
  %w1 = read @w1 : f32[pixels=8, hidden=4]
  %h = einsum(%x, %w1) {output = [batch, hidden]} : f32[batch=4, hidden=4]
  %a, %b = split(%h) {dim = hidden, sizes = [2, 2]} : f32[batch=4, hidden=2], f32[batch=4, hidden=2]
  assign @w1, %w1
  %z = zeros() {shape = [batch=4, hidden=2]} : f32[batch=4, hidden=2]
  %p = reshard(%a) {layout = {batch: rows}} : f32[batch=4, hidden=2]
  %d = dropout(%p) {rate = 0.5, seed = 3} : f32[batch=4, hidden=2]
  %e = pad(%d) {dim = hidden, high = 1, low = 1, value = -inf} : f32[batch=4, hidden=4]
  %c = constant() {shape = [r=2, c=2], value = [[1.5, 2.0], [3.0, 1e-05]]} : f32[r=2, c=2]
  %oh = one_hot(%y) {dim = classes=10, dtype = f32} : f32[batch=4, classes=10]
  %g = gelu(%z) {approximate = true} : f32[batch=4, hidden=2]
  %s = add(%a, %g) : f32[batch=4, hidden=2]
  return %s
}

func @two(%a: f32[]) -> (f32[], f32[])
    attributes {layout = {batch: (rows, cols)}, mesh = @m} {
  return %a, %a
}

func @none() -> () {
  return
}
"""

# The same module as a person might write it: comments everywhere, odd spacing,
# ops over several lines, result types left out, read(@w)/assign(@w, %x), attributes unsorted.
MESSY = """\
// A header comment.
mesh @m=<rows=2,cols=2>   // trailing comment
mesh @other = < x = 4 >
layout @dp_mp = { batch : rows , hidden: cols, seq: ( rows, cols ) }
var @w1 : f32[pixels=8, hidden=4] = normal(stddev=0.05, seed=1)
var @b1:f32[ hidden = 4 ]=zeros
var @step : i32 [ ] = zeros { trainable = false }
func @loss(%x: f32[batch=4, pixels=8],
           %y: i32[batch=4]) -> f32[batch=4, hidden=2] attributes {mesh = @m, layout = @dp_mp}
{
  %w1 = read(@w1)
  %h = einsum(%x, %w1) {output = [batch, hidden]}
  %a , %b = split(%h) {sizes = [2, 2], dim = hidden}
  assign(@w1, %w1)
  %z = zeros() {shape = [batch=4, hidden=2]}
  %p = reshard(%a) {layout = {batch: rows}}
  %d = dropout(%p) {seed = 3, rate = 0.5}
  %e = pad(%d) {dim = hidden, low = 1, high = 1, value = -inf}
  %c = constant() {value = [[1.5, 2.0], [3.0, 1e-5]], shape = [r=2, c=2]}
  %oh = one_hot(%y) {dim = classes = 10, dtype = f32} // dims may have spaces
  %g = gelu(   // the operand on the next line
      %z
  ) {approximate =
     true}
  %s = add(%a, %g) : f32[batch=4,
                         hidden=2]
  return %s
}
func @two(%a: f32[]) -> (f32[], f32[]) attributes {layout = {batch: (rows, cols)}, mesh = @m} { return %a, %a }
func @none() -> () { return }
// A closing comment without a newline"""


def roundtrip(text: str) -> str:
    printed = print_module(parse_module(text, "roundtrip.mir"))
    assert print_module(parse_module(printed, "printed.mir")) == printed
    return printed


def exploded(text: str) -> str:
    """`text` with a comment and a newline after every comma: no op fits the one-line fast path."""
    return text.replace(", ", " ,\n  // split\n  ")


def test_canonical_text_prints_unchanged():
    assert roundtrip(CANONICAL) == CANONICAL


def test_messy_text_prints_canonically():
    assert roundtrip(MESSY) == CANONICAL


def test_ops_split_over_lines_parse_like_one_line_ops():
    assert roundtrip(exploded(CANONICAL)) == CANONICAL


def test_empty_and_comment_only_modules():
    assert roundtrip("") == ""
    assert roundtrip("// nothing here\n\n   \n") == ""


def test_keywords_are_names_where_the_grammar_wants_a_name():
    text = (
        "func @f(%x: f32[mesh=2, layout=4]) -> f32[layout=4] {\n"
        "  %func = reduce_sum(%x) {dims = [mesh]} : f32[layout=4]\n"
        "  %return = einsum(%func) {output = [layout]} : f32[layout=4]\n"
        "  return %return\n"
        "}\n"
    )
    assert roundtrip(text) == text
    assert roundtrip(exploded(text)) == text


def test_parsed_ir_structure():
    module = parse_module(CANONICAL, "c.mir")
    assert list(module.meshes) == ["m", "other"]
    assert module.layouts["dp_mp"] == LayoutRules((("batch", ("rows",)), ("hidden", ("cols",)), ("seq", ("rows", "cols"))))
    assert module.variables["w1"].init_args == {"seed": 1, "stddev": 0.05}
    assert module.variables["step"].trainable is False
    loss = module.functions["loss"]
    assert loss.attributes == {"layout": SymbolRef("dp_mp"), "mesh": SymbolRef("m")}
    read, _, split, assign = loss.ops[:4]
    assert read.attributes["var"] == SymbolRef("w1") and read.operands == []
    assert assign.attributes["var"] == SymbolRef("w1") and assign.operands == [read.results[0]] and assign.results == []
    assert [v.name for v in split.results] == ["a", "b"]
    assert split.attributes == {"dim": Name("hidden"), "sizes": (2, 2)}
    constant = next(op for op in loss.ops if op.name == "constant")
    assert constant.attributes["value"] == ((1.5, 2.0), (3.0, 1e-05))
    one_hot = next(op for op in loss.ops if op.name == "one_hot")
    assert one_hot.attributes == {"dim": Dim("classes", 10), "dtype": f32}
    assert (read.loc.line, read.loc.column) == (11, 9)
    assert (loss.loc.line, loss.loc.column) == (9, 6)
    assert (loss.return_loc.line, loss.return_loc.column) == (23, 3)
    assert (module.locs["w1"].line, module.locs["w1"].column) == (5, 5)
    assert module.functions["two"].attributes["layout"] == LayoutRules((("batch", ("rows", "cols")),))


def test_omitted_result_types_are_inferred():
    module = parse_module("func @f(%x: f32[a=2, b=3]) -> f32[a=2] {\n  %s = reduce_sum(%x) {dims = [b]}\n  return %s\n}\n")
    assert module.functions["f"].ops[0].results[0].type == TensorType(f32, (Dim("a", 2),))


REPO = EXAMPLES.parent
ALL_MIR = sorted(p for folder in ("examples", "tests", "docs", "benchmarks") for p in (REPO / folder).rglob("*.mir"))


def test_every_mir_file_in_the_repository_round_trips():
    """Each module of each file (`// -----` separates modules); chunks that expect an
    error are the diagnostics tests' business."""
    assert any(p.parent == EXAMPLES for p in ALL_MIR)
    checked = 0
    for path in ALL_MIR:
        for chunk in path.read_text().split("// -----\n"):
            if "expected-error" not in chunk:
                roundtrip(chunk)
                checked += 1
    assert checked >= len(ALL_MIR)


# --- attribute values: format, parse back, compare -------------------------

RESERVED = {"true", "false", "inf", "nan", *DTYPES}
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in RESERVED)
symbols = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True)
layout_rules = st.lists(
    st.tuples(identifiers, st.lists(identifiers, max_size=3, unique=True).map(tuple)), max_size=3, unique_by=lambda r: r[0]
).map(lambda rules: LayoutRules(tuple(rules)))
scalars = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.text(max_size=8),
    st.sampled_from(sorted(DTYPES.values(), key=str)), identifiers.map(Name),
    st.builds(Dim, identifiers, st.integers(-3, 10**6)), symbols.map(SymbolRef), layout_rules,
)
attribute_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=8)


def same(a, b) -> bool:
    """Equal, with the same Python types, floats compared by spelling (nan, -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(identifiers, attribute_values, min_size=1, max_size=4))
def test_attribute_values_round_trip(attributes):
    probe = Operation("probe", [], attributes, [None], result_names=["r"])
    module = Module(functions={"f": Function("f", [], [], [probe], [])})
    text = print_module(module)
    for variant in (text, text.replace("probe()", "probe(\n)")):  # the one-line fast path and the general one
        parsed = parse_module(variant, verify=False).functions["f"].ops[0].attributes
        assert parsed.keys() == attributes.keys()
        for key, value in attributes.items():
            assert same(parsed[key], tuple(value) if isinstance(value, list) else value), (key, value, parsed[key])


# --- generated modules ------------------------------------------------------

DIM_NAMES = ["batch", "hidden", "seq", "d_1", "layout", "func", "mesh", "return", "_x"]
VALUE_NAMES = ["h", "x", "h.1", "0", "7", "a_b", "q.k.v", "return"]


def _value_name(data):
    return data.draw(st.one_of(st.none(), st.sampled_from(VALUE_NAMES)))


def _type(data, sizes, dtype=f32):
    names = data.draw(st.lists(st.sampled_from(DIM_NAMES), max_size=3, unique=True))
    return TensorType(dtype, tuple(Dim(n, sizes[n]) for n in names))


def _mesh_and_layouts(data, index):
    axes = data.draw(st.lists(st.sampled_from(["rows", "cols", "z"]), min_size=1, max_size=3, unique=True))
    mesh = Mesh(f"m{index}", tuple(Dim(a, data.draw(st.sampled_from([1, 2]))) for a in axes))
    rule_dims = data.draw(st.lists(st.sampled_from(DIM_NAMES), max_size=3, unique=True))
    rules = LayoutRules(tuple((d, tuple(data.draw(st.lists(st.sampled_from(axes), min_size=1, max_size=2, unique=True))))
                              for d in rule_dims))
    return mesh, rules


def _function(data, module, index, sizes):
    # The verifier wants distinct argument names; op results may repeat names or have none.
    arg_names = data.draw(st.lists(st.sampled_from(VALUE_NAMES), min_size=1, max_size=3, unique=True))
    args = [Value(_type(data, sizes), name) for name in arg_names]
    pool = list(args)
    ops = []
    for _ in range(data.draw(st.integers(0, 8))):
        kind = data.draw(st.sampled_from(["unary", "gelu", "binary", "einsum", "cast", "read", "split"]))
        x = data.draw(st.sampled_from(pool))
        if kind == "unary":
            op = Operation(data.draw(st.sampled_from(["relu", "neg", "exp", "tanh"])), [x], {}, [x.type])
        elif kind == "gelu":
            op = Operation("gelu", [x], {"approximate": data.draw(st.booleans())}, [x.type])
        elif kind == "binary":
            y = data.draw(st.sampled_from(pool))
            dims = {d.name: d for d in (*x.type.dims, *y.type.dims)}
            op = Operation(data.draw(st.sampled_from(["add", "mul", "maximum"])), [x, y], {}, [TensorType(f32, tuple(dims.values()))])
        elif kind == "einsum":
            y = data.draw(st.sampled_from(pool))
            dims = {d.name: d for d in (*x.type.dims, *y.type.dims)}
            output = data.draw(st.lists(st.sampled_from(sorted(dims)), unique=True)) if dims else []
            op = Operation("einsum", [x, y], {"output": tuple(Name(n) for n in output)}, [TensorType(f32, tuple(dims[n] for n in output))])
        elif kind == "cast":  # a bf16 result leaves the f32 pool: it is only returned
            op = Operation("cast", [x], {"dtype": bf16}, [x.type.with_dtype(bf16)])
        elif kind == "read" and module.variables:
            variable = data.draw(st.sampled_from(list(module.variables.values())))
            op = Operation("read", [], {"var": SymbolRef(variable.name)}, [variable.type])
            if data.draw(st.booleans()):
                ops.append(op)
                op = Operation("assign", [op.results[0]], {"var": SymbolRef(variable.name)}, [])
        elif kind == "split" and x.type.dims and x.type.dims[0].size == 8:
            op = Operation("split", [x], {"dim": Name(x.type.dims[0].name), "sizes": (4, 4)}, [x.type.resized(x.type.dims[0].name, 4)] * 2)
        else:
            continue
        for value in op.results:
            value.name = _value_name(data)
        ops.append(op)
        if op.name not in ("cast", "split"):  # their results would break size or dtype agreement
            pool.extend(op.results)
    values = [v for op in ops for v in op.results] + args
    returns = data.draw(st.lists(st.sampled_from(values), max_size=3))
    attributes = {}
    if module.meshes and data.draw(st.booleans()):
        mesh_name = data.draw(st.sampled_from(sorted(module.meshes)))
        attributes["mesh"] = SymbolRef(mesh_name)
        choice = data.draw(st.sampled_from(["none", "named", "inline"]))
        if choice == "named":
            attributes["layout"] = SymbolRef(f"l_{mesh_name}")
        elif choice == "inline":
            attributes["layout"] = module.layouts[f"l_{mesh_name}"]
    return Function(f"f{index}", args, [v.type for v in returns], ops, returns, attributes)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_generated_modules_round_trip(data):
    # Sizes are multiples of 4, so any split over at most two axes of size 1 or 2 divides them.
    sizes = {name: data.draw(st.sampled_from([4, 8, 12])) for name in DIM_NAMES}
    module = Module()
    for index in range(data.draw(st.integers(0, 2))):
        mesh, rules = _mesh_and_layouts(data, index)
        module.meshes[mesh.name] = mesh
        module.layouts[f"l_{mesh.name}"] = rules
    for index in range(data.draw(st.integers(0, 2))):
        args = data.draw(st.sampled_from([{}, {"seed": index, "stddev": 0.5}]))
        attributes = data.draw(st.sampled_from([{}, {"trainable": False}]))
        module.variables[f"v{index}"] = Variable(f"v{index}", _type(data, sizes), "normal" if args else "zeros", args, attributes)
    for index in range(data.draw(st.integers(1, 3))):
        function = _function(data, module, index, sizes)
        module.functions[function.name] = function
    verify_module(module)
    text = print_module(module)
    reparsed = parse_module(text, "generated.mir")
    assert print_module(reparsed) == text
    assert print_module(parse_module(exploded(text), "exploded.mir")) == text
    assert sum(len(f.ops) for f in reparsed.functions.values()) == sum(len(f.ops) for f in module.functions.values())


def test_nan_and_infinities_survive_as_floats():
    text = "func @f(%x: f32[a=4]) -> f32[a=6] {\n  %p = pad(%x) {dim = a, high = 1, low = 1, value = nan} : f32[a=6]\n  return %p\n}\n"
    value = parse_module(text).functions["f"].ops[0].attributes["value"]
    assert isinstance(value, float) and math.isnan(value)
    assert roundtrip(text) == text
