"""meshir's XLA program vs the same model written directly in JAX (not a test).

    python benchmarks/xla_vs_jax.py [--repeats 50]

The transformer block of examples/transformer_block.mir, forward, on 8 CPU
devices with one layout (batch over rows, heads and MLP hidden units over cols
of a 2x4 mesh). meshir: `layout,spmd` then the xla backend (shard_map with
explicit collectives). Plain JAX: the same block in jax.numpy, jitted with
NamedShardings for the same layout, XLA's partitioner deciding the collectives.
Prints the median step time of interleaved runs and the compile time of each,
and their ratios (meshir / JAX); both start from the same weights and inputs and
their outputs are compared first.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from meshir.backends.xla import setup_cpu_devices

setup_cpu_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from meshir.backends.xla import compile_local, jax_mesh  # noqa: E402
from meshir.frontends.text import parse_module, read_source  # noqa: E402
from meshir.interpreter import Interpreter, random_inputs  # noqa: E402
from meshir.passes.pipeline import PassManager, parse_pipeline  # noqa: E402
from meshir.tools.common import apply_overrides  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "examples" / "transformer_block.mir"
MESH, LAYOUT = "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols"


def layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def block(x, w):
    """The transformer block in plain jax.numpy (same math as the .mir file)."""
    h = layer_norm(x, w["ln1.scale"], w["ln1.bias"])
    q = jnp.einsum("bsm,mhd->bshd", h, w["attn.wq"])
    k = jnp.einsum("btm,mhd->bthd", h, w["attn.wk"])
    v = jnp.einsum("btm,mhd->bthd", h, w["attn.wv"])
    scores = jnp.einsum("bshd,bthd->bhst", q, k) * (1 / np.sqrt(8))
    seq = x.shape[1]
    mask = jnp.where(jnp.arange(seq)[None, :] <= jnp.arange(seq)[:, None], 0.0, -1e9)
    weights = jax.nn.softmax(scores + mask, axis=-1)
    context = jnp.einsum("bhst,bthd->bshd", weights, v)
    x = x + jnp.einsum("bshd,hdm->bsm", context, w["attn.wo"])
    h = layer_norm(x, w["ln2.scale"], w["ln2.bias"])
    up = jax.nn.gelu(h @ w["mlp.w1"] + w["mlp.b1"], approximate=False)
    return x + up @ w["mlp.w2"] + w["mlp.b2"]


def plain_jax(mesh):
    specs = {
        "attn.wq": P(None, "cols", None), "attn.wk": P(None, "cols", None), "attn.wv": P(None, "cols", None),
        "attn.wo": P("cols", None, None), "mlp.w1": P(None, "cols"), "mlp.b1": P("cols"), "mlp.w2": P("cols", None),
    }
    shard = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    weight_shardings = {name: shard(specs.get(name, P())) for name in
                        ("ln1.scale", "ln1.bias", "attn.wq", "attn.wk", "attn.wv", "attn.wo", "ln2.scale", "ln2.bias", "mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2")}
    return jax.jit(block, in_shardings=(shard(P("rows", None, None)), weight_shardings), out_shardings=shard(P("rows", None, None))), weight_shardings


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    module = parse_module(read_source(str(MODEL)))
    apply_overrides(module, MESH, LAYOUT)
    function = module.function("block")
    inputs = random_inputs(function, seed=0)
    weights = Interpreter(module).state
    PassManager(parse_pipeline("layout,spmd")).run(module)

    start = time.perf_counter()
    program = compile_local(module, "block")
    feed = {p.name: jax.device_put(inputs[p.name], p.struct(program.device_mesh).sharding) for p in program.inputs}
    state = {p.name: jax.device_put(weights[p.name], p.struct(program.device_mesh).sharding) for p in program.variables}
    meshir_out = program(feed, state)[0]["out"]
    jax.block_until_ready(meshir_out)
    meshir_compile = time.perf_counter() - start

    mesh = jax_mesh(module.meshes["m"])
    start = time.perf_counter()
    jitted, weight_shardings = plain_jax(mesh)
    x = jax.device_put(inputs["x"], NamedSharding(mesh, P("rows", None, None)))
    w = {name: jax.device_put(weights[name], sharding) for name, sharding in weight_shardings.items()}
    jax_out = jitted(x, w)
    jax.block_until_ready(jax_out)
    jax_compile = time.perf_counter() - start

    difference = float(np.max(np.abs(np.asarray(meshir_out) - np.asarray(jax_out))))
    meshir_times, jax_times = [], []
    for _ in range(args.repeats):
        meshir_times.append(timed(program, feed, state))
        jax_times.append(timed(jitted, x, w))
    meshir_step, jax_step = statistics.median(meshir_times), statistics.median(jax_times)
    print(f"outputs agree to {difference:.2e}")
    print(f"step time    meshir {meshir_step * 1e3:8.3f} ms   jax {jax_step * 1e3:8.3f} ms   ratio {meshir_step / jax_step:.2f}")
    print(f"compile time meshir {meshir_compile:8.3f} s    jax {jax_compile:8.3f} s    ratio {meshir_compile / jax_compile:.2f}")


if __name__ == "__main__":
    main()
