"""Shape ops: types, reference values, edge cases, errors and splittable dims."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from meshir.attributes import Name
from meshir.diagnostics import MeshirError
from meshir.dtypes import bf16, bool_, f32, i32
from meshir.ir import Function, Module, Operation, Value
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType, tensor_type
from meshir.verifier import verify_function
from tests.opcheck import infer, run

rng = np.random.default_rng(99)


def names(text: str) -> tuple[Name, ...]:
    return tuple(Name(n) for n in text.split())


def shape(**sizes: int) -> tuple[Dim, ...]:
    return tuple(Dim(n, s) for n, s in sizes.items())


def error_of(name: str, types: list[TensorType], **attrs) -> str:
    with pytest.raises(MeshirError) as info:
        infer(name, types, **attrs)
    return info.value.message


def view_of(name: str, types: list[TensorType], **attrs) -> OpView:
    opdef = lookup(name)
    view = OpView(opdef, types, opdef.check_attributes(attrs))
    view.result_types = opdef.infer(view)
    return view


def splittable(name: str, types: list[TensorType], **attrs) -> frozenset[str]:
    return lookup(name).split_dims(view_of(name, types, **attrs))


def random(ttype: TensorType) -> np.ndarray:
    return rng.normal(size=ttype.shape).astype(ttype.dtype.numpy)


# --- rename ---------------------------------------------------------------

def test_rename_changes_only_the_name():
    ttype = tensor_type(f32, a=2, b=3)
    x = random(ttype)
    attrs = {"from": Name("a"), "to": Name("z")}
    (out,) = run("rename", [(x, ttype)], **attrs)
    assert infer("rename", [ttype], **attrs) == [tensor_type(f32, z=2, b=3)]
    np.testing.assert_array_equal(out, x)
    assert splittable("rename", [ttype], **attrs) == {"b"}


def test_rename_errors():
    ttype = tensor_type(f32, a=2, b=3)
    assert error_of("rename", [ttype], **{"from": Name("q"), "to": Name("z")}) == (
        "rename: dimension 'q' is not in the operand f32[a=2, b=3] (dimensions: a, b)")
    assert error_of("rename", [ttype], **{"from": Name("a"), "to": Name("b")}) == (
        "rename: dimension 'b' already exists in f32[a=2, b=3]")


# --- reshape --------------------------------------------------------------

@pytest.mark.parametrize("target", [shape(n=24), shape(p=4, q=6), shape(a=2, q=12), shape(x=1, y=24, z=1)])
def test_reshape_is_row_major(target):
    ttype = tensor_type(f32, a=2, b=3, c=4)
    x = random(ttype)
    (out,) = run("reshape", [(x, ttype)], shape=target)
    flat = [x[i, j, k] for i in range(2) for j in range(3) for k in range(4)]
    np.testing.assert_array_equal(out.ravel(), flat)
    assert infer("reshape", [ttype], shape=target) == [TensorType(f32, target)]


def test_reshape_errors():
    ttype = tensor_type(f32, a=2, b=3)
    assert error_of("reshape", [ttype], shape=shape(a=2, b=4)) == (
        "reshape: operand f32[a=2, b=3] has 6 elements but shape [a=2, b=4] has 8")
    assert error_of("reshape", [ttype], shape=(Dim("a", 2), Dim("a", 3))) == (
        "reshape: dimension 'a' appears twice in shape [a=2, a=3]")


@pytest.mark.parametrize("target, kept", [
    (shape(a=2, m=12, d=5), {"a", "d"}),      # merge in the middle
    (shape(a=2, b=3, c=4, d=5), {"a", "b", "c", "d"}),
    (shape(a=2, c=3, b=4, d=5), {"a", "d"}),  # b and c trade sizes: neither survives
    (shape(n=120), set()),
    (shape(b=2, a=3, c=4, d=5), {"c", "d"}),  # same names, other sizes: not kept
])
def test_reshape_keeps_a_common_prefix_and_suffix_split(target, kept):
    assert splittable("reshape", [tensor_type(f32, a=2, b=3, c=4, d=5)], shape=target) == kept


# --- transpose ------------------------------------------------------------

@pytest.mark.parametrize("order", ["a b c", "c a b", "b c a", "c b a"])
def test_transpose_reorders(order):
    ttype = tensor_type(f32, a=2, b=3, c=4)
    x = random(ttype)
    (out,) = run("transpose", [(x, ttype)], order=names(order))
    letters = order.replace(" ", "")
    np.testing.assert_array_equal(out, np.einsum(f"abc->{letters}", x))
    assert infer("transpose", [ttype], order=names(order))[0].names == tuple(order.split())


def test_transpose_errors():
    ttype = tensor_type(f32, a=2, b=3, c=4)
    assert error_of("transpose", [ttype], order=names("a b")) == (
        "transpose: order [a, b] is not a permutation of the operand's dimensions [a, b, c] (missing c)")
    assert error_of("transpose", [ttype], order=names("a b c d e")) == (
        "transpose: order [a, b, c, d, e] is not a permutation of the operand's dimensions [a, b, c] "
        "(not in the operand d, e)")
    assert "(missing b; not in the operand z)" in error_of("transpose", [ttype], order=names("c a z"))


# --- broadcast ------------------------------------------------------------

def test_broadcast_repeats_along_new_dims_in_any_order():
    ttype = tensor_type(f32, a=2, b=3)
    x = random(ttype)
    (out,) = run("broadcast", [(x, ttype)], shape=shape(b=3, c=4, a=2))
    assert out.shape == (3, 4, 2)
    for b in range(3):
        for c in range(4):
            for a in range(2):
                assert out[b, c, a] == x[a, b]
    out[0, 0, 0] = 7.0  # the result is an ordinary array, not a read-only view


def test_broadcast_of_a_scalar():
    (out,) = run("broadcast", [(np.float32(2.5), tensor_type(f32))], shape=shape(k=3))
    assert out.tolist() == [2.5, 2.5, 2.5]


def test_broadcast_errors():
    ttype = tensor_type(f32, a=2, b=3)
    assert error_of("broadcast", [ttype], shape=shape(a=2, c=3)) == (
        "broadcast: shape [a=2, c=3] lacks the operand's dimension b=3")
    assert error_of("broadcast", [ttype], shape=shape(b=3, a=5)) == (
        "broadcast: dimension 'a' has size 2 in the operand but size 5 in shape [b=3, a=5]")
    assert splittable("broadcast", [ttype], shape=shape(a=2, b=3, c=4)) == {"a", "b", "c"}


# --- slice ----------------------------------------------------------------

@pytest.mark.parametrize("begin, size", [(0, 5), (1, 3), (4, 1), (2, 0), (5, 0)])
def test_slice_keeps_the_name(begin, size):
    ttype = tensor_type(f32, a=2, b=5)
    x = random(ttype)
    (out,) = run("slice", [(x, ttype)], dim=Name("b"), begin=begin, size=size)
    np.testing.assert_array_equal(out, x[:, begin:begin + size])
    assert infer("slice", [ttype], dim=Name("b"), begin=begin, size=size) == [tensor_type(f32, a=2, b=size)]


@pytest.mark.parametrize("begin, size, message", [
    (-1, 2, "slice: begin must be >= 0, got -1"),
    (1, -2, "slice: size must be >= 0, got -2"),
    (3, 3, "slice: begin = 3 plus size = 3 is 6, past the end of dimension 'b' of size 5"),
])
def test_slice_errors(begin, size, message):
    assert error_of("slice", [tensor_type(f32, a=2, b=5)], dim=Name("b"), begin=begin, size=size) == message


def test_slice_split_dims():
    assert splittable("slice", [tensor_type(f32, a=2, b=5)], dim=Name("b"), begin=0, size=1) == {"a"}


# --- concat and split -----------------------------------------------------

def test_concat_joins_along_a_middle_dim():
    types = [tensor_type(f32, a=2, b=n, c=3) for n in (1, 4, 0, 2)]
    arrays = [random(t) for t in types]
    (out,) = run("concat", list(zip(arrays, types)), dim=Name("b"))
    assert out.shape == (2, 7, 3)
    np.testing.assert_array_equal(out[:, 0], arrays[0][:, 0])
    np.testing.assert_array_equal(out[:, 1:5], arrays[1])
    np.testing.assert_array_equal(out[:, 5:7], arrays[3])


def test_concat_of_one_operand_is_identity():
    ttype = tensor_type(i32, a=3)
    (out,) = run("concat", [(np.array([1, 2, 3]), ttype)], dim=Name("a"))
    assert out.tolist() == [1, 2, 3]


def test_concat_exempts_its_dim_from_the_shared_size_check():
    types = [tensor_type(f32, a=2, b=1), tensor_type(f32, a=2, b=4)]
    view = view_of("concat", types, dim=Name("b"))
    assert lookup("concat").size_exempt(view) == {"b"}
    assert lookup("concat").split_dims(view) == {"a"}


def verify_concat(result: TensorType, *types: TensorType) -> None:
    args = [Value(t, f"x{i}") for i, t in enumerate(types)]
    op = Operation("concat", args, {"dim": Name("b")}, [None], result_names=["y"])
    verify_function(Module(), Function("f", args, [result], ops=[op], returns=[op.result]))


def test_the_verifier_lets_concat_sizes_differ_only_along_dim():
    verify_concat(tensor_type(f32, a=2, b=5), tensor_type(f32, a=2, b=1), tensor_type(f32, a=2, b=4))
    with pytest.raises(MeshirError, match="concat: dimension 'a' has size 2 in operand 0 but size 3 in operand 1"):
        verify_concat(tensor_type(f32, a=2, b=5), tensor_type(f32, a=2, b=1), tensor_type(f32, a=3, b=4))


def test_concat_errors():
    base = tensor_type(f32, a=2, b=3)
    assert error_of("concat", [base, tensor_type(f32, b=3, a=2)], dim=Name("a")) == (
        "concat: operand 1 has dimensions [b, a] but operand 0 has [a, b]; transpose it first")
    assert error_of("concat", [base, tensor_type(i32, a=2, b=3)], dim=Name("a")) == (
        "concat: operand 1 has dtype i32 but operand 0 has f32; cast one of them")
    assert error_of("concat", [base, base, tensor_type(f32, a=2, b=4)], dim=Name("a")) == (
        "concat: dimension 'b' has size 3 in operand 0 but size 4 in operand 2")
    assert "dimension 'z' is not in the operand" in error_of("concat", [base], dim=Name("z"))
    assert error_of("concat", [], dim=Name("a")) == "concat takes at least 1 operand, got 0"


@pytest.mark.parametrize("sizes", [(5,), (2, 3), (0, 5, 0), (1, 1, 1, 1, 1)])
def test_split_cuts_consecutive_pieces(sizes):
    ttype = tensor_type(f32, b=5, a=2)
    x = random(ttype)
    outs = run("split", [(x, ttype)], dim=Name("b"), sizes=sizes)
    assert infer("split", [ttype], dim=Name("b"), sizes=sizes) == [tensor_type(f32, b=s, a=2) for s in sizes]
    begin = 0
    for out, size in zip(outs, sizes):
        np.testing.assert_array_equal(out, x[begin:begin + size])
        begin += size


def test_split_errors():
    ttype = tensor_type(f32, a=2, b=5)
    assert error_of("split", [ttype], dim=Name("b"), sizes=(2, 2)) == (
        "split: sizes [2, 2] sum to 4 but dimension 'b' has size 5")
    assert error_of("split", [ttype], dim=Name("b"), sizes=(6, -1)) == "split: sizes must be >= 0, got [6, -1]"
    assert error_of("split", [ttype], dim=Name("b"), sizes=()) == "split: sizes must list at least one size"
    assert splittable("split", [ttype], dim=Name("b"), sizes=(5,)) == {"a"}


# --- pad ------------------------------------------------------------------

@pytest.mark.parametrize("low, high", [(0, 0), (2, 1), (0, 3)])
def test_pad_fills_with_value(low, high):
    ttype = tensor_type(f32, a=2, b=3)
    x = random(ttype)
    (out,) = run("pad", [(x, ttype)], dim=Name("a"), low=low, high=high, value=-1.5)
    expected = np.full((low + 2 + high, 3), -1.5, np.float32)
    expected[low:low + 2] = x
    np.testing.assert_array_equal(out, expected)


def test_pad_value_is_cast_to_the_dtype_and_defaults_to_zero():
    (ints,) = run("pad", [(np.array([5, 6]), tensor_type(i32, a=2))], dim=Name("a"), low=1, high=1, value=2.7)
    assert ints.tolist() == [2, 5, 6, 2]
    (flags,) = run("pad", [(np.array([False]), tensor_type(bool_, a=1))], dim=Name("a"), low=0, high=2, value=3.0)
    assert flags.tolist() == [False, True, True]
    (zeros,) = run("pad", [(np.ones(1, ml_dtypes.bfloat16), tensor_type(bf16, a=1))], dim=Name("a"), low=1, high=0)
    assert zeros.dtype == ml_dtypes.bfloat16 and zeros.tolist() == [0.0, 1.0]


def test_pad_errors():
    ttype = tensor_type(f32, a=2)
    assert error_of("pad", [ttype], dim=Name("a"), low=-1, high=0) == "pad: low must be >= 0, got -1"
    assert error_of("pad", [ttype], dim=Name("a"), low=0, high=-3) == "pad: high must be >= 0, got -3"
    assert "dimension 'b' is not in the operand" in error_of("pad", [ttype], dim=Name("b"), low=0, high=0)


# --- stack and unstack ----------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack_inserts_a_new_dim_at_axis(axis):
    ttype = tensor_type(f32, a=2, b=3)
    arrays = [random(ttype) for _ in range(4)]
    (out,) = run("stack", [(x, ttype) for x in arrays], dim=Name("s"), axis=axis)
    (result,) = infer("stack", [ttype] * 4, dim=Name("s"), axis=axis)
    assert result.names[axis] == "s" and result.size_of("s") == 4
    for i, x in enumerate(arrays):
        np.testing.assert_array_equal(np.moveaxis(out, axis, 0)[i], x)


def test_stack_errors():
    ttype = tensor_type(f32, a=2, b=3)
    assert error_of("stack", [ttype, tensor_type(f32, a=2, b=4)], dim=Name("s")) == (
        "stack: operand 1 has type f32[a=2, b=4] but operand 0 has f32[a=2, b=3]; stacked operands share one type")
    assert error_of("stack", [ttype], dim=Name("b")) == "stack: dimension 'b' already exists in f32[a=2, b=3]"
    assert error_of("stack", [ttype], dim=Name("s"), axis=3) == (
        "stack: axis = 3 is out of range for operands of rank 2 (need 0 <= axis <= 2)")
    assert "axis = -1" in error_of("stack", [ttype], dim=Name("s"), axis=-1)
    assert splittable("stack", [ttype, ttype], dim=Name("s")) == {"a", "b"}


def test_unstack_gives_one_result_per_element():
    ttype = tensor_type(f32, a=2, s=3, b=4)
    x = random(ttype)
    outs = run("unstack", [(x, ttype)], dim=Name("s"))
    assert infer("unstack", [ttype], dim=Name("s")) == [tensor_type(f32, a=2, b=4)] * 3
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, x[:, i, :])
    assert run("unstack", [(np.zeros((0, 2)), tensor_type(f32, s=0, a=2))], dim=Name("s")) == []
    assert "dimension 'q' is not in the operand" in error_of("unstack", [ttype], dim=Name("q"))
    assert splittable("unstack", [ttype], dim=Name("s")) == {"a", "b"}


# --- shift ----------------------------------------------------------------

@pytest.mark.parametrize("offset", range(-7, 8))
@pytest.mark.parametrize("wrap", [False, True])
def test_shift_moves_by_offset(offset, wrap):
    ttype = tensor_type(i32, a=2, b=5)
    x = rng.integers(1, 100, ttype.shape)
    (out,) = run("shift", [(x, ttype)], dim=Name("b"), offset=offset, wrap=wrap)
    for i in range(5):
        source = i - offset
        if wrap:
            np.testing.assert_array_equal(out[:, i], x[:, source % 5])
        elif 0 <= source < 5:
            np.testing.assert_array_equal(out[:, i], x[:, source])
        else:
            assert out[:, i].tolist() == [0, 0]


def test_shift_of_booleans_fills_false_and_empty_dims_work():
    (out,) = run("shift", [(np.array([True, True, True]), tensor_type(bool_, a=3))], dim=Name("a"), offset=1)
    assert out.tolist() == [False, True, True]
    for wrap in (False, True):
        (empty,) = run("shift", [(np.zeros(0), tensor_type(f32, a=0))], dim=Name("a"), offset=2, wrap=wrap)
        assert empty.shape == (0,)


def test_shift_errors_and_split_dims():
    ttype = tensor_type(f32, a=2, b=5)
    assert error_of("shift", [ttype], dim=Name("c"), offset=1) == (
        "shift: dimension 'c' is not in the operand f32[a=2, b=5] (dimensions: a, b)")
    assert error_of("shift", [ttype], dim=Name("a")) == "shift needs attribute 'offset' (an integer)"
    assert splittable("shift", [ttype], dim=Name("b"), offset=1) == {"a"}
