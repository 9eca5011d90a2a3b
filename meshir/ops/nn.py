"""nn ops: convolutions, pooling, dropout, random draws, softmax cross-entropy, layer norm.

Sliding windows (convolutions and pools) follow TensorFlow: for an input of
size `n`, window extent `e = (k - 1) * dilation + 1` and stride `s`,
`padding = valid` gives `(n - e) // s + 1` outputs (the window must fit once),
`padding = same` gives `ceil(n / s)` outputs with `max((out - 1) * s + e - n, 0)`
padding in total, the smaller half (`total // 2`) before the data.

Random ops draw from `meshir.random` over the value's global shape, so they give
the same values on every mesh and layout.
"""
from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import random
from ..attributes import DTYPE, FLOAT, INT, INTS, NAME, NAMES, SHAPE, AttrSpec, Name, one_of
from ..diagnostics import MeshirError
from ..dtypes import f32, i32
from ..ir import Operation
from ..registry import NOT_DIFFERENTIABLE, REGISTRY, OpView, defop
from ..types import Dim, TensorType
from .common import align, as_dtype, require_dims, require_dtype, require_same_dtype
from .grad_helpers import Cotangents, GradientRule, in_order, scalar, unbroadcast
from .windows import Window, avg_pool_gradient, conv_gradients, max_pool_gradient

if TYPE_CHECKING:
    from ..emitter import Emitter

_PADDING = AttrSpec(one_of("same", "valid"), Name("valid"))


def _compute_dtype(ttype: TensorType) -> np.dtype:
    """16-bit floats compute in float32 (numpy has few kernels for them)."""
    if ttype.dtype.is_float and ttype.dtype.itemsize < 4:
        return np.dtype(np.float32)
    return ttype.dtype.numpy


def _per_dim(view: OpView, attr: str, spatial: Sequence[str], default: tuple[int, ...]) -> tuple[int, ...]:
    """An INTS attribute with one entry per spatial dimension; `()` means `default`."""
    values = view.attr(attr) or default
    if len(values) != len(spatial):
        raise MeshirError(
            f"{view.name}: {attr} has {len(values)} entries but there {'is' if len(spatial) == 1 else 'are'} "
            f"{len(spatial)} spatial dimension{'s' if len(spatial) != 1 else ''} ({', '.join(spatial)})"
        )
    for name, value in zip(spatial, values):
        if value < 1:
            raise MeshirError(f"{view.name}: {attr} must be at least 1, got {value} for spatial dimension '{name}'")
    return tuple(values)


def window_padding(size: int, out: int, extent: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    """(padding before, padding after) that `out` windows of `extent` taps need
    along a dimension of `size`: none for `valid`, for `same` the total a last
    window needs, the smaller half before the data (TensorFlow's rule)."""
    if not same:
        return 0, 0
    total = max((out - 1) * stride + (extent - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _window(view: OpView, name: str, size: int, extent: int, stride: int, dilation: int, source: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) along one spatial dimension."""
    if extent < 1:
        raise MeshirError(f"{view.name}: {source} has size {extent}; a window needs at least 1 element")
    effective = (extent - 1) * dilation + 1
    if view.attr("padding") == "same":
        out = -(-size // stride)
        return (out, *window_padding(size, out, extent, stride, dilation, True))
    if size < effective:
        dilated = f", dilation {dilation}" if dilation != 1 else ""
        raise MeshirError(
            f"{view.name}: with padding = valid, spatial dimension '{name}' (size {size}) is smaller than the "
            f"window extent {effective} ({source} of size {extent}{dilated}); use padding = same or a larger input"
        )
    return (size - effective) // stride + 1, 0, 0


def _window_slices(ndim: int, axes: Sequence[int], offsets: Sequence[int], outputs: Sequence[int],
                   strides: Sequence[int], dilations: Sequence[int]) -> tuple[slice, ...]:
    """The strided view of a padded input that window position `offsets` reads for every output."""
    index = [slice(None)] * ndim
    for axis, offset, out, stride, dilation in zip(axes, offsets, outputs, strides, dilations):
        start = offset * dilation
        index[axis] = slice(start, start + (out - 1) * stride + 1, stride)
    return tuple(index)


# ---------------------------------------------------------------------------- convolutions


def conv_geometry(view: OpView, rank: int) -> list[tuple[int, int, int]]:
    """Check a convolution's operands and attributes; per spatial dimension (out, low, high)."""
    x, kernel = view.operand_types
    require_same_dtype(view, [x, kernel])
    require_dtype(view, x, "float", 0)
    spatial, kernel_dims = view.attr("spatial"), view.attr("kernel_dims")
    cin, cout = view.attr("in_channels"), view.attr("out_channels")
    if len(spatial) != rank:
        raise MeshirError(f"{view.name} needs exactly {rank} spatial dimension{'s' if rank > 1 else ''}, got {len(spatial)} ({', '.join(spatial) or 'none'})")
    if len(kernel_dims) != rank:
        raise MeshirError(f"{view.name}: kernel_dims must name {rank} dimension{'s' if rank > 1 else ''}, one per spatial dimension, got {len(kernel_dims)}")
    if cin == cout:
        raise MeshirError(f"{view.name}: in_channels and out_channels must be different dimensions, both are '{cin}'")
    if cin in spatial:
        raise MeshirError(f"{view.name}: in_channels '{cin}' cannot also be a spatial dimension")
    require_dims(view, x, [*spatial, cin], "input x")
    require_dims(view, kernel, [*kernel_dims, cin, cout], "kernel")
    for name in kernel.names:
        if name not in (*kernel_dims, cin, cout):
            raise MeshirError(
                f"{view.name}: kernel dimension '{name}' is none of kernel_dims ({', '.join(kernel_dims)}), "
                f"in_channels ({cin}) or out_channels ({cout})"
            )
    for name in kernel_dims:
        if x.has(name):
            raise MeshirError(f"{view.name}: kernel dimension '{name}' is also a dimension of x {x}; give kernel dimensions their own names")
    if x.has(cout):
        raise MeshirError(f"{view.name}: out_channels '{cout}' is already a dimension of x {x}")
    strides = _per_dim(view, "strides", spatial, (1,) * rank)
    dilations = _per_dim(view, "dilation", spatial, (1,) * rank)
    return [
        _window(view, name, x.size_of(name), kernel.size_of(kdim), stride, dilation, f"kernel dimension '{kdim}'")
        for name, kdim, stride, dilation in zip(spatial, kernel_dims, strides, dilations)
    ]


def _conv_type(rank: int):
    def rule(view: OpView) -> TensorType:
        x, kernel = view.operand_types
        geometry = conv_geometry(view, rank)
        out_sizes = dict(zip(view.attr("spatial"), (out for out, _, _ in geometry)))
        cin, cout = view.attr("in_channels"), view.attr("out_channels")
        dims = [
            kernel.dim(cout) if d.name == cin else Dim(d.name, out_sizes[d.name]) if d.name in out_sizes else d
            for d in x.dims
        ]
        return x.with_dims(dims)

    return rule


def _conv_reference(rank: int):
    def reference(op: OpView, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        x_type, kernel_type = op.operand_types
        result = op.result_types[0]
        geometry = conv_geometry(op, rank)
        spatial, kernel_dims = op.attr("spatial"), op.attr("kernel_dims")
        cin, cout = op.attr("in_channels"), op.attr("out_channels")
        batch = [n for n in x_type.names if n not in spatial and n != cin]
        wide = _compute_dtype(result)
        # Work as [batch..., spatial..., cin] x [kernel..., cin, cout] -> [batch..., spatial..., cout].
        xs = np.transpose(x, [x_type.axis_of(n) for n in (*batch, *spatial, cin)]).astype(wide)
        ks = np.transpose(kernel, [kernel_type.axis_of(n) for n in (*kernel_dims, cin, cout)]).astype(wide)
        outputs = [out for out, _, _ in geometry]
        out = np.zeros((*xs.shape[: len(batch)], *outputs, ks.shape[-1]), wide)
        if out.size:
            padded = np.pad(xs, [(0, 0)] * len(batch) + [(low, high) for _, low, high in geometry] + [(0, 0)])
            axes = range(len(batch), len(batch) + rank)
            strides = _per_dim(op, "strides", spatial, (1,) * rank)
            dilations = _per_dim(op, "dilation", spatial, (1,) * rank)
            for offsets in itertools.product(*(range(k) for k in ks.shape[:rank])):
                window = padded[_window_slices(padded.ndim, axes, offsets, outputs, strides, dilations)]
                out += np.tensordot(window, ks[offsets], axes=([-1], [0]))
        order = [*batch, *spatial, cout]
        return as_dtype(np.transpose(out, [order.index(cout if n == cin else n) for n in x_type.names]), result)

    return reference


def _conv_splittable(view: OpView) -> frozenset[str]:
    spatial = set(view.attr("spatial"))
    return frozenset([*(n for n in view.operand_types[0].names if n not in spatial), view.attr("out_channels")])


_CONV_ATTRS = {
    "spatial": AttrSpec(NAMES),
    "kernel_dims": AttrSpec(NAMES),
    "in_channels": AttrSpec(NAME),
    "out_channels": AttrSpec(NAME),
    "strides": AttrSpec(INTS, ()),
    "padding": _PADDING,
    "dilation": AttrSpec(INTS, ()),
}

for _rank, _name in ((1, "conv1d"), (2, "conv2d")):
    _conv = defop(
        _name, 2, "nn",
        f"{_name}(x, kernel): cross-correlation over {_rank} spatial dimension{'s' if _rank > 1 else ''} of x, as in "
        "TensorFlow; x's other dimensions are batch dimensions; the result has x's dimensions with spatial sizes "
        "changed and in_channels replaced, in place, by out_channels. strides/dilation default to all 1.",
        attrs=_CONV_ATTRS,
    )
    _conv.type_rule(_conv_type(_rank))
    _conv.reference(_conv_reference(_rank))
    _conv.splittable(_conv_splittable)


# ---------------------------------------------------------------------------- pooling


def _pool_geometry(view: OpView) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, int, int]]]:
    """Check a pool's attributes; (window, strides, per spatial dimension (out, low, high))."""
    x = view.operand_types[0]
    spatial = view.attr("spatial")
    if not spatial:
        raise MeshirError(f"{view.name}: spatial must name at least one dimension")
    require_dims(view, x, spatial, "operand")
    window = _per_dim(view, "window", spatial, ())
    strides = _per_dim(view, "strides", spatial, window)
    geometry = [
        _window(view, name, x.size_of(name), size, stride, 1, "the pooling window")
        for name, size, stride in zip(spatial, window, strides)
    ]
    return window, strides, geometry


def _pool_type(kinds: str):
    def rule(view: OpView) -> TensorType:
        x = view.operand_types[0]
        require_dtype(view, x, kinds)
        _, _, geometry = _pool_geometry(view)
        out_sizes = dict(zip(view.attr("spatial"), (out for out, _, _ in geometry)))
        return x.with_dims(Dim(d.name, out_sizes.get(d.name, d.size)) for d in x.dims)

    return rule


def _pool_windows(op: OpView, padded: np.ndarray):
    """Every window offset's strided view of the padded input."""
    x = op.operand_types[0]
    window, strides, geometry = _pool_geometry(op)
    axes = [x.axis_of(n) for n in op.attr("spatial")]
    outputs = [out for out, _, _ in geometry]
    for offsets in itertools.product(*(range(k) for k in window)):
        yield padded[_window_slices(padded.ndim, axes, offsets, outputs, strides, (1,) * len(axes))]


def _pool_padding(op: OpView) -> list[tuple[int, int]]:
    x = op.operand_types[0]
    _, _, geometry = _pool_geometry(op)
    pads = dict(zip(op.attr("spatial"), ((low, high) for _, low, high in geometry)))
    return [pads.get(n, (0, 0)) for n in x.names]


def _max_pool(op: OpView, x: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    wide = _compute_dtype(result)
    lowest = -np.inf if np.issubdtype(wide, np.floating) else np.iinfo(wide).min
    out = np.full(result.shape, lowest, wide)
    if out.size:
        padded = np.pad(x.astype(wide), _pool_padding(op), constant_values=lowest)
        for view in _pool_windows(op, padded):
            out = np.maximum(out, view)
    return as_dtype(out, result)


def _avg_pool(op: OpView, x: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    wide = _compute_dtype(result)
    total = np.zeros(result.shape, wide)
    count = np.zeros(result.shape, wide)
    if total.size:
        pads = _pool_padding(op)
        # Padding adds nothing to the sum and, through `count`, nothing to the divisor.
        for view in _pool_windows(op, np.pad(x.astype(wide), pads)):
            total += view
        for view in _pool_windows(op, np.pad(np.ones(x.shape, wide), pads)):
            count += view
    with np.errstate(all="ignore"):
        return as_dtype(total / count, result)


def _pool_splittable(view: OpView) -> frozenset[str]:
    spatial = set(view.attr("spatial"))
    return frozenset(n for n in view.operand_types[0].names if n not in spatial)


_POOL_ATTRS = {"spatial": AttrSpec(NAMES), "window": AttrSpec(INTS), "strides": AttrSpec(INTS, ()), "padding": _PADDING}

for _name, _kinds, _fn, _doc in (
    ("max_pool", "numeric", _max_pool, "The maximum of each window over the spatial dimensions; padding never wins."),
    ("avg_pool", "float", _avg_pool, "The mean of each window over the spatial dimensions, counting only unpadded elements."),
):
    _pool = defop(_name, 1, "nn", _doc + " strides default to the window.", attrs=_POOL_ATTRS)
    _pool.type_rule(_pool_type(_kinds))
    _pool.reference(_fn)
    _pool.splittable(_pool_splittable)


# ---------------------------------------------------------------------------- random


def _check_step(view: OpView, index: int) -> None:
    step = view.operand_types[index]
    if step.dtype != i32 or step.rank:
        raise MeshirError(f"{view.name}: operand {index} (the step) must be an i32 scalar, i32[], got {step}")


def _step(arrays: Sequence[np.ndarray]) -> int | np.ndarray:
    return arrays[0] if arrays else 0


dropout = defop(
    "dropout", (1, 2), "nn",
    "dropout(x) or dropout(x, step): zero each element with probability `rate` and scale the kept ones by "
    "1 / (1 - rate). The mask is uniform(seed, step, 0, global index) >= rate (see meshir.random).",
    attrs={"rate": AttrSpec(FLOAT), "seed": AttrSpec(INT)},
)


@dropout.type_rule
def _dropout_type(view: OpView) -> TensorType:
    x = view.operand_types[0]
    require_dtype(view, x, "float")
    rate = view.attr("rate")
    if not 0 <= rate < 1:
        raise MeshirError(f"dropout rate must be in [0, 1), got {rate}")
    if len(view.operand_types) == 2:
        _check_step(view, 1)
    random.check_drawable(x.num_elements, "dropout")
    return x


@dropout.reference
def _dropout(op: OpView, x: np.ndarray, *step: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    rate = op.attr("rate")
    keep = random.keep_mask(op.attr("seed"), _step(step), 0, random.global_index(x.shape), rate)
    wide = _compute_dtype(result)
    scaled = x.astype(wide) * wide.type(1.0 / (1.0 - rate))
    return as_dtype(np.where(keep, scaled, wide.type(0)), result)


# Draws depend on each element's global index, which a block does not know.
dropout.splittable("none")


def _random_type(range_check):
    def rule(view: OpView) -> TensorType:
        dtype = view.attr("dtype")
        if not dtype.is_float:
            raise MeshirError(f"{view.name}: dtype must be a float type, got {dtype}")
        if view.operand_types:
            _check_step(view, 0)
        range_check(view)
        result = TensorType(dtype, view.attr("shape"))
        random.check_drawable(result.num_elements, view.name)
        return result

    return rule


def _uniform_range(view: OpView) -> None:
    if view.attr("minval") > view.attr("maxval"):
        raise MeshirError(f"random_uniform: minval {view.attr('minval')} is greater than maxval {view.attr('maxval')}")


def _normal_range(view: OpView) -> None:
    if view.attr("stddev") < 0:
        raise MeshirError(f"random_normal: stddev must be at least 0, got {view.attr('stddev')}")


def _wide_float(result: TensorType) -> type:
    """f64 results scale in float64; every other float in float32, like the draw itself."""
    return np.float64 if result.dtype.itemsize == 8 else np.float32


def _random_uniform(op: OpView, *step: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    wide = _wide_float(result)
    u = random.uniform(op.attr("seed"), _step(step), 0, random.global_index(result.shape)).astype(wide)
    low, high = wide(op.attr("minval")), wide(op.attr("maxval"))
    return as_dtype(low + (high - low) * u, result)


def _random_normal(op: OpView, *step: np.ndarray) -> np.ndarray:
    result = op.result_types[0]
    wide = _wide_float(result)
    z = random.normal(op.attr("seed"), _step(step), 0, random.global_index(result.shape)).astype(wide)
    return as_dtype(wide(op.attr("mean")) + wide(op.attr("stddev")) * z, result)


_RANDOM_ATTRS = {"shape": AttrSpec(SHAPE), "seed": AttrSpec(INT), "dtype": AttrSpec(DTYPE, f32)}

for _name, _params, _check, _fn, _doc in (
    ("random_uniform", {"minval": AttrSpec(FLOAT, 0.0), "maxval": AttrSpec(FLOAT, 1.0)}, _uniform_range, _random_uniform,
     "Uniform in [minval, maxval) (16-bit dtypes may round up to maxval)"),
    ("random_normal", {"mean": AttrSpec(FLOAT, 0.0), "stddev": AttrSpec(FLOAT, 1.0)}, _normal_range, _random_normal,
     "mean + stddev * a standard normal"),
):
    _random_op = defop(
        _name, (0, 1), "nn",
        f"{_doc}, of `shape`, drawn by meshir.random from (seed, the optional i32[] step operand, stream 0).",
        attrs={**_RANDOM_ATTRS, **_params},
    )
    _random_op.type_rule(_random_type(_check))
    _random_op.reference(_fn)
    _random_op.splittable("none")


# ---------------------------------------------------------------------------- losses and norms

softmax_cross_entropy = defop(
    "softmax_cross_entropy", 2, "nn",
    "-sum(labels * log_softmax(logits)) over `dim`; labels may order their dimensions differently.",
    attrs={"dim": AttrSpec(NAME)},
)


@softmax_cross_entropy.type_rule
def _sce_type(view: OpView) -> TensorType:
    logits, labels = view.operand_types
    require_same_dtype(view, [logits, labels])
    require_dtype(view, logits, "float", 0)
    require_dims(view, logits, [view.attr("dim")], "logits")
    if set(logits.names) != set(labels.names):
        raise MeshirError(
            f"softmax_cross_entropy: labels {labels} must have the same dimensions as logits {logits} (in any order)"
        )
    return logits.without([view.attr("dim")])


@softmax_cross_entropy.reference
def _softmax_cross_entropy(op: OpView, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    logits_type, labels_type = op.operand_types
    result = op.result_types[0]
    wide = _compute_dtype(result)
    z = logits.astype(wide)
    target = align(labels, labels_type, logits_type.names).astype(wide)
    axis = logits_type.axis_of(op.attr("dim"))
    with np.errstate(all="ignore"):
        peak = np.max(z, axis=axis, keepdims=True, initial=-np.inf)
        # Rows without a finite maximum (all -inf, or empty) must not shift by inf - inf.
        peak = np.where(np.isfinite(peak), peak, 0)
        shifted = z - peak
        log_softmax = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
        return as_dtype(-np.sum(target * log_softmax, axis=axis), result)


softmax_cross_entropy.splittable(
    lambda view: frozenset(n for n in view.operand_types[0].names if n != view.attr("dim"))
)


layer_norm = defop(
    "layer_norm", (1, 3), "nn",
    "layer_norm(x[, scale[, bias]]): (x - mean) / sqrt(variance + epsilon) over `dims` (biased variance), "
    "then * scale + bias, broadcast by name; scale's and bias's dimensions must be x's.",
    attrs={"dims": AttrSpec(NAMES), "epsilon": AttrSpec(FLOAT, 1e-6)},
)

@layer_norm.type_rule
def _layer_norm_type(view: OpView) -> TensorType:
    x = view.operand_types[0]
    require_same_dtype(view, view.operand_types)
    require_dtype(view, x, "float")
    dims = view.attr("dims")
    if not dims:
        raise MeshirError("layer_norm: dims must name at least one dimension to normalize over")
    require_dims(view, x, dims, "operand x")
    for role, param in zip(("scale", "bias"), view.operand_types[1:]):
        for name in param.names:
            if not x.has(name):
                raise MeshirError(f"layer_norm: {role} {param} has dimension '{name}', which x {x} does not have")
    if view.attr("epsilon") < 0:
        raise MeshirError(f"layer_norm: epsilon must be at least 0, got {view.attr('epsilon')}")
    return x


@layer_norm.reference
def _layer_norm(op: OpView, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
    x_type = op.operand_types[0]
    wide = _compute_dtype(x_type)
    axes = tuple(x_type.axis_of(n) for n in op.attr("dims"))
    count = math.prod(x.shape[a] for a in axes)
    values = x.astype(wide)
    with np.errstate(all="ignore"):
        # sum / count rather than np.mean: an empty dimension gives NaN without a warning.
        mean = np.sum(values, axis=axes, keepdims=True) / wide.type(count)
        centered = values - mean
        variance = np.sum(centered * centered, axis=axes, keepdims=True) / wide.type(count)
        out = centered / np.sqrt(variance + wide.type(op.attr("epsilon")))
        scale_and_bias = [align(p.astype(wide), t, x_type.names) for p, t in zip(params, op.operand_types[1:])]
        if scale_and_bias:
            out = out * scale_and_bias[0]
        if len(scale_and_bias) == 2:
            out = out + scale_and_bias[1]
    return as_dtype(out, x_type)


layer_norm.splittable(lambda view: frozenset(n for n in view.operand_types[0].names if n not in view.attr("dims")))


# ---------------------------------------------------------------------------- gradients


def _conv_gradient(rank: int) -> GradientRule:
    def rule(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
        view = OpView(op.opdef, op.operand_types, op.attributes)
        x, kernel = op.operands
        spatial, kernel_dims = op.attr("spatial"), op.attr("kernel_dims")
        strides = _per_dim(view, "strides", spatial, (1,) * rank)
        dilations = _per_dim(view, "dilation", spatial, (1,) * rank)
        windows = [
            Window(name, x.type.size_of(name), out, kernel.type.size_of(kdim), stride, dilation, low, high)
            for name, kdim, stride, dilation, (out, low, high)
            in zip(spatial, kernel_dims, strides, dilations, conv_geometry(view, rank))
        ]
        return conv_gradients(e, op.operands, cotangents[0], windows, kernel_dims, op.attr("in_channels"), op.attr("out_channels"))

    return rule


for _rank, _name in ((1, "conv1d"), (2, "conv2d")):
    REGISTRY[_name].gradient(_conv_gradient(_rank))


def _pool_geometry_windows(op: Operation) -> list[Window]:
    window, strides, geometry = _pool_geometry(OpView(op.opdef, op.operand_types, op.attributes))
    x = op.operands[0].type
    return [Window(name, x.size_of(name), out, size, stride, 1, low, high)
            for name, size, stride, (out, low, high) in zip(op.attr("spatial"), window, strides, geometry)]


REGISTRY["max_pool"].gradient(lambda e, op, cotangents: [
    max_pool_gradient(e, op.operands[0], op.result, cotangents[0], _pool_geometry_windows(op))
])
REGISTRY["avg_pool"].gradient(lambda e, op, cotangents: [
    avg_pool_gradient(e, op.operands[0], cotangents[0], _pool_geometry_windows(op))
])

# The same draw (seed, step, global index) drops the same elements of the cotangent.
dropout.gradient(lambda e, op, cotangents: [
    e.emit("dropout", cotangents[0], *op.operands[1:], rate=op.attr("rate"), seed=op.attr("seed")),
    *[None] * (len(op.operands) - 1),
])
for _name in ("random_uniform", "random_normal"):
    REGISTRY[_name].gradient(NOT_DIFFERENTIABLE)


@softmax_cross_entropy.gradient
def _softmax_cross_entropy_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """logits: g * (softmax(logits) * sum(labels) - labels); labels: -g * log_softmax(logits)."""
    (g,), (logits, labels), dim = cotangents, op.operands, op.attr("dim")
    total = e.emit("reduce_sum", labels, dims=[dim])
    expected = e.emit("mul", e.emit("softmax", logits, dim=dim), total)
    d_logits = e.emit("mul", e.emit("sub", expected, labels), g)
    d_labels = e.emit("mul", e.emit("neg", e.emit("log_softmax", logits, dim=dim)), g)
    return [d_logits, in_order(e, d_labels, labels.type.names)]


@layer_norm.gradient
def _layer_norm_gradient(e: Emitter, op: Operation, cotangents: Cotangents) -> Cotangents:
    """With xhat = (x - mean) * rstd: dx = rstd * (h - mean(h) - xhat * mean(h * xhat)),
    h = g * scale; d scale = sum(g * xhat), d bias = sum(g), over what they lack."""
    (g,), (x, *params) = cotangents, op.operands
    dims, epsilon = op.attr("dims"), op.attr("epsilon")
    # xhat from the mean and rstd that dx needs anyway, not by normalizing x a second time.
    centered = e.emit("sub", x, e.emit("reduce_mean", x, dims=dims))
    variance = e.emit("reduce_mean", e.emit("square", centered), dims=dims)
    rstd = e.emit("rsqrt", e.emit("add", variance, scalar(e, epsilon, x)))
    xhat = e.emit("mul", centered, rstd)
    h = e.emit("mul", g, params[0]) if params else g
    mean_h = e.emit("reduce_mean", h, dims=dims)
    mean_hx = e.emit("reduce_mean", e.emit("mul", h, xhat), dims=dims)
    dx = e.emit("mul", e.emit("sub", e.emit("sub", h, mean_h), e.emit("mul", xhat, mean_hx)), rstd)
    grads = [dx]
    if params:
        grads.append(unbroadcast(e, e.emit("mul", g, xhat), params[0].type))
    if len(params) == 2:
        grads.append(unbroadcast(e, g, params[1].type))
    return grads
