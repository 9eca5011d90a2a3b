"""The XLA backend's op rules against the numpy references.

Every op of the registry has an xla rule; each runs in global programs that
batch many cases (edge cases included) into a few compiled functions, compared
with the reference interpreter on the same inputs within the dtype's tolerance.
JAX gets 8 CPU devices from tests/conftest.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from meshir.backends.xla import compile_global
from meshir.backends.xla.rules import install, missing_rules
from meshir.frontends.builder import ModuleBuilder, bf16, bool_, f32, f64, i32, i64, u8
from meshir.interpreter import Interpreter
from meshir.ir import Module
from meshir.registry import all_ops
from meshir.types import TensorType

NAN, INF = float("nan"), float("inf")


def test_every_op_has_an_xla_rule():
    install()
    assert missing_rules() == []
    assert all("xla" in op.lowerings for op in all_ops())


# --- batched cases ------------------------------------------------------------------

Operand = tuple[np.ndarray, TensorType]


@dataclass
class Case:
    op: str
    operands: list[Operand]
    attrs: dict[str, Any] = field(default_factory=dict)


def arg(ttype: TensorType, values: Any = None, seed: int = 0) -> Operand:
    """An operand of `ttype`: `values` reshaped, or deterministic draws (floats
    normal, integers in [-5, 5], booleans fair)."""
    rng = np.random.default_rng(seed)
    if values is not None:
        array = np.asarray(values, dtype=np.float64 if ttype.dtype.is_float else None).reshape(ttype.shape)
    elif ttype.dtype.is_float:
        array = rng.normal(size=ttype.shape) * 2
    elif ttype.dtype.is_bool:
        array = rng.random(ttype.shape) < 0.5
    else:
        array = rng.integers(-5, 6, size=ttype.shape)
        if ttype.dtype.kind == "uint":
            array = np.abs(array)
    return array.astype(ttype.dtype.numpy), ttype


def case(op: str, *operands: Operand, **attrs: Any) -> Case:
    return Case(op, list(operands), attrs)


def build(cases: list[Case], variables: dict[str, TensorType] | None = None) -> tuple[Module, dict[str, np.ndarray], list[str]]:
    """One global function `f` running every case on its own arguments; returns the
    module, the inputs, and a label per returned value (in return order)."""
    mb = ModuleBuilder()
    mb.mesh("m", x=1)
    mb.mesh("other", y=1)
    for name, ttype in (variables or {}).items():
        mb.var(name, ttype, "uniform", seed=7)
    args = {f"c{i}_{j}": t for i, c in enumerate(cases) for j, (_, t) in enumerate(c.operands)}
    inputs = {f"c{i}_{j}": a for i, c in enumerate(cases) for j, (a, _) in enumerate(c.operands)}
    labels, results = [], []
    with mb.function("f", mesh="m", **args) as f:
        for i, c in enumerate(cases):
            out = f.op(c.op, *(f.arg(f"c{i}_{j}") for j in range(len(c.operands))), **c.attrs)
            outs = out if isinstance(out, tuple) else () if out is None else (out,)
            labels += [f"case {i}: {c.op} {c.attrs} result {k}" for k in range(len(outs))]
            results += outs
        f.ret(*results)
    return mb.build(), inputs, labels


TOLERANCES = {"f64": (1e-12, 1e-12), "f32": (2e-5, 2e-6), "f16": (2e-3, 2e-3), "bf16": (1e-2, 1e-2)}


def assert_matches(got: np.ndarray, want: np.ndarray, ttype: TensorType, label: str) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (label, got.shape, got.dtype, want.shape, want.dtype)
    if ttype.dtype.is_float:
        rtol, atol = TOLERANCES[ttype.dtype.name]
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, err_msg=label)
    else:
        np.testing.assert_array_equal(got, want, err_msg=label)


def check_against_reference(cases: list[Case], variables: dict[str, TensorType] | None = None) -> None:
    module, inputs, labels = build(cases, variables)
    interpreter = Interpreter(module)
    want = interpreter.run("f", inputs)
    got, new_state = compile_global(module, "f").run(inputs)
    function = module.function("f")
    assert list(got) == list(want)
    for label, name, value in zip(labels, want, function.returns):
        assert_matches(got[name], want[name], value.type, label)
    for name, value in new_state.items():
        np.testing.assert_array_equal(value, interpreter.state[name], err_msg=f"variable @{name}")


# Floats with the special values every rule must treat like numpy.
SPECIAL = [0.0, -0.0, INF, -INF, NAN, 1e-30, -1.0, 0.5, 2.5, -2.5, 88.0, -100.0]


def special(dtype=f32) -> Operand:
    return arg(dtype(a=3, b=4), SPECIAL)


FLOAT_UNARY = "neg abs exp log log1p sqrt rsqrt square sin cos tanh sigmoid relu silu softplus erf sign floor ceil round reciprocal".split()


def elementwise_cases() -> list[Case]:
    cases = [case(name, special()) for name in FLOAT_UNARY]
    cases += [case(name, arg(f32(a=2, b=3), seed=1)) for name in FLOAT_UNARY]
    cases += [case(name, arg(i32(n=11), range(-5, 6))) for name in "neg abs square relu sign".split()]
    cases += [case(name, arg(bf16(a=2, b=5), seed=2)) for name in "exp tanh sigmoid sqrt log silu".split()]
    cases += [
        case("gelu", special()), case("gelu", special(), approximate=True), case("gelu", arg(bf16(n=6), seed=3)),
        case("logical_not", arg(bool_(n=4), [True, False, True, False])),
        case("cast", arg(f32(n=6), [-2.7, -0.5, 0.0, 0.5, 2.7, 100.9]), dtype="i32"),
        case("cast", arg(f32(n=5), [-1.0, 0.0, -0.0, NAN, 3.0]), dtype="bool"),
        case("cast", arg(i32(n=4), [-3, 0, 7, 255]), dtype="f32"),
        case("cast", arg(i32(n=4), [0, 7, 200, 255]), dtype="u8"),
        case("cast", arg(bool_(n=3), [True, False, True]), dtype="i32"),
        case("cast", arg(f32(n=4), [1.0, 1.00390625, -3.3, 1e5]), dtype="bf16"),
        case("cast", arg(f64(n=3), [1.0 / 3, -2.5, 1e300]), dtype="f32"),
    ]
    return cases


def binary_cases() -> list[Case]:
    x, y = arg(f32(a=3, b=4), seed=4), arg(f32(b=4, c=2), seed=5)
    cases = [case(name, x, y) for name in "add sub mul div maximum minimum eq ne lt le gt ge".split()]
    zeros = arg(f32(n=12), [0.0] * 6 + [1.0, -1.0, NAN, 2.0, INF, -0.0])
    cases += [case(name, arg(f32(n=12), SPECIAL), zeros) for name in "div maximum minimum eq lt".split()]
    cases += [
        case("pow", arg(f32(a=3), [0.5, 2.0, 9.0]), arg(f32(b=2), [0.5, -1.5])),
        case("div", arg(i32(n=8), [7, -7, 7, -7, 5, 0, -9, 3]), arg(i32(n=8), [2, 2, -2, -2, 0, 0, 4, 0])),
        case("div", arg(u8(n=4), [7, 200, 9, 0]), arg(u8(n=4), [2, 0, 3, 5])),
        case("logical_and", arg(bool_(a=2), [True, False]), arg(bool_(b=2), [True, False])),
        case("logical_or", arg(bool_(a=2), [True, False]), arg(bool_(b=2), [True, False])),
        case("eq", arg(bool_(a=2), [True, False]), arg(bool_(a=2), [True, True])),
        case("select", arg(bool_(b=4), [True, False, False, True]), x, y),
        case("add", arg(bf16(a=3, b=4), seed=6), arg(bf16(b=4), seed=7)),
        case("mul", arg(bf16(a=3, b=4), seed=6), arg(bf16(a=3, b=4), seed=8)),
        case("sub", arg(i64(n=3), [2**40, -(2**40), 5]), arg(i64(n=3), [1, 2**41, -5])),
    ]
    return cases


def reduction_cases() -> list[Case]:
    x = arg(f32(a=3, b=4, c=2), seed=9)
    empty = arg(f32(a=3, z=0))
    cases = []
    for name in "reduce_sum reduce_mean reduce_max reduce_min reduce_prod logsumexp".split():
        cases += [case(name, x, dims=["b"]), case(name, x, dims=["a", "c"]), case(name, empty, dims=["z"])]
    cases += [
        case("reduce_max", arg(i32(a=2, z=0)), dims=["z"]),
        case("reduce_min", arg(u8(a=2, z=0)), dims=["z"]),
        case("reduce_sum", arg(i32(a=2, b=3), seed=10), dims=["a", "b"]),
        case("reduce_sum", arg(bf16(a=4, b=8), seed=11), dims=["b"]),
        case("reduce_max", arg(f32(a=2, b=3), [1, NAN, 2, -INF, -INF, -INF]), dims=["b"]),
        case("logsumexp", arg(f32(a=3, b=2), [INF, 1.0, -INF, -INF, 1000.0, 1000.0]), dims=["b"]),
        case("reduce_any", arg(bool_(a=3, b=2), [True, False, False, False, True, True]), dims=["b"]),
        case("reduce_all", arg(bool_(a=3, b=2), [True, False, False, False, True, True]), dims=["b"]),
        case("reduce_any", arg(bool_(a=2, z=0)), dims=["z"]),
        case("reduce_all", arg(bool_(a=2, z=0)), dims=["z"]),
    ]
    ties = arg(f32(a=3, b=4), [1, 3, 3, 0, NAN, 2, NAN, 5, -1, -1, -1, -1])
    cases += [
        case("argmax", ties, dim="b"), case("argmin", ties, dim="b"), case("argmax", ties, dim="a"),
        case("argmax", arg(i32(a=2, b=3), [4, 4, 1, -2, 7, 7]), dim="b"),
        case("argmin", arg(f32(a=2, z=0)), dim="z"),
        case("top_k", ties, dim="b", k=3),
        case("top_k", arg(f32(a=2, b=5), [0.0, -0.0, 1, 0.0, -1, 2, 2, NAN, 2, -INF]), dim="b", k=5),
        case("top_k", arg(i32(b=5, a=2), [-(2**31), 3, 3, -(2**31), 0, 2, 7, 3, -1, 3]), dim="b", k=4),
        case("top_k", arg(bf16(a=2, b=4), seed=12), dim="b", k=2),
        case("top_k", arg(f32(a=3), seed=13), dim="a", k=0),
        case("softmax", x, dim="b"), case("log_softmax", x, dim="c"),
        case("softmax", arg(f32(a=2, b=3), [-INF, -INF, -INF, 1.0, INF, 0.0]), dim="b"),
        case("log_softmax", arg(bf16(a=2, b=3), seed=14), dim="b"),
        case("cumsum", x, dim="b"), case("cumsum", arg(i32(a=5), seed=15), dim="a"),
        case("cumsum", arg(bf16(a=8), seed=16), dim="a"),
    ]
    return cases


def contraction_cases() -> list[Case]:
    a, b, c = arg(f32(i=3, j=4), seed=17), arg(f32(j=4, k=5), seed=18), arg(f32(k=5, m=2), seed=19)
    return [
        case("einsum", a, b, output=["i", "k"]),
        case("einsum", a, b, c, output=["m", "i"]),
        case("einsum", a, arg(f32(l=2), seed=20), output=["l", "i", "j"]),
        case("einsum", a, output=[]),
        case("einsum", arg(i32(i=3, j=4), seed=21), arg(i32(j=4), seed=22), output=["i"]),
        case("einsum", arg(bf16(i=3, j=8), seed=23), arg(bf16(j=8, k=2), seed=24), output=["k", "i"]),
        case("matmul", arg(f32(bt=2, i=3, j=4), seed=25), arg(f32(bt=2, j=4, k=2), seed=26), batch=["bt"]),
        case("matmul", a, b),
    ]


def shape_cases() -> list[Case]:
    x = arg(f32(a=2, b=3, c=4), seed=27)
    return [
        case("rename", x, from_="b", to="q"),
        case("reshape", x, shape={"p": 6, "c": 4}),
        case("transpose", x, order=["c", "a", "b"]),
        case("broadcast", arg(f32(b=3), seed=28), shape={"a": 2, "b": 3, "n": 2}),
        case("slice", x, dim="c", begin=1, size=2),
        case("slice", x, dim="b", begin=3, size=0),
        case("concat", x, arg(f32(a=2, b=1, c=4), seed=29), x, dim="b"),
        case("split", x, dim="c", sizes=[1, 0, 3]),
        case("pad", x, dim="b", low=1, high=2, value=-1.5),
        case("pad", arg(i32(n=3), seed=30), dim="n", low=0, high=2, value=7.0),
        case("stack", arg(f32(a=2), seed=31), arg(f32(a=2), seed=32), arg(f32(a=2), seed=33), dim="s", axis=1),
        case("unstack", x, dim="b"),
        case("shift", x, dim="c", offset=1),
        case("shift", x, dim="c", offset=-2),
        case("shift", x, dim="b", offset=2, wrap=True),
        case("shift", x, dim="b", offset=-4, wrap=True),
        case("shift", x, dim="b", offset=5),
        case("stop_gradient", x),
        case("reshard", x, layout={"a": "x"}),
        case("transfer", x, to="other"),
    ]


def indexing_cases() -> list[Case]:
    table = arg(f32(v=5, e=3), seed=34)
    indices = arg(i32(t=2, u=3), [0, 4, -1, 5, 2, 2])
    return [
        case("one_hot", indices, dim=("cls", 5)),
        case("one_hot", arg(u8(t=3), [0, 3, 250]), dim=("cls", 4), dtype="i32"),
        case("one_hot", arg(i64(t=2), [2**40, 1]), dim=("cls", 3), dtype="bf16"),
        case("gather", table, indices, dim="v"),
        case("gather", table, arg(i32(t=4), [2, -3, 3, 1]), dim="e"),
        case("gather", arg(f32(v=0, e=2)), arg(i32(t=2), [0, 1]), dim="v"),
        case("gather", arg(i32(v=3), [7, 8, 9]), arg(u8(t=3), [2, 0, 9]), dim="v"),
        case("scatter_add", table, indices, arg(f32(t=2, u=3, e=3), seed=35), dim="v"),
        case("scatter_add", arg(bf16(v=4), seed=36), arg(i32(t=5), [1, 1, 1, -1, 4]), arg(bf16(t=5), seed=37), dim="v"),
        case("scatter_add", arg(i32(e=2, v=3)), arg(i32(t=3), [2, 2, 0]), arg(i32(t=3, e=2)), dim="v"),
        case("iota", shape={"a": 2, "b": 3}, dim="b"),
        case("iota", shape={"a": 4, "b": 2}, dim="a", dtype="f32"),
    ]


def constant_cases() -> list[Case]:
    return [
        case("constant", value=2.5, shape={"a": 2}),
        case("constant", value=[[1, 2], [3, 4]], shape={"a": 2, "b": 2}, dtype="i32"),
        case("constant", value=[2**40 + 1, -3], shape={"a": 2}, dtype="i64"),
        case("constant", value=True, dtype="bool"),
        case("constant", value=0.1, shape={"a": 3}, dtype="bf16"),
        case("zeros", shape={"a": 2}, dtype="bool"),
        case("ones", shape={"a": 2, "b": 1}, dtype="bf16"),
        case("full", shape={"a": 3}, value=-7.0, dtype="i8"),
    ]


def nn_cases() -> list[Case]:
    x1 = arg(f32(b=2, w=9, ci=3), seed=38)
    k1 = arg(f32(kw=3, ci=3, co=4), seed=39)
    # Batch dimensions on both sides of the spatial ones; the kernel in an odd order.
    x2 = arg(f32(b1=2, h=5, ci=3, w=6, b2=2), seed=40)
    k2 = arg(f32(co=4, kh=3, ci=3, kw=2), seed=41)
    conv2 = {"spatial": ["h", "w"], "kernel_dims": ["kh", "kw"], "in_channels": "ci", "out_channels": "co"}
    conv1 = {"spatial": ["w"], "kernel_dims": ["kw"], "in_channels": "ci", "out_channels": "co"}
    image = arg(f32(n=2, h=5, w=7), seed=42)
    logits, labels = arg(f32(b=3, k=4), seed=43), arg(f32(k=4, b=3), np.abs(np.random.default_rng(44).normal(size=12)))
    return [
        case("conv1d", x1, k1, **conv1),
        case("conv1d", x1, k1, padding="same", strides=[2], **conv1),
        case("conv1d", x1, k1, dilation=[2], strides=[2], **conv1),
        case("conv2d", x2, k2, padding="same", strides=[2, 1], **conv2),
        case("conv2d", x2, k2, padding="valid", dilation=[1, 2], **conv2),
        case("conv1d", arg(bf16(w=8, ci=2), seed=45), arg(bf16(kw=3, ci=2, co=2), seed=46), padding="same", **conv1),
        case("max_pool", image, spatial=["h", "w"], window=[2, 3]),
        case("max_pool", image, spatial=["h", "w"], window=[2, 3], strides=[1, 2], padding="same"),
        case("max_pool", arg(i32(n=7), seed=47), spatial=["n"], window=[3], strides=[2], padding="same"),
        case("avg_pool", image, spatial=["w"], window=[4], strides=[3], padding="same"),
        case("avg_pool", image, spatial=["h", "w"], window=[3, 3], strides=[1, 1], padding="valid"),
        case("softmax_cross_entropy", logits, labels, dim="k"),
        case("softmax_cross_entropy", arg(f32(b=2, k=2), [-INF, -INF, 0.0, 1.0]), arg(f32(b=2, k=2), [0.0, 0.0, 0.5, 0.5]), dim="k"),
        case("layer_norm", arg(f32(b=3, d=4, e=2), seed=48), dims=["d", "e"]),
        case("layer_norm", arg(f32(b=3, d=4), seed=49), arg(f32(d=4), seed=50), arg(f32(d=4), seed=51), dims=["d"], epsilon=1e-3),
        case("layer_norm", arg(bf16(b=2, d=8), seed=52), arg(bf16(d=8), seed=53), dims=["d"]),
    ]


def random_cases() -> list[Case]:
    step = arg(i32(), [-3])
    return [
        case("random_uniform", shape={"a": 5, "b": 7}, seed=3),
        case("random_uniform", step, shape={"a": 4, "b": 2}, seed=2**40 + 9, minval=-2.0, maxval=3.0),
        case("random_uniform", shape={"a": 6}, seed=5, dtype="f64"),
        case("random_uniform", shape={"a": 6}, seed=5, dtype="bf16"),
        case("random_normal", shape={"a": 5, "b": 7}, seed=3),
        case("random_normal", step, shape={"a": 9}, seed=11, mean=1.0, stddev=0.5),
        case("dropout", arg(f32(a=16, b=8), seed=54), rate=0.3, seed=9),
        case("dropout", arg(f32(a=16), seed=55), step, rate=0.5, seed=9),
        case("dropout", arg(bf16(a=8), seed=56), rate=0.0, seed=1),
    ]


GROUPS = {
    "elementwise": elementwise_cases,
    "binary": binary_cases,
    "reductions": reduction_cases,
    "contraction": contraction_cases,
    "shape": shape_cases,
    "indexing": indexing_cases,
    "constants": constant_cases,
    "nn": nn_cases,
    "random": random_cases,
}


@pytest.mark.parametrize("group", GROUPS)
def test_rules_match_the_references(group):
    check_against_reference(GROUPS[group]())


def test_cases_cover_every_op_but_state_and_collectives():
    covered = {c.op for cases in GROUPS.values() for c in cases()}
    elsewhere = {op.name for op in all_ops() if op.group in ("state", "collectives")} - {"stop_gradient"}
    assert {op.name for op in all_ops()} - covered == elsewhere


def check_random_ops_are_bit_exact(compile_function) -> None:
    """Uniform draws and dropout equal the reference bit for bit on a backend;
    `compile_function(module, name)` gives its program (tests/test_tf_rules.py shares it)."""
    module, inputs, labels = build(random_cases())
    want = Interpreter(module).run("f", inputs)
    got, _ = compile_function(module, "f").run(inputs)
    for label, name in zip(labels, want):
        if "random_normal" not in label:
            np.testing.assert_array_equal(got[name], want[name], err_msg=label)


def check_state_ops(compile_function) -> None:
    """read, assign and assign_add, and the variables a program is given."""
    mb = ModuleBuilder()
    mb.var("w", f32(a=3), "uniform", seed=1)
    mb.var("h", bf16(a=3), "uniform", seed=2)
    mb.var("k", i32(a=3), "constant", value=5)
    mb.var("unused", f32(a=2), "zeros")
    with mb.function("f", x=f32(a=3), y=bf16(a=3), n=i32(a=3)) as f:
        before = f.read("w")
        f.assign_add("w", f.arg("x"))
        f.assign_add("h", f.arg("y"))
        after = f.read("w")
        f.assign("k", f.arg("n"))
        f.assign_add("k", f.arg("n"))
        f.ret(before, after, f.read("k"))
    module = mb.build()
    inputs = {"x": np.array([1.0, -2.0, 0.5], np.float32), "y": np.array([0.1, 0.2, 0.3], ml_dtypes.bfloat16),
              "n": np.array([1, -2, 3], np.int32)}
    interpreter = Interpreter(module)
    want = interpreter.run("f", inputs)
    program = compile_function(module, "f")
    got, state = program.run(inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert sorted(state) == ["h", "k", "w"]
    for name, value in state.items():
        np.testing.assert_array_equal(value, interpreter.state[name])
    # Given variables win over initializers; a given variable the function does not use passes through.
    given = {"w": np.zeros(3, np.float32), "unused": np.ones(2, np.float32)}
    _, state = program.run(inputs, given)
    np.testing.assert_array_equal(state["w"], inputs["x"])
    np.testing.assert_array_equal(state["unused"], given["unused"])


def test_random_uniform_and_dropout_are_bit_exact():
    check_random_ops_are_bit_exact(compile_global)


def test_state_ops_read_assign_and_assign_add():
    check_state_ops(compile_global)
