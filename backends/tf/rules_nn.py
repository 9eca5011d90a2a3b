"""TensorFlow rules for the nn ops: convolutions, pools, random draws and
dropout, softmax cross-entropy and layer norm.

Sliding windows follow the references' TensorFlow geometry: with padding =
same, `total = max((out - 1) * stride + extent - size, 0)` of padding, the
smaller half (`total // 2`) before the data; convolutions pass that padding to
TF's Conv2D explicitly. Pools sum or take the maximum of one strided slice per
window position, as the reference does, so any number of spatial dimensions
and every dtype work.

Random ops draw from each element's global linear index (random.py). In a
local program the op's result is this device's block of the global draw: the
op's `layout` attribute (the spmd pass's description of the result's layout,
as on `read`) says which block; without it the op draws the whole value.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from meshir.mesh import LayoutRules
from meshir.ops.nn import window_padding
from meshir.registry import OpView
from meshir.types import TensorType

from . import random
from .rules_common import Rule, align, as_type, compute_dtype, const, lowest, pad_axis, tf, zeros

# ---------------------------------------------------------------------------- sliding windows


def _conv(op: OpView, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    x_type, kernel_type = op.operand_types
    result = op.result_types[0]
    if result.num_elements == 0:
        return zeros(result)
    spatial, kernel_dims = op.attr("spatial"), op.attr("kernel_dims")
    cin, cout = op.attr("in_channels"), op.attr("out_channels")
    rank = len(spatial)
    strides = list(op.attr("strides") or (1,) * rank)
    dilations = list(op.attr("dilation") or (1,) * rank)
    batch = [n for n in x_type.names if n not in spatial and n != cin]
    wide = compute_dtype(result)
    # As NHWC x HWIO -> NHWC, N the batch dims flattened; a 1-d convolution has H = 1.
    xs = tf.cast(tf.transpose(x, const([x_type.axis_of(n) for n in (*batch, *spatial, cin)])), wide)
    batch_shape = [x_type.size_of(n) for n in batch]
    ks = tf.cast(tf.transpose(kernel, const([kernel_type.axis_of(n) for n in (*kernel_dims, cin, cout)])), wide)
    padding = [
        window_padding(x_type.size_of(n), result.size_of(n), kernel_type.size_of(k), s, d, op.attr("padding") == "same")
        for n, k, s, d in zip(spatial, kernel_dims, strides, dilations)
    ]
    if rank == 1:
        ks = ks[None]
        padding, strides, dilations = [(0, 0), *padding], [1, *strides], [1, *dilations]
    spatial_shape = [x_type.size_of(n) for n in spatial]
    xs = tf.reshape(xs, const([math.prod(batch_shape), *([1] if rank == 1 else []), *spatial_shape, x_type.size_of(cin)]))
    out = tf.nn.conv2d(xs, ks, strides=[1, *strides, 1], padding=[[0, 0], *map(list, padding), [0, 0]],
                       dilations=[1, *dilations, 1])
    out = tf.reshape(out, const([*batch_shape, *(result.size_of(n) for n in spatial), result.size_of(cout)]))
    order = [*batch, *spatial, cout]
    return as_type(tf.transpose(out, const([order.index(cout if n == cin else n) for n in x_type.names])), result)


def _pool_geometry(op: OpView) -> list[tuple[int, int, int, int, int]]:
    """Per spatial dimension: (axis, window, stride, padding before, after)."""
    x, result = op.operand_types[0], op.result_types[0]
    spatial, window = op.attr("spatial"), op.attr("window")
    strides = op.attr("strides") or window
    same = op.attr("padding") == "same"
    return [(x.axis_of(n), k, s, *window_padding(x.size_of(n), result.size_of(n), k, s, 1, same))
            for n, k, s in zip(spatial, window, strides)]


def _windows(op: OpView, padded: tf.Tensor):
    """Every window position's strided slice of the padded input, one output per element."""
    result = op.result_types[0]
    geometry = _pool_geometry(op)
    outputs = [result.shape[axis] for axis, *_ in geometry]
    for offsets in itertools.product(*(range(k) for _, k, *_ in geometry)):
        begin, end, steps = [0] * padded.shape.rank, list(padded.shape), [1] * padded.shape.rank
        for (axis, _, stride, _, _), offset, out in zip(geometry, offsets, outputs):
            begin[axis], end[axis], steps[axis] = offset, offset + (out - 1) * stride + 1, stride
        yield tf.strided_slice(padded, const(begin), const(end), const(steps))


def _padded(op: OpView, x: tf.Tensor, fill) -> tf.Tensor:
    for axis, _, _, low, high in _pool_geometry(op):
        if low or high:
            x = pad_axis(x, axis, low, high, fill)
    return x


def _max_pool(op: OpView, x: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    if result.num_elements == 0:
        return zeros(result)
    wide = compute_dtype(result)
    # Padding takes the lowest value, so it never wins.
    padded = _padded(op, tf.cast(x, wide), np.asarray(lowest(wide), wide.as_numpy_dtype))
    return as_type(_reduce_windows(op, padded, tf.maximum), result)


def _reduce_windows(op: OpView, padded: tf.Tensor, combine) -> tf.Tensor:
    out = None
    for window in _windows(op, padded):
        out = window if out is None else combine(out, window)
    return out


def _avg_pool(op: OpView, x: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    if result.num_elements == 0:
        return zeros(result)
    wide = compute_dtype(result)
    total = _reduce_windows(op, _padded(op, tf.cast(x, wide), np.zeros((), wide.as_numpy_dtype)), tf.add)
    # Padding adds nothing to the sum and, through the count, nothing to the divisor:
    # the count depends on the spatial position only, so it is computed here.
    spatial = {axis for axis, *_ in _pool_geometry(op)}
    ones = const(np.ones([x.shape[a] if a in spatial else 1 for a in range(x.shape.rank)]), wide)
    count = _reduce_windows(op, _padded(op, ones, np.zeros((), wide.as_numpy_dtype)), tf.add)
    return as_type(total / count, result)


# ---------------------------------------------------------------------------- random


def draw_index(op: OpView, ttype: TensorType) -> tf.Tensor:
    """Global linear indices of the elements of `ttype` this op computes: the whole
    value, or in a local function whose op carries a `layout`, this device's block."""
    rules = op.attributes.get("layout")
    if not isinstance(rules, LayoutRules) or op.function is None or not op.function.is_local:
        return random.linear_index(ttype.shape)
    offsets, global_shape = random.block_offsets(rules.layout_of(ttype), op.mesh, op.state.device, ttype.shape)
    return random.linear_index(ttype.shape, global_shape, offsets)


def _step(steps: tuple[tf.Tensor, ...]) -> int | tf.Tensor:
    return steps[0] if steps else 0


def _dropout(op: OpView, x: tf.Tensor, *step: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    rate = op.attr("rate")
    keep = random.keep_mask(op.attr("seed"), _step(step), 0, draw_index(op, result), rate)
    wide = compute_dtype(result)
    scaled = tf.cast(x, wide) * const(1.0 / (1.0 - rate), wide)
    return as_type(tf.where(keep, scaled, const(0, wide)), result)


def _wide_float(result: TensorType):
    """f64 results scale in float64; every other float in float32, like the draw."""
    return tf.float64 if result.dtype.itemsize == 8 else tf.float32


def _affine(offset: float, scale: float, x: tf.Tensor) -> tf.Tensor:
    """offset + scale * x with both numbers rounded to x's dtype first, as the
    reference; TF runs the product and the sum as separate kernels, each rounding
    once, as numpy does (no fused multiply-add to undo, unlike XLA)."""
    return const(offset, x.dtype) + const(scale, x.dtype) * x


def _random_uniform(op: OpView, *step: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    wide = _wide_float(result)
    u = tf.cast(random.uniform(op.attr("seed"), _step(step), 0, draw_index(op, result)), wide)
    low, high = wide.as_numpy_dtype(op.attr("minval")), wide.as_numpy_dtype(op.attr("maxval"))
    return as_type(_affine(low, high - low, u), result)


def _random_normal(op: OpView, *step: tf.Tensor) -> tf.Tensor:
    result = op.result_types[0]
    wide = _wide_float(result)
    z = tf.cast(random.normal(op.attr("seed"), _step(step), 0, draw_index(op, result)), wide)
    return as_type(_affine(op.attr("mean"), op.attr("stddev"), z), result)


# ---------------------------------------------------------------------------- losses and norms


def _softmax_cross_entropy(op: OpView, logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    logits_type, labels_type = op.operand_types
    result = op.result_types[0]
    wide = compute_dtype(result)
    z = tf.cast(logits, wide)
    target = tf.cast(align(labels, labels_type, logits_type.names), wide)
    axis = logits_type.axis_of(op.attr("dim"))
    peak = tf.reduce_max(z, axis=const(axis), keepdims=True)
    # Rows without a finite maximum (all -inf, or empty) must not shift by inf - inf.
    shifted = z - tf.where(tf.math.is_finite(peak), peak, const(0, wide))
    log_softmax = shifted - tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=const(axis), keepdims=True))
    return as_type(-tf.reduce_sum(target * log_softmax, axis=const(axis)), result)


def _layer_norm(op: OpView, x: tf.Tensor, *params: tf.Tensor) -> tf.Tensor:
    x_type = op.operand_types[0]
    wide = compute_dtype(x_type)
    axes = [x_type.axis_of(n) for n in op.attr("dims")]
    count = const(math.prod(x_type.shape[a] for a in axes), wide)
    values = tf.cast(x, wide)
    # sum / count rather than a mean: an empty dimension gives NaN, as the reference.
    mean = tf.reduce_sum(values, axis=const(axes), keepdims=True) / count
    centered = values - mean
    variance = tf.reduce_sum(centered * centered, axis=const(axes), keepdims=True) / count
    out = centered / tf.sqrt(variance + const(op.attr("epsilon"), wide))
    scale_and_bias = [align(tf.cast(p, wide), t, x_type.names) for p, t in zip(params, op.operand_types[1:])]
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
