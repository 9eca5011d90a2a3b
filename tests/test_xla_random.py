"""The JAX port of meshir's counter-based generator, bit for bit against
meshir/random.py; the global indices of a device's block; random ops in local
programs drawing their slice of the global value; variable initializers; and
device setup."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from meshir import random as reference
from meshir.attributes import SymbolRef
from meshir.backends.xla import devices, jax_mesh, setup_cpu_devices, x64
from meshir.backends.xla import random as xrandom
from meshir.backends.xla.initializers import initial_values
from meshir.backends.xla.rules_nn import RULES as NN_RULES
from meshir.diagnostics import MeshirError
from meshir.frontends.builder import ModuleBuilder, bf16, f32, f64, i32
from meshir.initializers import INITIALIZERS
from meshir.interpreter import shard
from meshir.ir import Function, Module
from meshir.mesh import LayoutRules, Mesh
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType

SEEDS = [0, 12345, 2**32 + 5, 2**64 - 1]
STEPS = [0, 1, -1, 2**31 - 1, -(2**31)]
STREAMS = [0, 7]
RATES = [0.0, 1 / 3, 0.999]
INDEX = np.concatenate([np.arange(1000, dtype=np.uint32), np.uint32(2**32 - 1) - np.arange(100, dtype=np.uint32)])


def draws(step: jax.Array, index: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for seed in SEEDS:
        for stream in STREAMS:
            out[f"bits {seed} {stream}"] = xrandom.random_bits(seed, step, stream, index)
            out[f"uniform {seed} {stream}"] = xrandom.uniform(seed, step, stream, index)
            out[f"normal {seed} {stream}"] = xrandom.normal(seed, step, stream, index)
        for rate in RATES:
            out[f"keep {seed} {rate}"] = xrandom.keep_mask(seed, step, 3, index, rate)
    return out


def expected(kind: str, seed: int, step: int, arg: str) -> np.ndarray:
    if kind == "keep":
        return reference.keep_mask(seed, np.int32(step), 3, INDEX, float(arg))
    return getattr(reference, {"bits": "random_bits"}.get(kind, kind))(seed, np.int32(step), int(arg), INDEX)


def test_generator_is_bit_exact():
    compiled = jax.jit(draws)
    for step in STEPS:
        got = compiled(np.int32(step), INDEX)
        for key, value in got.items():
            kind, seed, arg = key.split()
            want = expected(kind, int(seed), step, arg)
            if kind == "normal":
                # Box-Muller's log, sqrt and cos agree to float32 rounding, not bit for bit.
                np.testing.assert_allclose(np.asarray(value), want, rtol=2e-6, atol=2e-6, err_msg=key)
            else:
                np.testing.assert_array_equal(np.asarray(value), want, err_msg=f"{key} step {step}")


def test_affine_rounds_the_product_like_numpy():
    rng = np.random.default_rng(0)
    draws32 = np.concatenate([(rng.integers(0, 2**24, 5000) * 2.0**-24), rng.normal(size=5000)]).astype(np.float32)
    cases = [(-2.0, 5.0), (0.1, 0.6), (1e-3, 3.7), (-7.5, 2.0**-20)]

    @jax.jit
    def affine(x32, x64_):
        return [xrandom.affine(np.float32(o), np.float32(s), x32) for o, s in cases] + \
               [xrandom.affine(o, s, x64_) for o, s in cases]

    with x64():
        got = affine(draws32, draws32.astype(np.float64))
    for (offset, scale), value in zip(cases, got[: len(cases)]):
        np.testing.assert_array_equal(np.asarray(value), np.float32(offset) + np.float32(scale) * draws32)
    for (offset, scale), value in zip(cases, got[len(cases):]):
        np.testing.assert_array_equal(np.asarray(value), offset + scale * draws32.astype(np.float64))


MESH = Mesh("m", (Dim("x", 2), Dim("y", 4)))
LAYOUTS = [{}, {"a": "x"}, {"b": "y", "a": "x"}, {"a": ("y", "x")}, {"b": ("x", "y")}, {"a": "y", "c": "x"}]
GLOBAL = TensorType(f32.dtype, (Dim("a", 8), Dim("b", 8), Dim("c", 2)))


def local_view(name: str, layout: dict, **attrs) -> OpView:
    """A random op inside a local function on MESH whose `layout` attribute gives its
    result's layout: the hook the spmd pass fills in."""
    module = Module(meshes={"m": MESH})
    function = Function("f", [], [], attributes={"spmd": SymbolRef("m")})
    rules = LayoutRules.of(layout)
    local = rules.layout_of(GLOBAL).local_type(GLOBAL, MESH)
    opdef = lookup(name)
    attributes = {**opdef.check_attributes({"shape": local.dims, **attrs}), "layout": rules}
    return OpView(opdef, [], attributes, module, function, [local])


def test_random_ops_in_local_programs_draw_their_block_of_the_global_value():
    """Every device's result is its slice of the global draw, for each layout."""
    device_mesh = jax_mesh(MESH)
    views = [local_view(name, layout, seed=5) for layout in LAYOUTS for name in ("random_uniform", "random_normal")]

    def body(step):
        return [NN_RULES[v.name](v, step[0])[None] for v in views]

    stacked = PartitionSpec(("x", "y"))
    run = jax.jit(jax.shard_map(body, mesh=device_mesh, in_specs=PartitionSpec(), out_specs=[stacked] * len(views), check_vma=False))
    with x64():
        got = run(np.array([4], np.int32))
    index = reference.global_index(GLOBAL.shape)
    for view, value in zip(views, got):
        layout = view.attributes["layout"].layout_of(GLOBAL)
        draw = reference.uniform if view.name == "random_uniform" else reference.normal
        want = shard(draw(5, np.int32(4), 0, index), layout, MESH)
        for device in MESH.devices():
            np.testing.assert_allclose(np.asarray(value[device]), want[device], rtol=2e-6, atol=2e-6,
                                       err_msg=f"{view.name} {view.attributes['layout']} device {device}")
            if view.name == "random_uniform":
                np.testing.assert_array_equal(np.asarray(value[device]), want[device])


def test_block_indices_match_index_of_block():
    device_mesh = jax_mesh(MESH)
    layouts = [LayoutRules.of(layout).layout_of(GLOBAL) for layout in LAYOUTS]
    locals_ = [layout.local_type(GLOBAL, MESH).shape for layout in layouts]

    def body():
        out = []
        for layout, shape in zip(layouts, locals_):
            offsets, global_shape = xrandom.block_offsets(layout, MESH, shape)
            out.append(xrandom.linear_index(shape, global_shape, offsets)[None])
        return out

    stacked = PartitionSpec(("x", "y"))
    got = jax.jit(jax.shard_map(body, mesh=device_mesh, in_specs=(), out_specs=[stacked] * len(layouts), check_vma=False))()
    for layout, shape, value in zip(layouts, locals_, got):
        for device in MESH.devices():
            starts = [MESH.index_in_group(device, axes) * size for axes, size in zip(layout.axes, shape)]
            np.testing.assert_array_equal(np.asarray(value[device]), reference.index_of_block(GLOBAL.shape, starts, shape))


INITIAL = {
    "z": (f32(a=3), "zeros", {}),
    "o": (bf16(a=3), "ones", {}),
    "c": (i32(a=2, b=2), "constant", {"value": -7}),
    "n": (f32(a=16, b=8), "normal", {"mean": 0.5, "stddev": 0.3, "seed": 3}),
    "u": (f32(a=64), "uniform", {"minval": -0.7, "maxval": 2.1, "seed": 4}),
    "u64": (f64(a=64), "uniform", {"minval": -0.7, "maxval": 2.1, "seed": 4}),
    "ui": (i32(a=64), "uniform", {"minval": -100.0, "maxval": 100.0, "seed": 5}),
    "t": (f32(a=32, b=8), "truncated_normal", {"stddev": 2.0, "seed": 6}),
    "gu": (f32(i=16, o=8), "glorot_uniform", {"seed": 7}),
    "gn": (bf16(i=16, o=8), "glorot_normal", {"seed": 8, "fan_in": ["i"]}),
}
# Drawn from uniform bits only: bit-identical. The others go through Box-Muller.
EXACT = {"z", "o", "c", "u", "u64", "ui", "gu"}


def initializer_module() -> Module:
    mb = ModuleBuilder()
    for name, (ttype, kind, args) in INITIAL.items():
        mb.var(name, ttype, kind, **args)
    return mb.build()


def test_initializers_match_the_reference():
    module = initializer_module()
    device_mesh = jax_mesh(MESH)
    shardings = {"n": NamedSharding(device_mesh, PartitionSpec("x", "y")), "u": NamedSharding(device_mesh, PartitionSpec(("x", "y")))}
    got = initial_values(module, shardings=shardings)
    assert got["n"].sharding == shardings["n"] and len(got["n"].addressable_shards) == 8
    for name, variable in module.variables.items():
        want = INITIALIZERS[variable.initializer].materialize(variable.type, variable.init_args)
        value = np.asarray(got[name])
        assert value.dtype == want.dtype, name
        if name in EXACT:
            np.testing.assert_array_equal(value, want, err_msg=name)
        else:
            tolerance = 1e-2 if variable.type.dtype.itemsize < 4 else 1e-5
            np.testing.assert_allclose(value.astype(np.float64), want.astype(np.float64), rtol=tolerance, atol=tolerance, err_msg=name)


def test_setup_cpu_devices(monkeypatch):
    with pytest.raises(MeshirError, match="JAX is already initialised with 8 CPU devices but 16 are needed"):
        setup_cpu_devices(16)
    setup_cpu_devices(4)  # enough devices already: nothing to do
    monkeypatch.setattr(devices, "_jax_initialised", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2")
    monkeypatch.setenv("NPROC", "3")
    setup_cpu_devices(8)
    import os

    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8"
    assert os.environ["NPROC"] == "16"
    monkeypatch.delenv("XLA_FLAGS")
    setup_cpu_devices(2)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2" and os.environ["NPROC"] == "16"
