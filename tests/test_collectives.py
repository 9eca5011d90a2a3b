"""Local collectives: type rules, errors, and the mesh simulation checked against
independent numpy constructions on meshes of 1, 2, 2x2 and 2x4 devices.

Expected values are built with numpy's own row-major indexing (`np.ndindex`,
`np.ravel_multi_index`), not with `Mesh.groups` / `Mesh.index_in_group`.
"""
from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import MeshirError
from meshir.dtypes import DTYPES
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType
from meshir.verifier import verify_module

MESHES = {
    "1": (("x", 1),),
    "2": (("x", 2),),
    "2x2": (("x", 2), ("y", 2)),
    "2x4": (("x", 2), ("y", 4)),
}


def mesh_of(key: str) -> Mesh:
    return Mesh("m", tuple(Dim(n, s) for n, s in MESHES[key]))


def axes_choices(key: str) -> list[tuple[str, ...]]:
    """Every ordered selection of the mesh's axes, the empty one included."""
    names = [n for n, _ in MESHES[key]]
    return [p for r in range(len(names) + 1) for p in itertools.permutations(names, r)]


CASES = [(key, axes) for key in MESHES for axes in axes_choices(key)]


def ttype(dtype: str = "f32", **sizes: int) -> TensorType:
    return TensorType(DTYPES[dtype], tuple(Dim(n, s) for n, s in sizes.items()))


def local_view(mesh: Mesh, name: str, types: list[TensorType], **attrs) -> OpView:
    """An OpView of `name` inside a local function on `mesh`, with inferred result types."""
    module = Module(meshes={mesh.name: mesh})
    function = Function("f", [], [], attributes={"spmd": SymbolRef(mesh.name)})
    opdef = lookup(name)
    opdef.check_operand_count(len(types))
    view = OpView(opdef, list(types), opdef.check_attributes(attrs), module, function)
    view.result_types = opdef.infer(view)
    return view


def simulate(mesh: Mesh, name: str, per_device: list[list[np.ndarray]], types: list[TensorType], **attrs) -> list[np.ndarray]:
    view = local_view(mesh, name, types, **attrs)
    out = view.opdef.reference_fn(view, *per_device)
    (result_type,) = view.result_types
    assert len(out) == mesh.size
    for array in out:
        assert array.shape == result_type.shape and array.dtype == result_type.dtype.numpy
    return out


# --- independent group arithmetic -------------------------------------------------

def coords_of(mesh: Mesh, device: int) -> list[int]:
    return list(np.unravel_index(device, mesh.shape))


def members(mesh: Mesh, device: int, axes: tuple[str, ...]) -> list[int]:
    """The devices of `device`'s group, in group order (the first of `axes` major)."""
    names = list(mesh.axis_names)
    sizes = [mesh.shape[names.index(a)] for a in axes]
    out = []
    for pos in np.ndindex(*sizes):
        coords = coords_of(mesh, device)
        for axis, p in zip(axes, pos):
            coords[names.index(axis)] = p
        out.append(int(np.ravel_multi_index(coords, mesh.shape)))
    return out


def block(array: np.ndarray, axis: int, count: int, k: int) -> np.ndarray:
    size = array.shape[axis] // count
    return np.take(array, range(k * size, (k + 1) * size), axis=axis)


def inputs(mesh: Mesh, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Small integers as f32, so that sums in any order are exact."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-5, 6, size=shape).astype(np.float32) for _ in range(mesh.size)]


# --- semantics --------------------------------------------------------------------

@pytest.mark.parametrize("key,axes", CASES)
@pytest.mark.parametrize("reduce,combine", [("sum", np.add), ("max", np.maximum), ("min", np.minimum), ("prod", np.multiply)])
def test_all_reduce(key, axes, reduce, combine):
    mesh = mesh_of(key)
    xs = inputs(mesh, (3, 2))
    out = simulate(mesh, "all_reduce", [xs], [ttype(a=3, b=2)], axes=tuple(map(Name, axes)), reduce=Name(reduce))
    for device in mesh.devices():
        group = members(mesh, device, axes)
        expected = xs[group[0]]
        for other in group[1:]:
            expected = combine(expected, xs[other])
        np.testing.assert_array_equal(out[device], expected)


@pytest.mark.parametrize("key,axes", CASES)
def test_all_gather_concatenates_group_blocks_in_order(key, axes):
    mesh = mesh_of(key)
    xs = inputs(mesh, (2, 3))
    out = simulate(mesh, "all_gather", [xs], [ttype(a=2, b=3)], dim=Name("b"), axes=tuple(map(Name, axes)))
    for device in mesh.devices():
        np.testing.assert_array_equal(out[device], np.concatenate([xs[m] for m in members(mesh, device, axes)], axis=1))


@pytest.mark.parametrize("key,axes", CASES)
def test_reduce_scatter_keeps_own_block_of_the_sum(key, axes):
    mesh = mesh_of(key)
    g = mesh.group_size(axes)
    xs = inputs(mesh, (2 * g, 3))
    out = simulate(mesh, "reduce_scatter", [xs], [ttype(a=2 * g, b=3)], dim=Name("a"), axes=tuple(map(Name, axes)), reduce=Name("sum"))
    for device in mesh.devices():
        group = members(mesh, device, axes)
        total = sum(xs[m] for m in group)
        np.testing.assert_array_equal(out[device], block(total, 0, g, group.index(device)))


@pytest.mark.parametrize("key,axes", CASES)
@pytest.mark.parametrize("split_dim,concat_dim", [("a", "b"), ("b", "a"), ("a", "a")])
def test_all_to_all(key, axes, split_dim, concat_dim):
    mesh = mesh_of(key)
    g = mesh.group_size(axes)
    sizes = {"a": 2 * g, "b": 3 * g}
    xs = inputs(mesh, (sizes["a"], sizes["b"]))
    axis_of = {"a": 0, "b": 1}
    out = simulate(mesh, "all_to_all", [xs], [ttype(**sizes)], split_dim=Name(split_dim), concat_dim=Name(concat_dim), axes=tuple(map(Name, axes)))
    for device in mesh.devices():
        group = members(mesh, device, axes)
        j = group.index(device)
        received = [block(xs[source], axis_of[split_dim], g, j) for source in group]
        np.testing.assert_array_equal(out[device], np.concatenate(received, axis=axis_of[concat_dim]))


@pytest.mark.parametrize("key,axes", CASES)
def test_all_slice_keeps_the_group_position_block(key, axes):
    mesh = mesh_of(key)
    g = mesh.group_size(axes)
    xs = inputs(mesh, (3, 2 * g))
    out = simulate(mesh, "all_slice", [xs], [ttype(a=3, b=2 * g)], dim=Name("b"), axes=tuple(map(Name, axes)))
    for device in mesh.devices():
        np.testing.assert_array_equal(out[device], block(xs[device], 1, g, members(mesh, device, axes).index(device)))


@pytest.mark.parametrize("key", MESHES)
@pytest.mark.parametrize("shift", [-5, -1, 0, 1, 2, 3])
@pytest.mark.parametrize("wrap", [False, True])
def test_collective_permute(key, shift, wrap):
    mesh = mesh_of(key)
    axis = mesh.axis_names[-1]
    size = mesh.axis_size(axis)
    xs = inputs(mesh, (2,))
    out = simulate(mesh, "collective_permute", [xs], [ttype(a=2)], axis=Name(axis), shift=shift, wrap=wrap)
    for device in mesh.devices():
        coords = coords_of(mesh, device)
        source = coords[-1] - shift
        if wrap:
            source %= size
        if 0 <= source < size:
            expected = xs[int(np.ravel_multi_index(coords[:-1] + [source], mesh.shape))]
        else:
            expected = np.zeros(2, np.float32)
        np.testing.assert_array_equal(out[device], expected)


def test_collective_permute_along_the_major_axis_of_2x4():
    mesh = mesh_of("2x4")
    xs = [np.full((1,), d, np.float32) for d in mesh.devices()]
    out = simulate(mesh, "collective_permute", [xs], [ttype(a=1)], axis=Name("x"), shift=1)
    # Row 1 receives row 0 (devices 0..3); row 0 has no source and gets zeros.
    assert [float(a[0]) for a in out] == [0, 0, 0, 0, 0, 1, 2, 3]


@pytest.mark.parametrize("key", MESHES)
def test_axis_index_gives_each_devices_coordinate(key):
    mesh = mesh_of(key)
    for position, axis in enumerate(mesh.axis_names):
        out = simulate(mesh, "axis_index", [], [], axis=Name(axis))
        assert [int(a) for a in out] == [coords_of(mesh, d)[position] for d in mesh.devices()]
        assert all(a.dtype == np.int32 and a.shape == () for a in out)


def test_all_reduce_of_bfloat16_accumulates_in_float32():
    mesh = mesh_of("2x4")
    # 256 + 8 * 1 in bfloat16 steps would stay at 256; float32 accumulation gives 264.
    xs = [np.array([256.0 if d == 0 else 1.0], ml_dtypes.bfloat16) for d in mesh.devices()]
    out = simulate(mesh, "all_reduce", [xs], [ttype("bf16", a=1)], axes=(Name("x"), Name("y")), reduce=Name("sum"))
    assert all(a.dtype == ml_dtypes.bfloat16 and float(a[0]) == 264.0 for a in out)


def test_all_reduce_max_of_booleans_is_any():
    mesh = mesh_of("2")
    xs = [np.array([True, False]), np.array([False, False])]
    out = simulate(mesh, "all_reduce", [xs], [ttype("bool", a=2)], axes=(Name("x"),), reduce=Name("max"))
    assert [a.tolist() for a in out] == [[True, False], [True, False]]


def test_all_reduce_propagates_nan_and_handles_empty_blocks():
    mesh = mesh_of("2")
    xs = [np.array([np.nan, 1.0], np.float32), np.array([2.0, np.inf], np.float32)]
    out = simulate(mesh, "all_reduce", [xs], [ttype(a=2)], axes=(Name("x"),), reduce=Name("max"))
    assert np.isnan(out[0][0]) and out[1][1] == np.inf
    empty = [np.zeros((0, 2), np.float32)] * 2
    assert simulate(mesh, "all_reduce", [empty], [ttype(a=0, b=2)], axes=(Name("x"),), reduce=Name("min"))[0].shape == (0, 2)


def test_results_do_not_alias_between_devices():
    mesh = mesh_of("2")
    out = simulate(mesh, "all_gather", [inputs(mesh, (1,))], [ttype(a=1)], dim=Name("a"), axes=(Name("x"),))
    out[0][0] = 99
    assert out[1][0] != 99


# --- dynamic_slice (local, per device) ----------------------------------------------

@pytest.mark.parametrize("offset,start", [(-3, 0), (0, 0), (2, 2), (4, 4), (5, 4), (100, 4)])
def test_dynamic_slice_clamps_the_offset(offset, start):
    view = local_view(mesh_of("1"), "dynamic_slice", [ttype(a=2, b=7), ttype("i32")], dim=Name("b"), size=3)
    x = np.arange(14, dtype=np.float32).reshape(2, 7)
    out = view.opdef.reference_fn(view, x, np.array(offset, np.int32))
    assert view.result_types == [ttype(a=2, b=3)]
    np.testing.assert_array_equal(out, x[:, start:start + 3])


def test_dynamic_slice_errors():
    mesh = mesh_of("1")
    x = ttype(a=2, b=7)
    with pytest.raises(MeshirError, match=r"dynamic_slice: the offset \(operand 1\) must be an integer scalar such as i32\[\], got f32\[\]"):
        local_view(mesh, "dynamic_slice", [x, ttype("f32")], dim=Name("b"), size=3)
    with pytest.raises(MeshirError, match=r"must be an integer scalar such as i32\[\], got i32\[c=1\]"):
        local_view(mesh, "dynamic_slice", [x, ttype("i32", c=1)], dim=Name("b"), size=3)
    with pytest.raises(MeshirError, match="dynamic_slice: size 8 must be between 0 and the size of dimension 'b', 7"):
        local_view(mesh, "dynamic_slice", [x, ttype("i32")], dim=Name("b"), size=8)
    with pytest.raises(MeshirError, match="dynamic_slice: dimension 'c' is not in the operand f32"):
        local_view(mesh, "dynamic_slice", [x, ttype("i32")], dim=Name("c"), size=1)


# --- type rules and errors ----------------------------------------------------------

def test_result_types():
    mesh = mesh_of("2x4")
    x = ttype(a=8, b=4)
    xy = (Name("x"), Name("y"))
    assert local_view(mesh, "all_reduce", [x], axes=xy, reduce=Name("sum")).result_types == [x]
    assert local_view(mesh, "all_gather", [x], dim=Name("a"), axes=xy).result_types == [ttype(a=64, b=4)]
    assert local_view(mesh, "reduce_scatter", [x], dim=Name("a"), axes=xy, reduce=Name("sum")).result_types == [ttype(a=1, b=4)]
    assert local_view(mesh, "all_to_all", [x], split_dim=Name("a"), concat_dim=Name("b"), axes=(Name("y"),)).result_types == [ttype(a=2, b=16)]
    assert local_view(mesh, "all_to_all", [x], split_dim=Name("a"), concat_dim=Name("a"), axes=xy).result_types == [x]
    assert local_view(mesh, "all_slice", [x], dim=Name("b"), axes=(Name("y"),)).result_types == [ttype(a=8, b=1)]
    assert local_view(mesh, "collective_permute", [x], axis=Name("y"), shift=-1).result_types == [x]
    assert local_view(mesh, "axis_index", [], axis=Name("y")).result_types == [ttype("i32")]


def test_unknown_axis_names_the_axis_and_the_mesh_axes():
    mesh = mesh_of("2x4")
    x = ttype(a=8)
    for name, attrs in [
        ("all_reduce", {"axes": (Name("x"), Name("z")), "reduce": Name("sum")}),
        ("all_gather", {"dim": Name("a"), "axes": (Name("z"),)}),
        ("reduce_scatter", {"dim": Name("a"), "axes": (Name("z"),), "reduce": Name("sum")}),
        ("all_to_all", {"split_dim": Name("a"), "concat_dim": Name("a"), "axes": (Name("z"),)}),
        ("all_slice", {"dim": Name("a"), "axes": (Name("z"),)}),
        ("collective_permute", {"axis": Name("z"), "shift": 1}),
    ]:
        with pytest.raises(MeshirError, match=rf"{name}: 'z' is not an axis of mesh @m \(axes: x, y\)$"):
            local_view(mesh, name, [x], **attrs)
    with pytest.raises(MeshirError, match=r"axis_index: 'z' is not an axis of mesh @m \(axes: x, y\)$"):
        local_view(mesh, "axis_index", [], axis=Name("z"))


def test_axis_given_twice_is_rejected():
    with pytest.raises(MeshirError, match="all_gather attribute 'axes' must be a list of distinct names"):
        local_view(mesh_of("2x2"), "all_gather", [ttype(a=2)], dim=Name("a"), axes=(Name("x"), Name("x")))


def test_missing_dimensions_are_named():
    mesh = mesh_of("2")
    x = ttype(a=4)
    with pytest.raises(MeshirError, match=r"all_gather: dimension 'b' is not in the operand f32\[a=4\] \(dimensions: a\)"):
        local_view(mesh, "all_gather", [x], dim=Name("b"), axes=(Name("x"),))
    with pytest.raises(MeshirError, match="reduce_scatter: dimension 'b' is not in the operand"):
        local_view(mesh, "reduce_scatter", [x], dim=Name("b"), axes=(Name("x"),), reduce=Name("sum"))
    with pytest.raises(MeshirError, match="all_to_all: dimension 'c' is not in the operand"):
        local_view(mesh, "all_to_all", [x], split_dim=Name("a"), concat_dim=Name("c"), axes=(Name("x"),))
    with pytest.raises(MeshirError, match="all_slice: dimension 'b' is not in the operand"):
        local_view(mesh, "all_slice", [x], dim=Name("b"), axes=(Name("x"),))


def test_indivisible_sizes_name_dim_size_and_group():
    mesh = mesh_of("2x4")
    x = ttype(a=6)
    message = r"dimension 'a' of size 6 cannot be cut into 4 blocks, one per device of mesh axes y \(group size 4\)"
    with pytest.raises(MeshirError, match="reduce_scatter: " + message):
        local_view(mesh, "reduce_scatter", [x], dim=Name("a"), axes=(Name("y"),), reduce=Name("sum"))
    with pytest.raises(MeshirError, match="all_to_all: " + message):
        local_view(mesh, "all_to_all", [x], split_dim=Name("a"), concat_dim=Name("a"), axes=(Name("y"),))
    with pytest.raises(MeshirError, match="all_slice: " + message):
        local_view(mesh, "all_slice", [x], dim=Name("a"), axes=(Name("y"),))
    with pytest.raises(MeshirError, match=r"all_slice: dimension 'a' of size 6 cannot be cut into 8 blocks, one per device of mesh axes x, y \(group size 8\)"):
        local_view(mesh, "all_slice", [x], dim=Name("a"), axes=(Name("x"), Name("y")))


def test_reduce_kind_and_dtype():
    mesh = mesh_of("2")
    with pytest.raises(MeshirError, match="all_reduce: operand 0 must have a numeric dtype, got bool"):
        local_view(mesh, "all_reduce", [ttype("bool", a=2)], axes=(Name("x"),), reduce=Name("sum"))
    with pytest.raises(MeshirError, match="reduce_scatter: operand 0 must have a numeric dtype, got bool"):
        local_view(mesh, "reduce_scatter", [ttype("bool", a=2)], dim=Name("a"), axes=(Name("x"),), reduce=Name("prod"))
    with pytest.raises(MeshirError, match="all_reduce attribute 'reduce' must be one of sum, max, min, prod"):
        local_view(mesh, "all_reduce", [ttype(a=2)], axes=(Name("x"),), reduce=Name("mean"))


def test_collectives_need_a_local_function():
    mesh = mesh_of("2")
    opdef = lookup("all_reduce")
    attrs = opdef.check_attributes({"axes": (Name("x"),), "reduce": Name("sum")})
    global_function = Function("g", [], [], attributes={"mesh": SymbolRef("m")})
    view = OpView(opdef, [ttype(a=2)], attrs, Module(meshes={"m": mesh}), global_function)
    with pytest.raises(MeshirError, match=r"all_reduce: needs the mesh of a local function \(attributes \{spmd = @mesh\}\)"):
        opdef.infer(view)


def test_verifier_rejects_collectives_in_global_functions():
    module = Module(meshes={"m": mesh_of("2")})
    x = Value(ttype(a=2), "x")
    op = Operation("all_reduce", [x], {"axes": (Name("x"),), "reduce": Name("sum")}, [ttype(a=2)], result_names=["y"])
    module.functions["g"] = Function("g", [x], [ttype(a=2)], [op], [op.result], attributes={"mesh": SymbolRef("m")})
    with pytest.raises(MeshirError, match="all_reduce is a collective of local programs"):
        verify_module(module)


def test_collectives_are_local_only_and_device_aware():
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute", "all_slice", "axis_index"):
        assert lookup(name).local_only and lookup(name).device_aware and lookup(name).group == "collectives"
    assert lookup("dynamic_slice").local_only and not lookup("dynamic_slice").device_aware
