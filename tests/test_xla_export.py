"""A `.jaxexport` of a local program runs in a fresh Python process that imports
only JAX and numpy, and matches the reference interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from meshir.backends.xla import compile_local, serialize_export
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter

# @step is the local (spmd) form of @reference on a 2x2 mesh.
MODEL = """
mesh @m = <rows=2, cols=2>
var @w : f32[hidden=6, out=3] = normal(stddev=0.5, seed=1)
var @steps : f32[] = zeros

func @reference(%x: f32[batch=4, hidden=6]) -> f32[batch=4, out=3]
    attributes {mesh = @m, layout = {batch: rows, hidden: cols}} {
  %w = read @w
  %y = einsum(%x, %w) {output = [batch, out]}
  %one = constant() {value = 1.0}
  assign_add @steps, %one
  return %y
}

func @step(%x: f32[batch=2, hidden=3]) -> f32[batch=2, out=3]
    attributes {spmd = @m, layout = {batch: rows, hidden: cols}} {
  %w = read @w {layout = {hidden: cols}}
  %partial = einsum(%x, %w) {output = [batch, out]}
  %y = all_reduce(%partial) {axes = [cols], reduce = sum}
  %one = constant() {value = 1.0}
  assign_add @steps, %one
  return %y
}
"""

# Runs with nothing but JAX and numpy: the artifact carries the program, its
# shardings and its calling convention (inputs and variables as dicts by name).
LOADER = textwrap.dedent("""
    import sys
    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:exported.nr_devices]).reshape(2, 2), ("rows", "cols"))
    unflatten = jax.tree_util.tree_unflatten
    in_shardings = unflatten(exported.in_tree, exported.in_shardings_jax(mesh))[0]
    out_shardings = unflatten(exported.out_tree, exported.out_shardings_jax(mesh))
    arrays = np.load(sys.argv[2])
    inputs = {"x": arrays["x"]}
    variables = {"w": arrays["w"], "steps": arrays["steps"]}
    outputs, new_variables = jax.jit(exported.call, in_shardings=in_shardings, out_shardings=out_shardings)(inputs, variables)
    assert not any(name.startswith("meshir") for name in sys.modules)
    np.savez(sys.argv[3], y=np.asarray(outputs["y"]), steps=np.asarray(new_variables["steps"]))
""")


def test_exported_program_runs_without_meshir(tmp_path):
    module = parse_module(MODEL)
    artifact = tmp_path / "step.jaxexport"
    artifact.write_bytes(serialize_export(compile_local(module, "step")))
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, w=w, steps=np.float32(2.0))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "NPROC": "8"}
    subprocess.run([sys.executable, "-c", LOADER, str(artifact), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   env=env, check=True, cwd=tmp_path, timeout=120)
    interpreter = Interpreter(module, {"w": w, "steps": np.float32(2.0)})
    want = interpreter.run("reference", {"x": x})
    with np.load(tmp_path / "out.npz") as got:
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
        assert float(got["steps"]) == float(interpreter.state["steps"]) == 3.0
