"""XLA rules for the nn ops: convolutions, pools, random draws and dropout,
softmax cross-entropy and layer norm.

Sliding windows follow the references' TensorFlow geometry: with padding =
same, `total = max((out - 1) * stride + extent - size, 0)` of padding, the
smaller half (`total // 2`) before the data.

Random ops draw from each element's global linear index (random.py). In a
local program the op's result is this device's block of the global draw: the
op's `layout` attribute (the spmd pass's description of the result's layout,
as on `read`) says which block; without it the op draws the whole value.
"""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np

from meshir.mesh import LayoutRules
from meshir.ops.nn import window_padding
from meshir.registry import OpView
from meshir.types import TensorType

from . import random
from .rules_common import Rule, align, as_type, compute_dtype, lowest

# ---------------------------------------------------------------------------- sliding windows


def _conv(op: OpView, x: jax.Array, kernel: jax.Array) -> jax.Array:
    x_type, kernel_type = op.operand_types
    result = op.result_types[0]
    if result.num_elements == 0:
        return jnp.zeros(result.shape, result.dtype.numpy)
    spatial, kernel_dims = op.attr("spatial"), op.attr("kernel_dims")
    cin, cout = op.attr("in_channels"), op.attr("out_channels")
    rank = len(spatial)
    strides = tuple(op.attr("strides") or (1,) * rank)
    dilations = tuple(op.attr("dilation") or (1,) * rank)
    batch = [n for n in x_type.names if n not in spatial and n != cin]
    wide = compute_dtype(result)
    # As [N, spatial..., cin] x [kernel..., cin, cout] -> [N, spatial..., cout], N the batch dims flattened.
    xs = jnp.transpose(x, [x_type.axis_of(n) for n in (*batch, *spatial, cin)]).astype(wide)
    batch_shape = xs.shape[: len(batch)]
    xs = xs.reshape((math.prod(batch_shape), *xs.shape[len(batch):]))
    ks = jnp.transpose(kernel, [kernel_type.axis_of(n) for n in (*kernel_dims, cin, cout)]).astype(wide)
    padding = [
        window_padding(x_type.size_of(n), result.size_of(n), kernel_type.size_of(k), s, d, op.attr("padding") == "same")
        for n, k, s, d in zip(spatial, kernel_dims, strides, dilations)
    ]
    letters = "HW"[:rank] if rank == 2 else "W"
    out = jax.lax.conv_general_dilated(
        xs, ks, window_strides=strides, padding=padding, rhs_dilation=dilations,
        dimension_numbers=(f"N{letters}C", f"{letters}IO", f"N{letters}C"),
        precision=jax.lax.Precision.HIGHEST,
    )
    out = out.reshape((*batch_shape, *out.shape[1:]))
    order = [*batch, *spatial, cout]
    return as_type(jnp.transpose(out, [order.index(cout if n == cin else n) for n in x_type.names]), result)


def _pool_window(op: OpView) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Window, strides and padding for every axis of the operand (1, 1, (0, 0) off the spatial ones)."""
    x, result = op.operand_types[0], op.result_types[0]
    spatial = op.attr("spatial")
    window = dict(zip(spatial, op.attr("window")))
    strides = dict(zip(spatial, op.attr("strides") or op.attr("window")))
    same = op.attr("padding") == "same"
    dims, steps, pads = [], [], []
    for name in x.names:
        size = window.get(name, 1)
        stride = strides.get(name, 1)
        dims.append(size)
        steps.append(stride)
        pads.append(window_padding(x.size_of(name), result.size_of(name), size, stride, 1, same) if name in window else (0, 0))
    return dims, steps, pads


def _max_pool(op: OpView, x: jax.Array) -> jax.Array:
    result = op.result_types[0]
    if result.num_elements == 0:
        return jnp.zeros(result.shape, result.dtype.numpy)
    wide = compute_dtype(result)
    dims, steps, pads = _pool_window(op)
    # Padding takes the init value, the lowest one, so it never wins.
    out = jax.lax.reduce_window(x.astype(wide), np.array(lowest(wide), wide), jax.lax.max, dims, steps, pads)
    return as_type(out, result)


def _avg_pool(op: OpView, x: jax.Array) -> jax.Array:
    result = op.result_types[0]
    if result.num_elements == 0:
        return jnp.zeros(result.shape, result.dtype.numpy)
    wide = compute_dtype(result)
    dims, steps, pads = _pool_window(op)
    zero = np.array(0, wide)
    total = jax.lax.reduce_window(x.astype(wide), zero, jax.lax.add, dims, steps, pads)
    # Padding adds nothing to the sum and, through the count, nothing to the divisor.
    count = jax.lax.reduce_window(jnp.ones(x.shape, wide), zero, jax.lax.add, dims, steps, pads)
    return as_type(total / count, result)


# ---------------------------------------------------------------------------- random


def draw_index(op: OpView, ttype: TensorType) -> jax.Array:
    """Global linear indices of the elements of `ttype` this op computes: the whole
    value, or in a local function whose op carries a `layout`, this device's block."""
    rules = op.attributes.get("layout")
    if not isinstance(rules, LayoutRules) or op.function is None or not op.function.is_local:
        return random.linear_index(ttype.shape)
    offsets, global_shape = random.block_offsets(rules.layout_of(ttype), op.mesh, ttype.shape)
    return random.linear_index(ttype.shape, global_shape, offsets)


def _step(steps: tuple[jax.Array, ...]) -> int | jax.Array:
    return steps[0] if steps else 0


def _dropout(op: OpView, x: jax.Array, *step: jax.Array) -> jax.Array:
    result = op.result_types[0]
    rate = op.attr("rate")
    keep = random.keep_mask(op.attr("seed"), _step(step), 0, draw_index(op, result), rate)
    wide = compute_dtype(result)
    scaled = x.astype(wide) * np.asarray(1.0 / (1.0 - rate), wide)
    return as_type(jnp.where(keep, scaled, jnp.zeros((), wide)), result)


def _wide_float(result: TensorType) -> np.dtype:
    """f64 results scale in float64; every other float in float32, like the draw."""
    return np.dtype(np.float64 if result.dtype.itemsize == 8 else np.float32)


def _random_uniform(op: OpView, *step: jax.Array) -> jax.Array:
    result = op.result_types[0]
    wide = _wide_float(result)
    u = random.uniform(op.attr("seed"), _step(step), 0, draw_index(op, result)).astype(wide)
    low, high = wide.type(op.attr("minval")), wide.type(op.attr("maxval"))
    return as_type(random.affine(low, high - low, u), result)


def _random_normal(op: OpView, *step: jax.Array) -> jax.Array:
    result = op.result_types[0]
    wide = _wide_float(result)
    z = random.normal(op.attr("seed"), _step(step), 0, draw_index(op, result)).astype(wide)
    return as_type(random.affine(wide.type(op.attr("mean")), wide.type(op.attr("stddev")), z), result)


# ---------------------------------------------------------------------------- losses and norms


def _softmax_cross_entropy(op: OpView, logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits_type, labels_type = op.operand_types
    result = op.result_types[0]
    wide = compute_dtype(result)
    z = logits.astype(wide)
    target = align(labels, labels_type, logits_type.names).astype(wide)
    axis = logits_type.axis_of(op.attr("dim"))
    peak = jnp.max(z, axis=axis, keepdims=True, initial=-np.inf)
    # Rows without a finite maximum (all -inf, or empty) must not shift by inf - inf.
    shifted = z - jnp.where(jnp.isfinite(peak), peak, jnp.zeros((), wide))
    log_softmax = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
    return as_type(-jnp.sum(target * log_softmax, axis=axis), result)


def _layer_norm(op: OpView, x: jax.Array, *params: jax.Array) -> jax.Array:
    x_type = op.operand_types[0]
    wide = compute_dtype(x_type)
    axes = tuple(x_type.axis_of(n) for n in op.attr("dims"))
    count = np.asarray(math.prod(x.shape[a] for a in axes), wide)
    values = x.astype(wide)
    # sum / count rather than a mean: an empty dimension gives NaN, as the reference.
    mean = jnp.sum(values, axis=axes, keepdims=True) / count
    centered = values - mean
    variance = jnp.sum(centered * centered, axis=axes, keepdims=True) / count
    out = centered / jnp.sqrt(variance + np.asarray(op.attr("epsilon"), wide))
    scale_and_bias = [align(p.astype(wide), t, x_type.names) for p, t in zip(params, op.operand_types[1:])]
    if scale_and_bias:
        out = out * scale_and_bias[0]
    if len(scale_and_bias) == 2:
        out = out + scale_and_bias[1]
    return as_type(out, x_type)


RULES: dict[str, Rule] = {
    "conv1d": _conv,
    "conv2d": _conv,
    "max_pool": _max_pool,
    "avg_pool": _avg_pool,
    "dropout": _dropout,
    "random_uniform": _random_uniform,
    "random_normal": _random_normal,
    "softmax_cross_entropy": _softmax_cross_entropy,
    "layer_norm": _layer_norm,
}
