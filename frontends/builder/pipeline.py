"""Pipeline parallelism (GPipe) from registry ops: layers placed on the stages
of a mesh axis, the batch cut into microbatches that flow through them.

The stages' weights are stacked variables whose leading dimension is the stage
(`var @w : f32[stage=4, ...]`); a layout that splits `stage` over a mesh axis
puts stage i's weights on the devices at position i along that axis. The
activations in flight are one value with that same leading dimension, so at
every tick each stage applies its own layer to the microbatch it holds (`stage`
is just another batch dimension of the layer's ops), then `shift` moves every
microbatch one stage on, which the spmd pass turns into a `collective_permute`
to the next device along the axis. Microbatch t enters stage 0 at tick t and
leaves the last stage at tick t + stages - 1: microbatches + stages - 1 ticks,
the first and last stages - 1 of them partly idle (the pipeline's bubble). The
outputs gather in a buffer on the last stage, summed over `stage` once at the
end (one all_reduce of the whole output). autodiff derives the backward
pipeline: a shift's gradient is the shift back.

Microbatch m holds the examples m, m + microbatches, m + 2 * microbatches, ...
of the batch (a reshape to [batch / microbatches, microbatch] that keeps a split
`batch` local); the output has the input's batch order.
"""
from __future__ import annotations

from typing import Callable

from meshir.diagnostics import MeshirError
from meshir.types import Dim, TensorType

from .builder import FunctionBuilder, Tensor

MICROBATCH = "microbatch"


def _at(f: FunctionBuilder, size: int, dim: str, index: int, dtype) -> Tensor:
    """A [dim=size] mask: one at `index`, zero elsewhere."""
    position = f.iota(shape={dim: size}, dim=dim)
    return f.cast(f.eq(position, f.lift(index, position.dtype)), dtype=dtype)


def pipelined(f: FunctionBuilder, x: Tensor, layer: Callable[[FunctionBuilder, Tensor], Tensor], *,
              stages: Dim, batch: str, microbatches: int) -> Tensor:
    """`layer` applied `stages.size` times in a row to `x`, stage i with its own
    weights, as a GPipe pipeline over `microbatches` microbatches of `batch`.

    `layer(f, h)` gets the activations in flight, `h` with the leading dimension
    `stages.name` and then x's dimensions (`batch` cut to a microbatch), and
    returns the same type: it reads its weights from variables whose leading
    dimension is `stages`, so each stage uses its own slice."""
    if batch not in x.names:
        raise MeshirError(f"pipelined: x {x.type} has no dimension '{batch}'")
    if microbatches < 1 or x.size(batch) % microbatches:
        raise MeshirError(f"pipelined: microbatches = {microbatches} must divide {batch} = {x.size(batch)}")
    if stages.name in x.names or MICROBATCH in x.names:
        raise MeshirError(f"pipelined: x {x.type} already has a dimension '{stages.name}' or '{MICROBATCH}'")
    dtype = x.dtype
    per_micro = x.size(batch) // microbatches
    cut = []
    for d in x.type.dims:
        cut += [Dim(batch, per_micro), Dim(MICROBATCH, microbatches)] if d.name == batch else [d]
    micro = f.reshape(x, shape=cut)
    state_type = TensorType(dtype, (stages, *(Dim(batch, per_micro) if d.name == batch else d for d in x.type.dims)))
    state = f.zeros(shape=state_type, dtype=dtype)
    outputs = f.zeros(shape=TensorType(dtype, (stages, *cut)), dtype=dtype)
    first, last = _at(f, stages.size, stages.name, 0, dtype), _at(f, stages.size, stages.name, stages.size - 1, dtype)
    for tick in range(microbatches + stages.size - 1):
        if tick < microbatches:
            entering = f.reshape(f.slice(micro, dim=MICROBATCH, begin=tick, size=1), shape=state_type.dims[1:])
            state = state + first * entering
        state = layer(f, state)
        if state.type != state_type:
            raise MeshirError(f"pipelined: layer must return {state_type}, got {state.type}")
        leaving = tick - (stages.size - 1)
        if leaving >= 0:
            outputs = outputs + last * _at(f, microbatches, MICROBATCH, leaving, dtype) * state
        if tick < microbatches + stages.size - 2:
            state = f.shift(state, dim=stages.name, offset=1)
    return f.reshape(f.reduce_sum(outputs, dims=[stages.name]), shape=x.type.dims)
