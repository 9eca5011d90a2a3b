"""Local (post-spmd) programs on the XLA backend against the numpy simulator.

Each collective runs over every ordered choice of mesh axes on meshes of 2,
2x2 and 2x4 CPU devices (tests/conftest.py gives JAX 8), all of one mesh's
cases in one compiled program, compared device by device with
`Interpreter.run_local`. Then whole programs with split variables in the
global-array calling convention, the gspmd baseline, and the emitted texts.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from meshir.backends.xla import compile_global_gspmd, compile_local, hlo_text, jax_mesh, stablehlo_text
from meshir.diagnostics import MeshirError
from meshir.frontends.builder import ModuleBuilder, bf16, bool_, f32, i32
from meshir.interpreter import Interpreter, shard, unshard
from meshir.ir import Module
from meshir.mesh import LayoutRules, Mesh
from meshir.types import Dim

MESHES = {"2": {"x": 2}, "2x2": {"x": 2, "y": 2}, "2x4": {"x": 2, "y": 4}}


def axes_choices(axes: list[str]) -> list[tuple[str, ...]]:
    """Every ordered selection of the mesh's axes, the empty one included."""
    return [p for r in range(len(axes) + 1) for p in itertools.permutations(axes, r)]


def collectives_module(axes: dict[str, int]) -> Module:
    mb = ModuleBuilder()
    mb.mesh("m", **axes)
    args = {"v": f32(a=8, b=8), "h": bf16(a=8), "n": i32(a=8), "t": bool_(a=4)}
    results = []
    with mb.function("f", spmd="m", **args) as f:
        v, h, n, t = (f.arg(name) for name in args)
        for group in axes_choices(list(axes)):
            for reduce in ("sum", "max", "min", "prod"):
                results.append(f.all_reduce(v, axes=group, reduce=reduce))
            results += [
                f.all_reduce(h, axes=group, reduce="sum"),
                f.all_reduce(n, axes=group, reduce="prod"),
                f.all_reduce(t, axes=group, reduce="max"),
                f.all_reduce(t, axes=group, reduce="min"),
                f.all_gather(v, dim="b", axes=group),
                f.all_gather(t, dim="a", axes=group),
                f.reduce_scatter(v, dim="a", axes=group, reduce="sum"),
                f.reduce_scatter(h, dim="a", axes=group, reduce="sum"),
                f.reduce_scatter(v, dim="b", axes=group, reduce="max"),
                f.reduce_scatter(n, dim="a", axes=group, reduce="prod"),
                f.all_to_all(v, split_dim="a", concat_dim="b", axes=group),
                f.all_to_all(v, split_dim="b", concat_dim="b", axes=group),
                f.all_slice(v, dim="b", axes=group),
            ]
        for axis in axes:
            for shift, wrap in ((1, False), (-1, False), (2, True), (-3, True), (5, False)):
                results += [f.collective_permute(v, axis=axis, shift=shift, wrap=wrap),
                            f.collective_permute(t, axis=axis, shift=shift, wrap=wrap)]
            index = f.axis_index(axis=axis)
            results += [index, f.dynamic_slice(v, index * f.constant(value=5, dtype="i32"), dim="a", size=4)]
        f.ret(*results)
    return mb.build()


def per_device_inputs(mesh: Mesh) -> dict[str, list[np.ndarray]]:
    """Small integers, so every sum and product is exact in any order."""
    rng = np.random.default_rng(len(mesh.axes) * 10 + mesh.size)
    draw = lambda shape: rng.integers(-3, 4, size=shape)  # noqa: E731
    return {
        "v": [draw((8, 8)).astype(np.float32) for _ in mesh.devices()],
        "h": [draw(8).astype(np.float32).astype(bf16.dtype.numpy) for _ in mesh.devices()],
        "n": [draw(8).astype(np.int32) for _ in mesh.devices()],
        "t": [rng.random(4) < 0.5 for _ in mesh.devices()],
    }


@pytest.mark.parametrize("key", MESHES)
def test_collectives_match_the_simulator(key):
    module = collectives_module(MESHES[key])
    mesh = module.meshes["m"]
    inputs = per_device_inputs(mesh)
    want = Interpreter(module).run_local("f", inputs)
    got, _ = compile_local(module, "f", per_device=True).run_per_device(inputs)
    assert list(got) == list(want)
    for name in want:
        for device in mesh.devices():
            np.testing.assert_array_equal(got[name][device], want[name][device], err_msg=f"{name} on device {device}")


def model_module() -> Module:
    """@global: y = x . w, then w's bias b += column sums; @local: its spmd form on
    rows=2, cols=4 with x split (batch: rows, hidden: cols), w and b split over cols."""
    mb = ModuleBuilder()
    mb.mesh("m", rows=2, cols=4)
    layout = {"batch": "rows", "hidden": "cols"}
    mb.var("w", f32(hidden=8, out=4), "normal", seed=1)
    mb.var("b", f32(hidden=8), "uniform", seed=2)
    with mb.function("model", x=f32(batch=4, hidden=8), mesh="m", layout=layout) as g:
        y = g.einsum(g.arg("x"), g.read("w"), output=["batch", "out"], name="y")
        g.assign_add("b", g.reduce_sum(g.reshard(g.arg("x"), layout={"hidden": "rows"}), dims=["batch"]))
        g.ret(y)
    with mb.function("local", x=f32(batch=2, hidden=2), spmd="m", layout=layout) as f:
        w = f.op("read", "w", layout={"hidden": "cols"})
        partial = f.einsum(f.arg("x"), w, output=["batch", "out"])
        y = f.all_reduce(partial, axes=["cols"], reduce="sum", name="y")
        f.op("assign_add", "b", f.all_reduce(f.reduce_sum(f.arg("x"), dims=["batch"]), axes=["rows"], reduce="sum"),
             layout={"hidden": "cols"})
        f.ret(y)
    return mb.build()


def test_local_program_on_global_arrays_matches_simulator_and_global_reference():
    module = model_module()
    mesh = module.meshes["m"]
    x = np.random.default_rng(0).integers(-3, 4, size=(4, 8)).astype(np.float32)
    reference = Interpreter(module)
    want = reference.run("model", {"x": x})
    simulator = Interpreter(module)
    x_layout = LayoutRules.of({"batch": "rows", "hidden": "cols"}).layout_of(module.function("model").args[0].type)
    simulated = simulator.run_local("local", {"x": shard(x, x_layout, mesh)})
    y_layout = LayoutRules.of({"batch": "rows"}).layout_of(module.function("model").returns[0].type)
    program = compile_local(module, "local")
    got, state = program.run({"x": x})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
    np.testing.assert_allclose(got["y"], unshard(simulated["y"], y_layout, mesh), rtol=1e-6)
    assert sorted(state) == ["b", "w"]
    np.testing.assert_array_equal(state["b"], reference.state["b"])
    np.testing.assert_array_equal(state["b"], simulator.state["b"])
    np.testing.assert_array_equal(state["w"], reference.state["w"])
    # Variables given by the caller replace the initializers.
    _, state = program.run({"x": x}, {"b": np.zeros(8, np.float32)})
    np.testing.assert_array_equal(state["b"], x.sum(axis=0))


def test_per_device_runs_update_local_state_like_the_simulator():
    module = model_module()
    mesh = module.meshes["m"]
    rng = np.random.default_rng(2)
    inputs = {"x": [rng.integers(-3, 4, size=(2, 2)).astype(np.float32) for _ in mesh.devices()]}
    local_state = {"w": [rng.normal(size=(2, 4)).astype(np.float32) for _ in mesh.devices()],
                   "b": [np.full(2, d, np.float32) for d in mesh.devices()]}
    simulated_state = {name: [s.copy() for s in slices] for name, slices in local_state.items()}
    want = Interpreter(module).run_local("local", inputs, simulated_state)
    got, state = compile_local(module, "local", per_device=True).run_per_device(inputs, local_state)
    for device in mesh.devices():
        np.testing.assert_allclose(got["y"][device], want["y"][device], rtol=1e-6)
        for name in ("w", "b"):
            np.testing.assert_array_equal(state[name][device], simulated_state[name][device])


def test_gspmd_baseline_matches_the_reference_and_partitions():
    module = model_module()
    x = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    reference = Interpreter(module)
    want = reference.run("model", {"x": x})
    program = compile_global_gspmd(module, "model")
    got, state = program.run({"x": x})
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["b"], reference.state["b"], rtol=1e-6)
    assert program.inputs[0].spec == PartitionSpec("rows", "cols")
    assert "all-reduce" in hlo_text(program)


def test_emitted_texts_show_the_partitioned_program():
    program = compile_local(model_module(), "local")
    hlo = hlo_text(program)
    assert "HloModule jit_local" in hlo and "all-reduce" in hlo and "num_partitions=8" in hlo
    stablehlo = stablehlo_text(program)
    assert "func.func public @main" in stablehlo and "all_reduce" in stablehlo


def test_errors_name_the_problem():
    module = model_module()
    with pytest.raises(MeshirError, match="func @model is a global function"):
        compile_local(module, "model")
    with pytest.raises(MeshirError, match="func @local is a local function"):
        compile_global_gspmd(module, "local")
    with pytest.raises(MeshirError, match=r"mesh @big <x=16> needs 16 devices but JAX has 8"):
        jax_mesh(Mesh("big", (Dim("x", 16),)))
    program = compile_local(module, "local")
    with pytest.raises(MeshirError, match=r"func @local input 'x': expected f32\[batch=4, hidden=8\]"):
        program.run({"x": np.zeros((2, 2), np.float32)})
    with pytest.raises(MeshirError, match="missing input 'x'"):
        program.run({})
    with pytest.raises(MeshirError, match="variables name @nope"):
        program.run({"x": np.zeros((4, 8), np.float32)}, {"nope": np.zeros(1)})
