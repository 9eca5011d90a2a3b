"""The cleanup passes: dce, cse and canonicalize, on IR built through the builder."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from meshir.attributes import Name, SymbolRef
from meshir.dtypes import DTYPES, f32 as F32
from meshir.frontends.builder import FunctionBuilder, ModuleBuilder, bf16, bool_, dims, f32, i32
from meshir.ir import Function, Module, Operation
from meshir.passes import canonicalize as canonicalize_module
from meshir.passes.canonicalize import Canonicalize
from meshir.passes.cse import CommonSubexpressionElimination, attribute_key
from meshir.passes.dce import DeadCodeElimination
from meshir.registry import OpView
from meshir.types import Dim, TensorType
from meshir.verifier import verify_module


def build(body: Callable[[FunctionBuilder], None], variables: tuple[str, ...] = (), **args: TensorType) -> Module:
    """A module with one function @f whose body `body` builds; each named variable is f32[n=4]."""
    mb = ModuleBuilder()
    for name in variables:
        mb.var(name, f32(n=4), "zeros")
    with mb.function("f", **args) as f:
        body(f)
    return mb.build()


def run(module: Module, *passes: object) -> Function:
    for p in passes:
        p.run(module)
    verify_module(module)
    return module.function("f")


def names(function: Function) -> list[str]:
    return [op.name for op in function.ops]


def evaluate(function: Function, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run a stateless global function with the ops' reference implementations."""
    env = dict(zip(function.args, inputs))
    for op in function.ops:
        view = OpView(op.opdef, op.operand_types, op.attributes, None, function, op.result_types)
        out = op.opdef.reference_fn(view, *(env[v] for v in op.operands))
        env.update(zip(op.results, out if isinstance(out, (tuple, list)) else [out]))
    return [env[v] for v in function.returns]


# --- dce ----------------------------------------------------------------------


def test_dce_removes_unused_ops_transitively() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        f.neg(f.exp(x))  # the neg is unused, then so is the exp
        f.ret(f.sqrt(x))

    function = run(build(body, x=f32(n=4)), DeadCodeElimination())
    assert names(function) == ["sqrt"]
    assert function.returns[0].owner is function.ops[0]


def test_dce_keeps_side_effects_and_what_feeds_them() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        f.assign("v", f.exp(x))
        f.read("v")  # unused, no side effect
        f.assign_add("v", x)
        f.ret(x)

    function = run(build(body, variables=("v",), x=f32(n=4)), DeadCodeElimination())
    assert names(function) == ["exp", "assign", "assign_add"]


def test_dce_keeps_the_signature() -> None:
    def body(f: FunctionBuilder) -> None:
        f.exp(f.arg("y"))
        f.ret(f.arg("x"))

    module = build(body, x=f32(n=4), y=f32(m=2))
    args = list(module.function("f").args)
    function = run(module, DeadCodeElimination())
    assert function.ops == [] and function.args == args and function.result_types == [f32(n=4)]


def test_dce_cleans_every_function_local_ones_included() -> None:
    mb = ModuleBuilder()
    mb.mesh("m", rows=2)
    with mb.function("g", x=f32(n=4)) as g:
        g.exp(g.arg("x"))
        g.ret(g.arg("x"))
    with mb.function("local", x=f32(n=4), spmd="m") as local:
        local.all_reduce(local.arg("x"), axes=["rows"], reduce="sum")
        local.ret(local.arg("x"))
    module = mb.build()
    DeadCodeElimination().run(module)
    assert [f.ops for f in module.functions.values()] == [[], []]


# --- cse ----------------------------------------------------------------------


def test_cse_merges_equal_ops_and_then_their_users() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        a, b = f.exp(x), f.exp(x)
        f.ret(f.add(f.neg(a), f.neg(b)), b)

    function = run(build(body, x=f32(n=4)), CommonSubexpressionElimination())
    assert names(function) == ["exp", "neg", "add"]
    exp, neg, add = function.ops
    assert neg.operands == [exp.result] and add.operands == [neg.result, neg.result]
    assert function.returns == [add.result, exp.result]


def test_cse_keeps_operand_order_and_attributes_apart() -> None:
    def body(f: FunctionBuilder) -> None:
        x, y = f.arg("x"), f.arg("y")
        f.ret(
            f.sub(x, y), f.sub(y, x),
            f.cast(x, dtype="f16"), f.cast(x, dtype="bf16"),
            f.gelu(x, approximate=True), f.gelu(x),
        )

    function = run(build(body, x=f32(n=4), y=f32(n=4)), CommonSubexpressionElimination())
    assert names(function) == ["sub", "sub", "cast", "cast", "gelu", "gelu"]


def test_cse_fills_in_default_attributes() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        f.ret(f.gelu(x), f.gelu(x, approximate=False))

    function = run(build(body, x=f32(n=4)), CommonSubexpressionElimination())
    assert names(function) == ["gelu"]
    assert function.returns[0] is function.returns[1]


def test_cse_compares_float_attributes_by_value_not_by_python_equality() -> None:
    def body(f: FunctionBuilder) -> None:
        constants = [
            f.constant(value=math.nan), f.constant(value=float("nan")),  # equal: merge
            f.constant(value=0.0), f.constant(value=-0.0),  # differ: keep both
            f.constant(value=1, dtype="i32"), f.constant(value=1.0, dtype="i32"), f.constant(value=True, dtype="i32"),
            f.constant(value=2.5), f.constant(value=2.5),  # equal: merge
        ]
        f.ret(*constants)

    function = run(build(body), CommonSubexpressionElimination())
    values = [op.attributes["value"] for op in function.ops]
    assert math.isnan(values[0])
    assert [repr(v) for v in values[1:]] == ["0.0", "-0.0", "1", "1.0", "True", "2.5"]
    returns = function.returns
    assert returns[0] is returns[1] and returns[7] is returns[8]
    assert len({*returns[1:7]}) == 6


def test_attribute_keys_tell_apart_what_python_equality_confuses() -> None:
    assert attribute_key(math.nan) == attribute_key(float("nan"))
    assert attribute_key(0.0) != attribute_key(-0.0)
    assert len({attribute_key(1), attribute_key(1.0), attribute_key(True)}) == 3
    assert attribute_key(Name("batch")) != attribute_key("batch")
    assert attribute_key((1, (2.0, math.nan))) == attribute_key((1, (2.0, math.nan)))
    assert attribute_key((1, 2)) != attribute_key((1.0, 2))
    assert attribute_key(Dim("n", 4)) == attribute_key(Dim("n", 4)) != attribute_key(Dim("n", 5))
    assert attribute_key(SymbolRef("w")) == attribute_key(SymbolRef("w"))
    assert attribute_key(F32) == attribute_key(DTYPES["f32"]) != attribute_key(DTYPES["f64"])


def test_cse_never_merges_side_effects() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        f.assign_add("v", x)
        f.assign_add("v", x)
        f.ret(x)

    function = run(build(body, variables=("v",), x=f32(n=4)), CommonSubexpressionElimination())
    assert names(function) == ["assign_add", "assign_add"]


def test_cse_merges_reads_with_no_write_to_the_variable_between() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        first = f.read("v")
        f.assign("w", x)  # another variable: no effect on @v
        same = f.read("v")
        f.assign_add("v", x)
        after_write = f.read("v")
        f.ret(first, same, after_write)

    function = run(build(body, variables=("v", "w"), x=f32(n=4)), CommonSubexpressionElimination())
    assert names(function) == ["read", "assign", "assign_add", "read"]
    first, same, after_write = function.returns
    assert first is same and after_write is not first
    assert after_write.owner is function.ops[3]


def test_cse_merges_random_ops_with_the_same_seed() -> None:
    def body(f: FunctionBuilder) -> None:
        shape = dims(n=4)
        f.ret(f.random_normal(shape=shape, seed=1), f.random_normal(shape=shape, seed=1), f.random_normal(shape=shape, seed=2))

    function = run(build(body), CommonSubexpressionElimination())
    assert [op.attributes["seed"] for op in function.ops] == [1, 2]
    assert function.returns[0] is function.returns[1]


def test_cse_maps_every_result_of_a_multi_result_op() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        a, b = f.split(x, dim="n", sizes=[1, 3])
        c, d = f.split(x, dim="n", sizes=[1, 3])
        f.ret(c, d, b)

    function = run(build(body, x=f32(n=4)), CommonSubexpressionElimination())
    (split,) = function.ops
    assert function.returns == [split.results[0], split.results[1], split.results[1]]


# --- canonicalize -------------------------------------------------------------


def canonical(body: Callable[[FunctionBuilder], None], **args: TensorType) -> Function:
    return run(build(body, **args), Canonicalize())


def test_matmul_becomes_einsum_with_its_output_named() -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(f.matmul(f.arg("a"), f.arg("w"), name="h"))

    function = canonical(body, a=f32(b=2, i=3), w=f32(i=3, o=4))
    (op,) = function.ops
    assert op.name == "einsum"
    assert op.attributes["output"] == (Name("b"), Name("o"))
    assert op.operands == function.args
    assert op.result.type == f32(b=2, o=4) and op.result.name == "h"


def test_matmul_batch_dimensions_stay_in_the_einsum_output() -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(f.matmul(f.arg("a"), f.arg("c"), batch=["b"]))

    (op,) = canonical(body, a=f32(b=2, i=3), c=f32(o=4, i=3, b=2)).ops
    assert op.name == "einsum" and op.attributes["output"] == (Name("b"), Name("o"))


@pytest.mark.parametrize(
    ("make", "kept"),
    [
        (lambda f, x: f.transpose(x, order=["a", "b"]), False),
        (lambda f, x: f.transpose(x, order=["b", "a"]), True),
        (lambda f, x: f.reshape(x, shape=dims(a=2, b=3)), False),
        (lambda f, x: f.reshape(x, shape=dims(a=3, b=2)), True),
        (lambda f, x: f.broadcast(x, shape=dims(a=2, b=3)), False),
        (lambda f, x: f.broadcast(x, shape=dims(a=2, b=3, c=1)), True),
        (lambda f, x: f.cast(x, dtype="f32"), False),
        (lambda f, x: f.cast(x, dtype="f64"), True),
        (lambda f, x: f.rename(x, from_="a", to="z"), True),
    ],
)
def test_shape_ops_that_change_nothing_are_removed(make: Callable, kept: bool) -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(make(f, f.arg("x")))

    function = canonical(body, x=f32(a=2, b=3))
    assert len(function.ops) == int(kept)
    assert (function.returns[0] is function.args[0]) is not kept


def test_double_negation_cancels() -> None:
    def body(f: FunctionBuilder) -> None:
        x, p = f.arg("x"), f.arg("p")
        f.ret(f.neg(f.neg(x)), f.neg(f.neg(f.neg(x))), f.logical_not(f.logical_not(p)))

    function = canonical(body, x=f32(n=4), p=bool_(n=4))
    assert names(function) == ["neg"]
    x, p = function.args
    assert function.returns == [x, function.ops[0].result, p]
    assert function.ops[0].operands == [x]


def test_adding_zeros_and_multiplying_by_ones_is_dropped_when_types_match() -> None:
    def body(f: FunctionBuilder) -> None:
        x = f.arg("x")
        zeros, ones = f.zeros(shape=dims(n=4)), f.ones(shape=dims(n=4))
        f.ret(
            f.add(x, zeros), f.add(zeros, x), f.mul(x, ones), f.mul(ones, x),
            f.add(x, f.zeros(shape=dims(m=2))),  # adds a dimension: kept
            f.mul(x, zeros), f.add(x, ones),  # not identities: kept
        )

    function = canonical(body, x=f32(n=4))
    x = function.args[0]
    assert function.returns[:4] == [x, x, x, x]
    assert sorted(names(function)) == ["add", "add", "mul", "ones", "zeros", "zeros"]


def folded(function: Function) -> tuple:
    """The single op left must be a constant; its value, shape and dtype attributes."""
    (op,) = function.ops
    assert op.name == "constant" and function.returns == [op.result]
    return op.attributes["value"], op.attributes["shape"], op.attributes["dtype"]


def test_constant_operands_fold_into_a_constant() -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(f.add(f.constant(value=[1.0, 2.0], shape=dims(n=2)), f.constant(value=[3.0, 4.0], shape=dims(n=2))))

    assert folded(canonical(body)) == ((4.0, 6.0), (Dim("n", 2),), F32)


def test_folding_runs_through_chains_and_broadcasts() -> None:
    def body(f: FunctionBuilder) -> None:
        row = f.full(shape=dims(a=2), value=2.5)
        column = f.constant(value=[1.0, -1.0, 0.5], shape=dims(b=3))
        f.ret(f.neg(f.mul(row, column)))

    value, shape, dtype = folded(canonical(body))
    assert value == ((-2.5, 2.5, -1.25), (-2.5, 2.5, -1.25))
    assert shape == (Dim("a", 2), Dim("b", 3)) and dtype == F32


def test_folding_follows_each_ops_dtype_semantics() -> None:
    def body(f: FunctionBuilder) -> None:
        ints = f.constant(value=[7, -7], shape=dims(n=2), dtype="i32")
        twos = f.full(shape=dims(n=2), value=2, dtype="i32")
        f.ret(
            f.div(ints, twos),  # integer division truncates toward zero
            f.cast(f.constant(value=[1.5, -1.5], shape=dims(n=2)), dtype="i32"),
            f.lt(ints, twos),
            f.add(f.ones(shape=dims(n=1), dtype="bf16"), f.full(shape=dims(n=1), value=2.0**-8, dtype="bf16")),
            f.div(f.zeros(shape=()), f.zeros(shape=())),
        )

    function = canonical(body)
    assert names(function) == ["constant"] * 5
    values = [op.attributes["value"] for op in function.ops]
    assert values[:4] == [(3, -3), (1, -1), (False, True), (1.0,)]  # 1 + 2**-8 rounds to 1 in bf16
    assert math.isnan(values[4])
    assert [type(v) for v in (values[0][0], values[2][0], values[3][0])] == [int, bool, float]
    assert [op.result.type for op in function.ops] == [i32(n=2), i32(n=2), bool_(n=2), bf16(n=1), f32()]


def test_folding_stops_at_sixteen_elements() -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(
            f.neg(f.zeros(shape=dims(n=17))),  # operand too big
            f.add(f.ones(shape=dims(a=4)), f.ones(shape=dims(b=5))),  # result too big
            f.neg(f.ones(shape=dims(a=4, b=4))),  # sixteen: folds
        )

    function = canonical(body)
    assert names(function) == ["zeros", "neg", "ones", "ones", "add", "constant"]
    assert function.ops[-1].attributes["value"] == ((-1.0,) * 4,) * 4


def test_ops_with_a_non_constant_operand_do_not_fold() -> None:
    def body(f: FunctionBuilder) -> None:
        f.ret(f.add(f.arg("x"), f.constant(value=1.0)))

    assert names(canonical(body, x=f32())) == ["constant", "add"]


def test_canonicalize_removes_dead_ops() -> None:
    def body(f: FunctionBuilder) -> None:
        f.exp(f.arg("x"))
        f.ret(f.arg("x"))

    assert canonical(body, x=f32(n=2)).ops == []


def test_canonicalize_rewrites_local_functions() -> None:
    mb = ModuleBuilder()
    mb.mesh("m", rows=2)
    with mb.function("local", x=f32(n=4), spmd="m") as g:
        g.ret(g.all_reduce(g.neg(g.neg(g.arg("x"))), axes=["rows"], reduce="sum"))
    module = mb.build()
    Canonicalize().run(module)
    verify_module(module)
    function = module.function("local")
    assert names(function) == ["all_reduce"] and function.ops[0].operands == function.args


def test_canonicalize_keeps_the_numbers() -> None:
    def body(f: FunctionBuilder) -> None:
        x, w = f.arg("x"), f.arg("w")
        h = f.matmul(f.transpose(x, order=["b", "i"]), w)
        scaled = f.mul(f.cast(h, dtype="f32"), f.add(f.constant(value=[0.5, 2.0], shape=dims(o=2)), f.zeros(shape=dims(o=2))))
        f.ret(f.neg(f.neg(f.add(scaled, f.zeros(shape=dims(b=3, o=2))))))

    module = build(body, x=f32(b=3, i=4), w=f32(i=4, o=2))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(a.type.shape).astype(np.float32) for a in module.function("f").args]
    before = evaluate(module.function("f"), inputs)
    function = run(module, Canonicalize())
    assert names(function) == ["einsum", "constant", "mul"]
    np.testing.assert_array_equal(evaluate(function, inputs)[0], before[0])
    x, w = inputs
    np.testing.assert_allclose(before[0], (x @ w) * np.array([0.5, 2.0], np.float32), rtol=1e-6)


def test_rewrites_that_undo_each_other_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def rebuild_exp(rewriter: canonicalize_module.Rewriter, op: Operation):
        return rewriter.create("exp", op.operands, {}, replacing=op)

    monkeypatch.setitem(canonicalize_module.REWRITES, "exp", [rebuild_exp])

    def body(f: FunctionBuilder) -> None:
        f.ret(f.exp(f.arg("x")))

    with pytest.raises(RuntimeError, match="did not reach a fixed point in @f"):
        canonical(body, x=f32(n=2))
