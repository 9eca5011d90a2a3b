"""The reference interpreter: global runs, input and output conventions, variable
state, runtime errors, random inputs, and the simulator of local programs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import Location, MeshirError, Source
from meshir.dtypes import DTYPES
from meshir.interpreter import Interpreter, random_inputs, shard, unshard
from meshir.ir import Function, Module, Operation, Value, Variable
from meshir.mesh import LayoutRules, Mesh, ValueLayout
from meshir.registry import lookup
from meshir.types import Dim, TensorType
from meshir.verifier import infer_op


def ttype(dtype: str = "f32", **sizes: int) -> TensorType:
    return TensorType(DTYPES[dtype], tuple(Dim(n, s) for n, s in sizes.items()))


class FunctionBuilder:
    """Adds one function to `module`, inferring each op's result types as it is added."""

    def __init__(self, module: Module, name: str, **attributes):
        self.module = module
        self.function = Function(name, [], [], attributes=attributes)
        module.functions[name] = self.function

    def arg(self, name: str, type_: TensorType) -> Value:
        value = Value(type_, name)
        self.function.args.append(value)
        return value

    def op(self, name: str, *operands: Value, result: str | None = None, loc: Location | None = None, **attrs):
        probe = Operation(name, operands, attrs, [], loc=loc)
        types = infer_op(self.module, self.function, probe)
        names = [result] * len(types) if len(types) == 1 else None
        op = Operation(name, operands, probe.attributes, types, loc=loc, result_names=names)
        self.function.ops.append(op)
        return op.results[0] if len(op.results) == 1 else op.results

    def ret(self, *values: Value) -> None:
        self.function.returns = list(values)
        self.function.result_types = [v.type for v in values]


MESH = Mesh("m", (Dim("rows", 2), Dim("cols", 2)))


def new_module(**variables: TensorType) -> Module:
    return Module(meshes={"m": MESH}, variables={n: Variable(n, t, "zeros") for n, t in variables.items()})


# --- global runs ------------------------------------------------------------------

def test_runs_ops_in_order_with_their_references():
    module = new_module()
    f = FunctionBuilder(module, "f")
    x, y = f.arg("x", ttype(a=2, b=3)), f.arg("y", ttype(b=3))
    s = f.op("add", x, y, result="s")
    p = f.op("mul", s, x, result="p")
    f.ret(p)
    x_in = np.arange(6, dtype=np.float32).reshape(2, 3)
    y_in = np.array([1, -1, 2], np.float32)
    out = Interpreter(module).run("f", {"x": x_in, "y": y_in})
    assert list(out) == ["p"]
    np.testing.assert_array_equal(out["p"], (x_in + y_in[None, :]) * x_in)


def test_output_names_for_repeated_and_unnamed_values():
    module = new_module()
    f = FunctionBuilder(module, "f")
    x = f.arg("x", ttype(a=2))
    n = f.op("neg", x, result="n")
    unnamed = f.op("abs", x)
    f.ret(n, n, unnamed, n, x)
    out = Interpreter(module).run("f", {"x": np.array([1.0, -2.0])})
    assert list(out) == ["n", "n_1", "output_2", "n_2", "x"]
    np.testing.assert_array_equal(out["output_2"], [1.0, 2.0])
    out["n"][0] = 100  # outputs are independent arrays
    assert out["n_1"][0] == -1 and out["x"][0] == 1


def test_first_function_by_default_and_unknown_function():
    module = new_module()
    f = FunctionBuilder(module, "first")
    f.ret(f.op("ones", shape=(Dim("a", 2),), result="o"))
    FunctionBuilder(module, "second").ret()
    interpreter = Interpreter(module)
    assert interpreter.run()["o"].tolist() == [1.0, 1.0]
    assert interpreter.run("@second") == {}
    with pytest.raises(MeshirError, match=r"no function @third in the module \(functions: @first, @second\)"):
        interpreter.run("third")


def one_arg_module(type_: TensorType) -> Module:
    module = new_module()
    f = FunctionBuilder(module, "f")
    f.ret(f.arg("x", type_))
    return module


@pytest.mark.parametrize("value,dtype,expected", [
    (np.array([1, 2], np.int64), "f32", [1.0, 2.0]),
    ([3, 4], "f16", [3.0, 4.0]),
    (np.array([True, False]), "i32", [1, 0]),
    (np.array([1.5, 2.5], np.float64), "bf16", [1.5, 2.5]),
    (np.array([255, 0], np.int64), "u8", [255, 0]),
    (np.array([True, False]), "bool", [True, False]),
])
def test_inputs_are_cast_to_the_argument_dtype(value, dtype, expected):
    out = Interpreter(one_arg_module(ttype(dtype, a=2))).run("f", {"x": value})["x"]
    assert out.dtype == DTYPES[dtype].numpy and out.tolist() == expected


def test_input_errors_name_the_argument_and_type():
    interpreter = Interpreter(one_arg_module(ttype("i32", a=2)))
    cases = [
        ({}, r"func @f: missing input 'x' of type i32\[a=2\]"),
        ({"x": [1, 2], "z": [1]}, r"func @f has no argument 'z' \(arguments: x\)"),
        ({"x": [1, 2, 3]}, r"func @f input 'x': expected i32\[a=2\] \(shape \(2,\)\), got an array of shape \(3,\)"),
        ({"x": np.array([1.0, 2.0])}, r"func @f input 'x': expected i32\[a=2\]; float64 values cannot become i32 without losing meaning"),
        ({"x": np.array([1, 2**40])}, r"func @f input 'x': expected i32\[a=2\]; values from 1 to 1099511627776 do not fit i32"),
        ({"x": np.array([1j, 2])}, r"func @f input 'x': expected i32\[a=2\], got an array of dtype complex128, which has no meshir equivalent"),
        ({"x": ["a", "b"]}, r"got an array of dtype <U1, which has no meshir equivalent"),
    ]
    for inputs, message in cases:
        with pytest.raises(MeshirError, match=message):
            interpreter.run("f", inputs)
    with pytest.raises(MeshirError, match=r"int64 values cannot become bool"):
        Interpreter(one_arg_module(ttype("bool", a=1))).run("f", {"x": np.array([1])})


# --- variables --------------------------------------------------------------------

def accumulate_module() -> Module:
    """@step: read @w, assign_add @w x, read again; returns both reads."""
    module = Module(variables={
        "w": Variable("w", ttype(a=3), "constant", {"value": 2.0}),
        "z": Variable("z", ttype("i32", b=2), "zeros"),
    })
    f = FunctionBuilder(module, "step")
    x = f.arg("x", ttype(a=3))
    before = f.op("read", var=SymbolRef("w"), result="before")
    f.op("assign_add", x, var=SymbolRef("w"))
    after = f.op("read", var=SymbolRef("w"), result="after")
    f.ret(before, after)
    return module


def test_variables_start_from_their_initializers_and_persist():
    interpreter = Interpreter(accumulate_module())
    assert interpreter.state["w"].tolist() == [2.0, 2.0, 2.0]
    assert interpreter.state["z"].dtype == np.int32 and interpreter.state["z"].tolist() == [0, 0]
    out = interpreter.run("step", {"x": np.array([1.0, 2.0, 3.0])})
    assert out["before"].tolist() == [2.0, 2.0, 2.0] and out["after"].tolist() == [3.0, 4.0, 5.0]
    out = interpreter.run("step", {"x": np.array([1.0, 1.0, 1.0])})
    assert out["before"].tolist() == [3.0, 4.0, 5.0] and interpreter.state["w"].tolist() == [4.0, 5.0, 6.0]


def test_given_state_overrides_initializers():
    interpreter = Interpreter(accumulate_module(), {"w": [7, 8, 9]})
    assert interpreter.state["w"].dtype == np.float32 and interpreter.state["w"].tolist() == [7.0, 8.0, 9.0]
    with pytest.raises(MeshirError, match=r"state names variable @q, which the module does not declare \(variables: @w, @z\)"):
        Interpreter(accumulate_module(), {"q": [1]})
    with pytest.raises(MeshirError, match=r"state of variable @w: expected f32\[a=3\] \(shape \(3,\)\), got an array of shape \(2,\)"):
        Interpreter(accumulate_module(), {"w": [1, 2]})


# --- runtime errors ---------------------------------------------------------------

SOURCE = Source("model.mir", "func @f(%x: f32[a=2]) -> f32[a=2] {\n  %n = neg(%x)\n  return %n\n}")
NEG_LOC = Location(SOURCE, 2, 8)


def neg_module() -> Module:
    module = new_module()
    f = FunctionBuilder(module, "f")
    x = f.arg("x", ttype(a=2))
    f.ret(f.op("neg", x, result="n", loc=NEG_LOC))
    return module


def test_reference_failures_become_errors_at_the_op(monkeypatch):
    def broken(op, x):
        raise ValueError("boom")

    monkeypatch.setattr(lookup("neg"), "reference_fn", broken)
    with pytest.raises(MeshirError) as info:
        Interpreter(neg_module()).run("f", {"x": [1.0, 2.0]})
    assert info.value.message == "neg: ValueError: boom" and info.value.loc is NEG_LOC
    assert "model.mir:2:8: error: neg: ValueError: boom\n  %n = neg(%x)\n       ^" == info.value.render()


def test_meshir_errors_from_a_reference_get_the_op_location(monkeypatch):
    def refuses(op, x):
        raise MeshirError("neg: cannot do that")

    monkeypatch.setattr(lookup("neg"), "reference_fn", refuses)
    with pytest.raises(MeshirError) as info:
        Interpreter(neg_module()).run("f", {"x": [1.0, 2.0]})
    assert info.value.message == "neg: cannot do that" and info.value.loc is NEG_LOC


def test_a_reference_returning_the_wrong_type_is_reported(monkeypatch):
    monkeypatch.setattr(lookup("neg"), "reference_fn", lambda op, x: x.astype(np.float64))
    with pytest.raises(MeshirError, match=r"neg: the reference implementation returned float64 of shape \(2,\) for result 0, whose type is f32\[a=2\]"):
        Interpreter(neg_module()).run("f", {"x": [1.0, 2.0]})


def test_ieee_edge_cases_raise_no_warnings(monkeypatch):
    monkeypatch.setattr(lookup("neg"), "reference_fn", lambda op, x: np.float32(1) / x - np.log(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Interpreter(neg_module()).run("f", {"x": [0.0, -1.0]})["n"]
    assert out[0] == np.inf and np.isnan(out[1])


def test_on_op_sees_every_op_and_its_results():
    module = accumulate_module()
    seen = []
    Interpreter(module).run("step", {"x": [1.0, 1.0, 1.0]}, on_op=lambda op, results: seen.append((op.name, [r.tolist() for r in results])))
    assert seen == [("read", [[2.0, 2.0, 2.0]]), ("assign_add", []), ("read", [[3.0, 3.0, 3.0]])]


# --- random inputs ----------------------------------------------------------------

def test_random_inputs_are_deterministic_and_typed():
    module = new_module()
    f = FunctionBuilder(module, "f")
    args = [f.arg("x", ttype(a=200)), f.arg("h", ttype("bf16", a=3)), f.arg("n", ttype("i32", a=200)),
            f.arg("b", ttype("bool", a=200)), f.arg("s", ttype("u8"))]
    f.ret(*args)
    first, again, other = (random_inputs(f.function, seed) for seed in (1, 1, 2))
    assert list(first) == ["x", "h", "n", "b", "s"]
    for name in first:
        assert first[name].dtype == args[[a.name for a in args].index(name)].type.dtype.numpy
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["x"], other["x"])
    assert abs(first["x"].mean()) < 0.3 and 0.7 < first["x"].std() < 1.3
    assert first["n"].min() >= 0 and first["n"].max() <= 9 and len(set(first["n"].tolist())) == 10
    assert 0 < first["b"].sum() < 200 and first["s"].shape == ()
    Interpreter(module).run("f", first)


def test_random_indices_stay_in_range_of_the_dimension_they_index():
    module = new_module()
    f = FunctionBuilder(module, "f")
    labels, rows, both = f.arg("labels", ttype("i32", n=300)), f.arg("rows", ttype("i64", n=300)), f.arg("both", ttype("i32", k=300))
    table = f.arg("table", ttype(vocab=4, e=2))
    f.ret(f.op("one_hot", labels, dim=Dim("classes", 3)), f.op("gather", table, rows, dim=Name("vocab")),
          f.op("one_hot", both, dim=Dim("classes", 5)), f.op("gather", table, both, dim=Name("vocab")))
    inputs = random_inputs(f.function, seed=0)
    assert set(inputs["labels"].tolist()) == {0, 1, 2}
    assert set(inputs["rows"].tolist()) == {0, 1, 2, 3}
    assert set(inputs["both"].tolist()) == {0, 1, 2, 3}


# --- shard / unshard --------------------------------------------------------------

def test_shard_cuts_blocks_first_axis_major():
    value = np.arange(8 * 3).reshape(8, 3)
    # Devices 0..3 are (rows, cols) = (0,0), (0,1), (1,0), (1,1).
    by_rows_cols = shard(value, ValueLayout((("rows", "cols"), ())), MESH)
    assert [s.tolist() for s in by_rows_cols] == [value[2 * k:2 * k + 2].tolist() for k in (0, 1, 2, 3)]
    by_cols_rows = shard(value, ValueLayout((("cols", "rows"), ())), MESH)
    assert [s.tolist() for s in by_cols_rows] == [value[2 * k:2 * k + 2].tolist() for k in (0, 2, 1, 3)]
    mixed = shard(value[:, :2], ValueLayout((("rows",), ("cols",))), MESH)
    assert [s.tolist() for s in mixed] == [value[r * 4:r * 4 + 4, c:c + 1].tolist() for r in (0, 1) for c in (0, 1)]
    for layout in (ValueLayout((("cols", "rows"), ())), ValueLayout(((), ()))):
        np.testing.assert_array_equal(unshard(shard(value, layout, MESH), layout, MESH), value)


def test_unshard_takes_the_lowest_device_of_replicas():
    layout = ValueLayout((("cols",),))
    slices = [np.array([d]) for d in range(4)]
    assert unshard(slices, layout, MESH).tolist() == [0, 1]


# --- local programs (the simulator) -------------------------------------------------

LOCAL = {"spmd": SymbolRef("m")}
BATCH_ROWS_HIDDEN_COLS = ValueLayout((("rows",), ("cols",)))


def matmul_modules() -> Module:
    """@global: y = x . w; @local: the same with batch over rows and hidden over cols,
    w stored split over cols, and an all_reduce of the partial sums over cols."""
    module = new_module(w=ttype(hidden=6, out=3))
    g = FunctionBuilder(module, "global", mesh=SymbolRef("m"))
    w = g.op("read", var=SymbolRef("w"), result="w")
    g.ret(g.op("einsum", g.arg("x", ttype(batch=4, hidden=6)), w, output=(Name("batch"), Name("out")), result="y"))
    f = FunctionBuilder(module, "local", **LOCAL)
    w = f.op("read", var=SymbolRef("w"), layout=LayoutRules.of({"hidden": "cols"}), result="w")
    partial = f.op("einsum", f.arg("x", ttype(batch=2, hidden=3)), w, output=(Name("batch"), Name("out")), result="partial")
    f.ret(f.op("all_reduce", partial, axes=(Name("cols"),), reduce=Name("sum"), result="y"))
    return module


def test_local_program_matches_the_global_one():
    w = np.arange(18, dtype=np.float32).reshape(6, 3) - 5
    x = np.random.default_rng(0).integers(-3, 4, size=(4, 6)).astype(np.float32)
    interpreter = Interpreter(matmul_modules(), {"w": w})
    out = interpreter.run_local("local", {"x": shard(x, BATCH_ROWS_HIDDEN_COLS, MESH)})
    assert list(out) == ["y"] and len(out["y"]) == 4 and out["y"][0].shape == (2, 3)
    y = unshard(out["y"], ValueLayout((("rows",), ())), MESH)
    np.testing.assert_array_equal(y, x @ w)
    np.testing.assert_array_equal(interpreter.run("global", {"x": x})["y"], x @ w)
    # Devices of one row hold equal copies after the all_reduce.
    np.testing.assert_array_equal(out["y"][2], out["y"][3])
    np.testing.assert_array_equal(out["y"][2], (x @ w)[2:])


def test_run_dispatches_local_functions_to_the_simulator():
    x = np.ones((4, 6), np.float32)
    interpreter = Interpreter(matmul_modules(), {"w": np.ones((6, 3))})
    out = interpreter.run("local", {"x": shard(x, BATCH_ROWS_HIDDEN_COLS, MESH)})
    assert all(y.tolist() == [[6.0] * 3] * 2 for y in out["y"])


def local_update_module() -> Module:
    """@update (local): w's slice on each device += the device's input."""
    module = new_module(w=ttype(a=4, b=2))
    f = FunctionBuilder(module, "update", **LOCAL)
    rules = LayoutRules.of({"a": ("rows", "cols")})
    f.op("assign_add", f.arg("d", ttype(a=1, b=2)), var=SymbolRef("w"), layout=rules)
    f.ret(f.op("read", var=SymbolRef("w"), layout=rules, result="w"))
    return module


def test_local_state_comes_from_and_returns_to_the_global_state():
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    interpreter = Interpreter(local_update_module(), {"w": w})
    deltas = [np.full((1, 2), 10 * (d + 1), np.float32) for d in range(4)]
    out = interpreter.run_local("update", {"d": deltas})
    expected = w + np.repeat([[10], [20], [30], [40]], 2, axis=1)
    assert [o.tolist() for o in out["w"]] == [expected[d:d + 1].tolist() for d in range(4)]
    np.testing.assert_array_equal(interpreter.state["w"], expected)


def test_explicit_local_state_is_updated_in_place():
    interpreter = Interpreter(local_update_module())
    local_state = {"w": [np.full((1, 2), d, np.float32) for d in range(4)]}
    interpreter.run_local("update", {"d": [np.ones((1, 2))] * 4}, local_state)
    assert [s.tolist() for s in local_state["w"]] == [[[d + 1.0] * 2] for d in range(4)]
    assert interpreter.state["w"].tolist() == [[0.0, 0.0]] * 4


def test_per_device_ops_with_axis_index_and_dynamic_slice():
    module = new_module()
    f = FunctionBuilder(module, "window", **LOCAL)
    x = f.arg("x", ttype(b=4))
    col = f.op("axis_index", axis=Name("cols"))
    offset = f.op("mul", col, f.op("constant", value=2, dtype=DTYPES["i32"]))
    f.ret(f.op("dynamic_slice", x, offset, dim=Name("b"), size=2, result="window"))
    value = np.array([1.0, 2.0, 3.0, 4.0])
    out = Interpreter(module).run_local("window", {"x": [value] * 4})
    assert [o.tolist() for o in out["window"]] == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]


def test_per_device_failures_name_the_device(monkeypatch):
    module = new_module()
    f = FunctionBuilder(module, "f", **LOCAL)
    f.ret(f.op("neg", f.arg("x", ttype(a=1)), result="n", loc=NEG_LOC))

    def fails_on_three(op, x):
        if x[0] == 3:
            raise ZeroDivisionError("three")
        return -x

    monkeypatch.setattr(lookup("neg"), "reference_fn", fails_on_three)
    with pytest.raises(MeshirError) as info:
        Interpreter(module).run_local("f", {"x": [np.array([d], np.float32) for d in range(4)]})
    assert info.value.message == "neg on device 3: ZeroDivisionError: three" and info.value.loc is NEG_LOC


def test_local_run_errors():
    interpreter = Interpreter(local_update_module())
    ones = np.ones((1, 2))
    cases = [
        ({"d": ones}, r"func @update input 'd': expected a list of 4 per-device arrays of type f32\[a=1, b=2\] \(mesh @m <rows=2, cols=2>\), got a ndarray"),
        ({"d": [ones] * 3}, r"expected a list of 4 per-device arrays .*, got a list of 3"),
        ({"d": [ones] * 3 + [np.ones(2)]}, r"func @update input 'd' on device 3: expected f32\[a=1, b=2\] \(shape \(1, 2\)\), got an array of shape \(2,\)"),
    ]
    for inputs, message in cases:
        with pytest.raises(MeshirError, match=message):
            interpreter.run_local("update", inputs)
    with pytest.raises(MeshirError, match="local state has no slices of variable @w, which func @update uses"):
        interpreter.run_local("update", {"d": [ones] * 4}, {})
    with pytest.raises(MeshirError, match=r"local state of variable @w on device 0: expected f32\[a=1, b=2\]"):
        interpreter.run_local("update", {"d": [ones] * 4}, {"w": [np.ones((4, 2))] * 4})
    with pytest.raises(MeshirError, match="func @global is a global function; run it with run()"):
        Interpreter(matmul_modules()).run_local("global", {})
    with pytest.raises(MeshirError, match="func @update is local; draw inputs for its global function and shard them"):
        random_inputs(interpreter.module.function("update"), 0)


def test_a_variable_stored_two_ways_in_one_function_is_an_error():
    module = new_module(w=ttype(a=4))
    f = FunctionBuilder(module, "f", **LOCAL)
    first = f.op("read", var=SymbolRef("w"), layout=LayoutRules.of({"a": "rows"}), result="first")
    second = f.op("read", var=SymbolRef("w"), loc=NEG_LOC, result="second")
    f.ret(first, second)
    with pytest.raises(MeshirError, match="read: func @f stores variable @w with two different layouts") as info:
        Interpreter(module).run_local("f", {})
    assert info.value.loc is NEG_LOC
