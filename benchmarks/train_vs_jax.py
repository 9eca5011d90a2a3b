"""meshir's train step vs the same model in plain JAX + optax (not a test).

    python benchmarks/train_vs_jax.py [--repeats 30]

Two models, examples/digits_mlp.mir and examples/transformer_lm.mir, each on 8
CPU devices under a data-parallel layout (mesh all:8, batch over all) and a
mixed one (mesh rows:2,cols:4, batch over rows and the example's model-parallel
dimensions over cols).

meshir: the train step `meshir-run --train` builds (`autodiff`, `optimizer`
adam, `layout`, `spmd`), compiled by the xla backend and called as its runner
calls it (`CompiledProgram.step`: the written variables' buffers donated). Plain JAX: the same model in jax.numpy, `jax.value_and_grad`
and `optax.adam`, jitted with NamedShardings for the same layout (taken from
meshir's ports, so both place every array alike), parameters and optimizer
state donated. Both start from meshir's initial variables and train on the
same batch; the losses of their first two steps are compared before timing.

Step time: the median of interleaved warm steps, each blocked until ready.
Memory: per device, from XLA's `compiled.memory_analysis()`: argument + output +
temp bytes minus the bytes of outputs aliased to (donated) arguments.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from meshir.backends.xla import setup_cpu_devices

setup_cpu_devices(8)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from meshir.backends.xla import CompiledProgram, compile_local, x64  # noqa: E402
from meshir.interpreter import Interpreter, random_inputs  # noqa: E402
from meshir.passes.pipeline import PassManager, parse_pipeline  # noqa: E402
from meshir.tools.common import load_module  # noqa: E402
from meshir.tools.compile import standard_pipeline  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LR = 1e-3
LAYER_NORM_EPSILON = 1e-6  # meshir's layer_norm default


# ---------------------------------------------------------------------------- the models in plain JAX


def digits_loss(w: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(x @ w["w1"] + w["b1"])
    logits = hidden @ w["w2"] + w["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + LAYER_NORM_EPSILON) * scale + bias


def transformer_layer(x: jax.Array, w: dict[str, jax.Array], prefix: str, mask: jax.Array) -> jax.Array:
    p = lambda name: w[f"{prefix}.{name}"]  # noqa: E731
    h = layer_norm(x, p("ln1.scale"), p("ln1.bias"))
    q = jnp.einsum("bsm,mhd->bshd", h, p("wq"))
    k = jnp.einsum("btm,mhd->bthd", h, p("wk"))
    v = jnp.einsum("btm,mhd->bthd", h, p("wv"))
    scores = jnp.einsum("bshd,bthd->bhst", q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(scores + mask, axis=-1)
    x = x + jnp.einsum("bhst,bthd,hdm->bsm", weights, v, p("wo"))
    h = layer_norm(x, p("ln2.scale"), p("ln2.bias"))
    up = jax.nn.gelu(h @ p("w1") + p("b1"), approximate=False)
    return x + up @ p("w2") + p("b2")


def lm_loss(w: dict[str, jax.Array], tokens: jax.Array, targets: jax.Array) -> jax.Array:
    seq = tokens.shape[1]
    mask = jnp.where(jnp.arange(seq)[None, :] <= jnp.arange(seq)[:, None], 0.0, -1e9)
    x = jnp.take(w["embed"], tokens, axis=0) + w["pos"]
    for layer in ("l0", "l1"):
        x = transformer_layer(x, w, layer, mask)
    logits = layer_norm(x, w["lnf.scale"], w["lnf.bias"]) @ w["unembed"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@dataclass(frozen=True)
class Case:
    model: str
    layout_name: str
    mesh: str
    layout: str
    jax_loss: Callable[..., jax.Array]


CASES = [
    Case("digits_mlp", "data-parallel", "all:8", "batch:all", digits_loss),
    Case("digits_mlp", "mixed", "rows:2,cols:4", "batch:rows,hidden:cols", digits_loss),
    Case("transformer_lm", "data-parallel", "all:8", "batch:all", lm_loss),
    Case("transformer_lm", "mixed", "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols", lm_loss),
]


# ---------------------------------------------------------------------------- the three train steps


@dataclass
class MeshirStep:
    """meshir's train step and the variables it carries between calls, as XlaRunner."""

    call: Callable[[dict[str, jax.Array], dict[str, Any]], tuple[dict[str, jax.Array], dict[str, jax.Array]]]
    compiled: Callable[[], jax.stages.Compiled]
    feed: dict[str, jax.Array]
    state: dict[str, Any]

    def __call__(self) -> float:
        outputs, written = self.call(self.feed, self.state)
        self.state = {**self.state, **written}
        jax.block_until_ready((outputs, written))
        return float(outputs["loss"])


def compiled_step(program: CompiledProgram) -> jax.stages.Compiled:
    """The donating program `CompiledProgram.step` runs, compiled for the memory figures."""
    with x64():
        return program.lower_step().compile()


@dataclass
class JaxStep:
    """The plain-JAX train step; params and optimizer state are donated every call."""

    jitted: Any
    params: dict[str, jax.Array]
    opt_state: Any
    batch: tuple[jax.Array, ...]

    def __call__(self) -> float:
        self.params, self.opt_state, loss = self.jitted(self.params, self.opt_state, *self.batch)
        jax.block_until_ready((self.params, self.opt_state, loss))
        return float(loss)

    def compiled(self) -> jax.stages.Compiled:
        return self.jitted.lower(self.params, self.opt_state, *self.batch).compile()


def build_steps(case: Case) -> tuple[MeshirStep, JaxStep]:
    """meshir's step as its runner calls it, and plain JAX's."""
    module = load_module(str(EXAMPLES / f"{case.model}.mir"), case.mesh, case.layout)
    trainable = [v.name for v in module.variables.values() if v.trainable]
    batch = random_inputs(module.function("loss"), seed=0)
    # The standard pipeline without autostack, which would merge the variables that
    # the JAX model's parameters are keyed by (benchmarks/passes.py measures autostack).
    pipeline = standard_pipeline("loss", train=True, optimizer="adam", lr=LR).replace("autostack,", "")
    PassManager(parse_pipeline(pipeline)).run(module)
    initial = dict(Interpreter(module).state)
    program = compile_local(module, "loss")
    mesh = program.device_mesh
    placed = lambda value, spec: jax.device_put(value, NamedSharding(mesh, spec))  # noqa: E731

    variable_specs = {p.name: p.spec for p in program.variables}
    feed = {p.name: placed(batch[p.name], p.spec) for p in program.inputs}
    fresh_state = lambda: {name: placed(initial[name], spec) for name, spec in variable_specs.items()}  # noqa: E731
    meshir = MeshirStep(program.step, lambda: compiled_step(program), feed, fresh_state())

    optimizer = optax.adam(LR)
    param_shardings = {name: NamedSharding(mesh, variable_specs[name]) for name in trainable}
    params = {name: jax.device_put(initial[name], param_shardings[name]) for name in trainable}
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, jax.eval_shape(optimizer.init, params),
                                          param_shardings, transform_non_params=lambda _: NamedSharding(mesh, P()))
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    batch_shardings = tuple(NamedSharding(mesh, p.spec) for p in program.inputs)

    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(case.jax_loss)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(step, in_shardings=(param_shardings, opt_shardings, *batch_shardings),
                     out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, P())), donate_argnums=(0, 1))
    plain = JaxStep(jitted, params, opt_state, tuple(jax.device_put(batch[p.name], s) for p, s in zip(program.inputs, batch_shardings)))
    return meshir, plain


# ---------------------------------------------------------------------------- measuring

Memory = tuple[int, int, int, int]


def live_bytes(compiled: jax.stages.Compiled) -> Memory:
    """(argument, output, temp, aliased) bytes of one device's program."""
    stats = compiled.memory_analysis()
    return stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.temp_size_in_bytes, stats.alias_size_in_bytes


def timed(step: Callable[[], float]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


PROGRAMS = ("meshir", "jax")


@dataclass
class Result:
    case: Case
    losses: list[list[float]]  # per program, its first two steps
    step_seconds: list[float]  # per program
    memory: list[Memory]  # per program


def measure(case: Case, repeats: int) -> Result:
    steps = build_steps(case)
    losses = [[step(), step()] for step in steps]
    memory = [live_bytes(step.compiled()) for step in steps]
    for _ in range(3):  # warm every program before timing
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, samples in zip(steps, times):
            samples.append(timed(step))
    return Result(case, losses, [statistics.median(samples) for samples in times], memory)


def peak(memory: Memory) -> int:
    argument, output, temp, aliased = memory
    return argument + output + temp - aliased


def report(results: list[Result]) -> None:
    print("step time: median of interleaved warm steps, ms; ratio meshir / jax")
    print(f"{'model':<15} {'layout':<14} {'meshir':>8} {'jax':>8} {'ratio':>6}")
    for r in results:
        meshir, plain = r.step_seconds
        print(f"{r.case.model:<15} {r.case.layout_name:<14} {meshir * 1e3:>8.3f} {plain * 1e3:>8.3f} {meshir / plain:>6.2f}")
    print("\npeak memory per device, KiB: argument + output + temp - aliased; ratio meshir / jax")
    print(f"{'model':<15} {'layout':<14} {'meshir':>8} {'jax':>8} {'ratio':>6}")
    for r in results:
        meshir, plain = (peak(m) for m in r.memory)
        print(f"{r.case.model:<15} {r.case.layout_name:<14} {meshir / 1024:>8.0f} {plain / 1024:>8.0f} {meshir / plain:>6.2f}")
    print("\nmemory breakdown, KiB per device: argument / output / temp / aliased")
    for r in results:
        parts = ("/".join(f"{b / 1024:.0f}" for b in memory) for memory in r.memory)
        print(f"{r.case.model:<15} {r.case.layout_name:<14} " + "   ".join(f"{name} {part:<20}" for name, part in zip(PROGRAMS, parts)))
    print("\nlosses of the first two steps per program, and the largest relative difference to jax")
    for r in results:
        plain = r.losses[-1]
        difference = max(abs(m - j) / abs(j) for losses in r.losses[:-1] for m, j in zip(losses, plain))
        shown = "   ".join(f"{name} {a:.6f} {b:.6f}" for name, (a, b) in zip(PROGRAMS, r.losses))
        print(f"{r.case.model:<15} {r.case.layout_name:<14} {shown}   {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    report([measure(case, args.repeats) for case in CASES])


if __name__ == "__main__":
    main()
