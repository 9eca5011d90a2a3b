"""State ops (read, assign, assign_add, stop_gradient), constants (constant, zeros,
ones, full) and mesh ops (reshard, transfer): type rules, errors and references."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import MeshirError
from meshir.dtypes import DTYPES
from meshir.ir import Function, Module, Variable
from meshir.mesh import LayoutRules, Mesh
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType
from tests.opcheck import infer, run


def ttype(dtype: str = "f32", **sizes: int) -> TensorType:
    return TensorType(DTYPES[dtype], tuple(Dim(n, s) for n, s in sizes.items()))


def shape(**sizes: int) -> tuple[Dim, ...]:
    return tuple(Dim(n, s) for n, s in sizes.items())


W = ttype(a=4, b=6)


def module_with(**attributes) -> tuple[Module, Function]:
    """A module with meshes @m <rows=2, cols=3> and @n <d=4>, variables @w (f32[a=4, b=6])
    and @flag (bool[a=4]), and one function with `attributes`."""
    module = Module(
        meshes={"m": Mesh("m", shape(rows=2, cols=3)), "n": Mesh("n", shape(d=4))},
        variables={"w": Variable("w", W, "zeros"), "flag": Variable("flag", ttype("bool", a=4), "zeros")},
    )
    function = Function("f", [], [], attributes=attributes)
    module.functions["f"] = function
    return module, function


GLOBAL = {"mesh": SymbolRef("m")}
LOCAL = {"spmd": SymbolRef("m")}


def view_in(attributes: dict, name: str, types: list[TensorType], state=None, **attrs) -> OpView:
    """An OpView of `name` in the test module's function, with inferred result types."""
    module, function = module_with(**attributes)
    opdef = lookup(name)
    opdef.check_operand_count(len(types))
    view = OpView(opdef, list(types), opdef.check_attributes(attrs), module, function, state=state)
    view.result_types = opdef.infer(view)
    return view


# --- state ------------------------------------------------------------------------

def test_read_has_the_variables_type_and_returns_a_copy():
    value = np.arange(24, dtype=np.float32).reshape(4, 6)
    state = {"w": value}
    view = view_in(GLOBAL, "read", [], state, var=SymbolRef("w"))
    assert view.result_types == [W]
    out = view.opdef.reference_fn(view)
    np.testing.assert_array_equal(out, np.arange(24).reshape(4, 6))
    out[0, 0] = 100
    assert state["w"][0, 0] == 0


def test_assign_replaces_and_assign_add_accumulates():
    state = {"w": np.ones((4, 6), np.float32)}
    x = np.full((4, 6), 2.5, np.float32)
    view = view_in(GLOBAL, "assign_add", [W], state, var=SymbolRef("w"))
    assert view.result_types == []
    assert view.opdef.reference_fn(view, x) == ()
    np.testing.assert_array_equal(state["w"], np.full((4, 6), 3.5))
    view = view_in(GLOBAL, "assign", [W], state, var=SymbolRef("w"))
    assert view.opdef.reference_fn(view, x) == ()
    x[0, 0] = -1  # the stored value does not alias the operand
    np.testing.assert_array_equal(state["w"], np.full((4, 6), 2.5))
    assert state["w"].dtype == np.float32


def test_assign_add_of_bfloat16_rounds_once():
    bf = TensorType(DTYPES["bf16"], shape(a=1))
    module, function = module_with(**GLOBAL)
    module.variables["h"] = Variable("h", bf, "zeros")
    state = {"h": np.array([256], ml_dtypes.bfloat16)}
    opdef = lookup("assign_add")
    view = OpView(opdef, [bf], {"var": SymbolRef("h")}, module, function, [], state)
    opdef.reference_fn(view, np.array([1.0], ml_dtypes.bfloat16))
    assert state["h"].dtype == ml_dtypes.bfloat16 and float(state["h"][0]) == 256.0  # 257 rounds to even
    opdef.reference_fn(view, np.array([3.0], ml_dtypes.bfloat16))
    assert float(state["h"][0]) == 260.0


def test_assign_type_mismatch_names_both_types():
    for name in ("assign", "assign_add"):
        with pytest.raises(MeshirError, match=rf"{name}: the value is f32\[a=4, b=5\] but variable @w is f32\[a=4, b=6\]"):
            view_in(GLOBAL, name, [ttype(a=4, b=5)], var=SymbolRef("w"))
    with pytest.raises(MeshirError, match=r"assign: the value is f64\[a=4, b=6\] but variable @w is f32\[a=4, b=6\]"):
        view_in(GLOBAL, "assign", [ttype("f64", a=4, b=6)], var=SymbolRef("w"))
    with pytest.raises(MeshirError, match=r"assign: the value is f32\[b=6, a=4\] but variable @w is f32\[a=4, b=6\]"):
        view_in(GLOBAL, "assign", [ttype(b=6, a=4)], var=SymbolRef("w"))


def test_assign_add_needs_a_numeric_variable():
    assert view_in(GLOBAL, "assign", [ttype("bool", a=4)], var=SymbolRef("flag")).result_types == []
    with pytest.raises(MeshirError, match="assign_add: operand 0 must have a numeric dtype, got bool"):
        view_in(GLOBAL, "assign_add", [ttype("bool", a=4)], var=SymbolRef("flag"))


def test_state_ops_need_a_declared_variable():
    with pytest.raises(MeshirError, match=r"read: unknown variable @nope; declare it with `var @nope : TYPE = INITIALIZER`"):
        view_in(GLOBAL, "read", [], var=SymbolRef("nope"))


def test_local_read_with_a_layout_sees_one_devices_slice():
    rules = LayoutRules.of({"a": "rows", "b": "cols"})
    assert view_in(LOCAL, "read", [], var=SymbolRef("w"), layout=rules).result_types == [ttype(a=2, b=2)]
    assert view_in(LOCAL, "read", [], var=SymbolRef("w")).result_types == [W]
    both = LayoutRules.of({"b": ("rows", "cols")})
    assert view_in(LOCAL, "assign", [ttype(a=4, b=1)], var=SymbolRef("w"), layout=both).result_types == []
    with pytest.raises(MeshirError, match=r"assign: the value is f32\[a=4, b=6\] but each device's slice of variable @w is f32\[a=2, b=6\]"):
        view_in(LOCAL, "assign", [W], var=SymbolRef("w"), layout=LayoutRules.of({"a": "rows"}))


def test_storage_layout_errors():
    with pytest.raises(MeshirError, match=r"read: 'layout' gives a variable's storage layout in a local function .* in a global function pin a layout with reshard"):
        view_in(GLOBAL, "read", [], var=SymbolRef("w"), layout=LayoutRules.of({"a": "rows"}))
    with pytest.raises(MeshirError, match=r"read: layout maps dimension 'a' to axis 'd', which mesh @m does not have \(axes: rows, cols\)"):
        view_in(LOCAL, "read", [], var=SymbolRef("w"), layout=LayoutRules.of({"a": "d"}))
    with pytest.raises(MeshirError, match="read: dimension 'a' of size 4 cannot be split over mesh axis cols of size 3"):
        view_in(LOCAL, "read", [], var=SymbolRef("w"), layout=LayoutRules.of({"a": "cols"}))


def test_stop_gradient_is_the_identity():
    x = np.array([[1.0, -2.0]], np.float32)
    (out,) = run("stop_gradient", [(x, ttype(a=1, b=2))])
    np.testing.assert_array_equal(out, x)
    assert infer("stop_gradient", [ttype("i32", c=3)]) == [ttype("i32", c=3)]


# --- constants --------------------------------------------------------------------

def test_constant_scalar_is_a_splat():
    (out,) = run("constant", [], value=1.5, shape=shape(a=2, b=3))
    np.testing.assert_array_equal(out, np.full((2, 3), 1.5, np.float32))
    (out,) = run("constant", [], value=7)
    assert out.shape == () and out.dtype == np.float32 and out == 7


def test_constant_nested_list_matches_the_shape():
    (out,) = run("constant", [], value=((1, 2, 3), (4, 5, 6)), shape=shape(a=2, b=3), dtype=DTYPES["i32"])
    np.testing.assert_array_equal(out, np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    (out,) = run("constant", [], value=(True, 0, 1.0), shape=shape(a=3), dtype=DTYPES["bool"])
    assert out.tolist() == [True, False, True]


def test_constant_keeps_large_i64_values_exact():
    big = 2**62 + 1
    (out,) = run("constant", [], value=(big, -big), shape=shape(a=2), dtype=DTYPES["i64"])
    assert out.tolist() == [big, -big]


def test_constant_with_empty_dimensions():
    (out,) = run("constant", [], value=((), ()), shape=shape(a=2, b=0))
    assert out.shape == (2, 0)
    (out,) = run("constant", [], value=(), shape=shape(a=0, b=3), dtype=DTYPES["u8"])
    assert out.shape == (0, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f64", "i8", "u32", "bool"])
def test_zeros_ones_full_in_every_dtype(dtype):
    numpy_dtype = DTYPES[dtype].numpy
    (z,) = run("zeros", [], shape=shape(a=2, b=1), dtype=DTYPES[dtype])
    (o,) = run("ones", [], shape=shape(a=2, b=1), dtype=DTYPES[dtype])
    (f,) = run("full", [], shape=shape(a=2, b=1), value=1.0, dtype=DTYPES[dtype])
    np.testing.assert_array_equal(z, np.zeros((2, 1), numpy_dtype))
    np.testing.assert_array_equal(o, np.ones((2, 1), numpy_dtype))
    np.testing.assert_array_equal(f, np.ones((2, 1), numpy_dtype))


def test_full_default_dtype_and_special_values():
    (out,) = run("full", [], shape=shape(a=3), value=float("-inf"))
    assert out.dtype == np.float32 and np.all(out == -np.inf)
    (out,) = run("full", [], shape=shape(a=1), value=float("nan"), dtype=DTYPES["bf16"])
    assert np.isnan(out.astype(np.float32)).all()
    (out,) = run("full", [], shape=shape(a=2), value=-3, dtype=DTYPES["i8"])
    assert out.tolist() == [-3, -3]


def test_constant_nesting_errors_name_the_entry_and_dimension():
    with pytest.raises(MeshirError, match=r"constant: value has 2 entries, but dimension 'a' of shape \[a=3, b=2\] has size 3"):
        infer("constant", [], value=((1, 2), (3, 4)), shape=shape(a=3, b=2))
    with pytest.raises(MeshirError, match=r"constant: value\[1\] has 1 entries, but dimension 'b' of shape \[a=2, b=2\] has size 2"):
        infer("constant", [], value=((1, 2), (3,)), shape=shape(a=2, b=2))
    with pytest.raises(MeshirError, match=r"constant: value\[0\] is a single number, but dimension 'b' of shape \[a=2, b=2\] needs a list of 2 there"):
        infer("constant", [], value=(1, (3, 4)), shape=shape(a=2, b=2))
    with pytest.raises(MeshirError, match=r"constant: value\[1\]\[0\] is a list, but shape \[a=2, b=1\] has only 2 dimensions, so the value nests too deep"):
        infer("constant", [], value=((1,), ((2,),)), shape=shape(a=2, b=1))
    with pytest.raises(MeshirError, match=r"constant: value is a list but the shape is \[\] \(a scalar\)"):
        infer("constant", [], value=(1, 2))


def test_values_must_fit_the_dtype():
    with pytest.raises(MeshirError, match="constant: value 2.5 is not a whole number, so dtype i32 cannot hold it"):
        infer("constant", [], value=(1, 2.5), shape=shape(a=2), dtype=DTYPES["i32"])
    with pytest.raises(MeshirError, match=r"constant: value 256 is outside the range of u8 \[0, 255\]"):
        infer("constant", [], value=256, shape=shape(a=2), dtype=DTYPES["u8"])
    with pytest.raises(MeshirError, match=r"constant: value 2 is not a boolean \(use true, false, 1 or 0\) for dtype bool"):
        infer("constant", [], value=2, dtype=DTYPES["bool"])
    with pytest.raises(MeshirError, match="full: value inf is not a whole number, so dtype i64 cannot hold it"):
        infer("full", [], shape=shape(a=1), value=float("inf"), dtype=DTYPES["i64"])
    with pytest.raises(MeshirError, match=r"full: value 70000.0 overflows f16 \(largest finite value 65504"):
        infer("full", [], shape=shape(a=1), value=70000.0, dtype=DTYPES["f16"])
    (out,) = run("full", [], shape=shape(a=1), value=65519.0, dtype=DTYPES["f16"])  # rounds down to the max
    assert out[0] == 65504


def test_constant_shapes_must_be_valid():
    with pytest.raises(MeshirError, match=r"zeros: dimension 'a' appears twice in shape \[a=1, a=2\]"):
        infer("zeros", [], shape=(Dim("a", 1), Dim("a", 2)))
    with pytest.raises(MeshirError, match="ones needs attribute 'shape'"):
        infer("ones", [])
    assert infer("ones", [], shape=shape(a=2), dtype=DTYPES["i32"]) == [ttype("i32", a=2)]


# --- mesh ops ---------------------------------------------------------------------

def test_reshard_and_transfer_are_the_identity():
    x = ttype(a=4, b=6)
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = view_in(GLOBAL, "reshard", [x], layout=LayoutRules.of({"b": "cols", "a": "rows"}))
    assert view.result_types == [x]
    np.testing.assert_array_equal(view.opdef.reference_fn(view, array), np.arange(24).reshape(4, 6))
    view = view_in(GLOBAL, "transfer", [x], to=SymbolRef("n"), layout=LayoutRules.of({"a": "d"}))
    assert view.result_types == [x]
    np.testing.assert_array_equal(view.opdef.reference_fn(view, array), np.arange(24).reshape(4, 6))
    assert view_in({}, "transfer", [x], to=SymbolRef("m")).result_types == [x]


def test_reshard_over_two_axes():
    view = view_in(GLOBAL, "reshard", [ttype(a=12)], layout=LayoutRules.of({"a": ("rows", "cols")}))
    assert view.result_types == [ttype(a=12)]


def test_reshard_errors():
    x = ttype(a=4, b=6)
    with pytest.raises(MeshirError, match="reshard: the function has no mesh; add `mesh = @name` to its attributes"):
        view_in({}, "reshard", [x], layout=LayoutRules.of({"a": "rows"}))
    with pytest.raises(MeshirError, match=r"reshard: layout maps dimension 'a' to axis 'd', which mesh @m does not have \(axes: rows, cols\)"):
        view_in(GLOBAL, "reshard", [x], layout=LayoutRules.of({"a": "d"}))
    with pytest.raises(MeshirError, match=r"reshard: layout names dimension 'c', which f32\[a=4, b=6\] does not have \(dimensions: a, b\)"):
        view_in(GLOBAL, "reshard", [x], layout=LayoutRules.of({"c": "rows"}))
    with pytest.raises(MeshirError, match="reshard: dimension 'a' of size 4 cannot be split over mesh axis cols of size 3: 3 does not divide 4"):
        view_in(GLOBAL, "reshard", [x], layout=LayoutRules.of({"a": "cols"}))
    with pytest.raises(MeshirError, match="reshard: dimension 'b' of size 3 cannot be split over mesh axis rows/cols of size 6: 6 does not divide 3"):
        view_in(GLOBAL, "reshard", [ttype(b=3)], layout=LayoutRules.of({"b": ("rows", "cols")}))
    with pytest.raises(MeshirError, match="reshard: mesh axis 'rows' splits both 'a' and 'b'; an axis can split only one dimension of a value"):
        view_in(GLOBAL, "reshard", [x], layout=LayoutRules.of({"a": "rows", "b": "rows"}))
    with pytest.raises(MeshirError, match="reshard is an op of global programs; the spmd pass lowers it to collectives"):
        view_in(LOCAL, "reshard", [x], layout=LayoutRules.of({"a": "rows"}))


def test_transfer_errors():
    x = ttype(a=4, b=6)
    with pytest.raises(MeshirError, match=r"transfer: @q is not a mesh of the module \(meshes: @m, @n\)"):
        view_in(GLOBAL, "transfer", [x], to=SymbolRef("q"))
    # `rows` is an axis of the source mesh @m but not of the target @n.
    with pytest.raises(MeshirError, match=r"transfer: layout maps dimension 'a' to axis 'rows', which mesh @n does not have \(axes: d\)"):
        view_in(GLOBAL, "transfer", [x], to=SymbolRef("n"), layout=LayoutRules.of({"a": "rows"}))
    with pytest.raises(MeshirError, match="transfer: dimension 'b' of size 6 cannot be split over mesh axis d of size 4"):
        view_in(GLOBAL, "transfer", [x], to=SymbolRef("n"), layout=LayoutRules.of({"b": "d"}))
    with pytest.raises(MeshirError, match="transfer attribute 'to' must be a symbol"):
        view_in(GLOBAL, "transfer", [x], to=Name("n"))
    with pytest.raises(MeshirError, match="transfer is an op of global programs"):
        view_in(LOCAL, "transfer", [x], to=SymbolRef("n"))
