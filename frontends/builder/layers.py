"""Layer helpers: familiar building blocks that expand into registry ops and
declare their own variables (named `<name>.<part>`)."""
from __future__ import annotations

import math

from meshir.diagnostics import MeshirError
from meshir.types import Dim, TensorType

from .builder import FunctionBuilder, Tensor


def dense(f: FunctionBuilder, x: Tensor, contract: str, out: Dim, *, name: str, seed: int = 0, use_bias: bool = True) -> Tensor:
    """x . W + b, contracting dimension `contract` of x into the new dimension `out`."""
    dtype = x.dtype
    w = f.module_builder.var(f"{name}.w", TensorType(dtype, (x.type.dim(contract), out)), "glorot_uniform", seed=seed)
    output = [n for n in x.names if n != contract] + [out.name]
    y = f.einsum(x, f.read(w), output=output)
    if use_bias:
        b = f.module_builder.var(f"{name}.b", TensorType(dtype, (out,)), "zeros")
        y = y + f.read(b)
    return y


def layer_norm(f: FunctionBuilder, x: Tensor, dims: list[str], *, name: str, epsilon: float = 1e-6) -> Tensor:
    """Normalise over `dims`, then a learned scale (ones) and bias (zeros) over them."""
    shape = tuple(x.type.dim(n) for n in dims)
    scale = f.module_builder.var(f"{name}.scale", TensorType(x.dtype, shape), "ones")
    bias = f.module_builder.var(f"{name}.bias", TensorType(x.dtype, shape), "zeros")
    return f.layer_norm(x, f.read(scale), f.read(bias), dims=dims, epsilon=epsilon)


def feed_forward(f: FunctionBuilder, x: Tensor, model: str, hidden: Dim, *, name: str, seed: int = 0, activation: str = "gelu") -> Tensor:
    """dense(model -> hidden), activation, dense(hidden -> model)."""
    h = getattr(f, activation)(dense(f, x, model, hidden, name=f"{name}.in", seed=seed))
    return dense(f, h, hidden.name, x.type.dim(model), name=f"{name}.out", seed=seed + 1)


def multi_head_attention(
    f: FunctionBuilder, x: Tensor, *, seq: str, model: str, heads: Dim, head_dim: Dim,
    name: str, seed: int = 0, causal: bool = False, memory: str = "memory", segment_ids: Tensor | None = None,
) -> Tensor:
    """Self-attention over `seq`: project to `heads` x `head_dim`, scaled dot-product
    attention with keys and values over `seq` renamed to `memory`, softmax over
    `memory`, project back to `model`. `causal` masks later positions.
    `segment_ids` (integers over x's batch dimensions and `seq`) packs several
    sequences into one row: a position attends only to positions of its own
    segment, so packed examples see nothing of each other."""
    mb = f.module_builder
    model_dim = x.type.dim(model)
    proj = TensorType(x.dtype, (model_dim, heads, head_dim))
    per_head = [heads.name, head_dim.name]
    wq, wk, wv = (mb.var(f"{name}.{p}", proj, "glorot_uniform", seed=seed + i, fan_in=[model], fan_out=per_head)
                  for i, p in enumerate(("wq", "wk", "wv")))
    wo = mb.var(f"{name}.wo", proj, "glorot_uniform", seed=seed + 3, fan_in=per_head, fan_out=[model])
    batch = [n for n in x.names if n not in (seq, model)]
    q = f.einsum(x, f.read(wq), output=[*batch, seq, heads.name, head_dim.name])
    kv_input = f.rename(x, from_=seq, to=memory)
    k = f.einsum(kv_input, f.read(wk), output=[*batch, memory, heads.name, head_dim.name])
    v = f.einsum(kv_input, f.read(wv), output=[*batch, memory, heads.name, head_dim.name])
    logits = f.einsum(q, k, output=[*batch, heads.name, seq, memory]) * (1.0 / math.sqrt(head_dim.size))
    visible = None
    if causal:
        length = x.size(seq)
        query_pos = f.iota(shape={seq: length}, dim=seq)
        key_pos = f.iota(shape={memory: length}, dim=memory)
        visible = key_pos <= query_pos
    if segment_ids is not None:
        expected = {*batch, seq}
        if set(segment_ids.names) != expected or not segment_ids.dtype.is_integer:
            raise MeshirError(f"multi_head_attention: segment_ids must be integers over {sorted(expected)}, "
                              f"got {segment_ids.type}")
        same_segment = f.eq(segment_ids, f.rename(segment_ids, from_=seq, to=memory))
        visible = same_segment if visible is None else f.logical_and(same_segment, visible)
    if visible is not None:
        logits = f.select(visible, logits, f.full(shape=logits.type, value=-1e9, dtype=logits.dtype))
    weights = f.softmax(logits, dim=memory)
    context = f.einsum(weights, v, output=[*batch, seq, heads.name, head_dim.name])
    return f.einsum(context, f.read(wo), output=[*batch, seq, model])
