"""nn ops against direct-loop numpy implementations written here."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from meshir import random
from meshir.attributes import Name
from meshir.diagnostics import MeshirError
from meshir.dtypes import bf16, f16, f32, f64, i32, i64
from meshir.registry import OpView, lookup
from meshir.types import Dim, TensorType, tensor_type
from tests.opcheck import infer, run

N = Name
RNG = np.random.default_rng(1234)


def expect_error(message: str, name: str, types: list, **attrs) -> None:
    with pytest.raises(MeshirError) as error:
        infer(name, types, **attrs)
    assert error.value.message == message


def splittable(name: str, types: list, **attrs) -> frozenset[str]:
    opdef = lookup(name)
    view = OpView(opdef, types, opdef.check_attributes(attrs))
    view.result_types = opdef.infer(view)
    return opdef.split_dims(view)


def window_plan(size: int, extent: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    """(outputs, padding before) as TensorFlow defines them."""
    effective = dilation * (extent - 1) + 1
    if same:
        out = math.ceil(size / stride)
        return out, max((out - 1) * stride + effective - size, 0) // 2
    return (size - effective) // stride + 1, 0


# ---------------------------------------------------------------------------- convolutions


def direct_conv(x: np.ndarray, kernel: np.ndarray, strides, dilation, same: bool) -> np.ndarray:
    """x [batch, *spatial, c], kernel [*k, c, f]: every output element summed term by term."""
    rank = kernel.ndim - 2
    plans = [window_plan(n, k, s, d, same) for n, k, s, d in zip(x.shape[1:-1], kernel.shape[:rank], strides, dilation)]
    out = np.zeros((x.shape[0], *(o for o, _ in plans), kernel.shape[-1]))
    for b in range(x.shape[0]):
        for position in np.ndindex(*(o for o, _ in plans)):
            for offset in np.ndindex(*kernel.shape[:rank]):
                source = [p * s - low + o * d for p, s, (_, low), o, d in zip(position, strides, plans, offset, dilation)]
                if all(0 <= i < n for i, n in zip(source, x.shape[1:-1])):
                    out[(b, *position)] += x[(b, *source)].astype(np.float64) @ kernel[offset].astype(np.float64)
    return out


CONV2D = dict(spatial=(N("h"), N("w")), kernel_dims=(N("kh"), N("kw")), in_channels=N("c"), out_channels=N("f"))


@pytest.mark.parametrize("strides, dilation, padding", [
    ((1, 1), (1, 1), "valid"), ((1, 1), (1, 1), "same"), ((2, 3), (1, 1), "same"), ((2, 1), (1, 1), "valid"),
    ((1, 1), (2, 2), "same"), ((2, 2), (2, 1), "valid"), ((3, 2), (1, 2), "same"),
])
def test_conv2d_matches_direct_loops_with_dims_in_any_order(strides, dilation, padding) -> None:
    # x is [h, c, b, w] and the kernel [f, kw, c, kh]; the loops want [b, h, w, c] and [kh, kw, c, f].
    x = RNG.standard_normal((7, 3, 2, 6)).astype(np.float32)
    kernel = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x_type = tensor_type(f32, h=7, c=3, b=2, w=6)
    kernel_type = tensor_type(f32, f=4, kw=2, c=3, kh=3)
    out, = run("conv2d", [(x, x_type), (kernel, kernel_type)], **CONV2D, strides=strides, dilation=dilation, padding=N(padding))
    expected = direct_conv(x.transpose(2, 0, 3, 1), kernel.transpose(3, 1, 2, 0), strides, dilation, padding == "same")
    # The result keeps x's order with c replaced by f: [h, f, b, w].
    np.testing.assert_allclose(out, expected.transpose(1, 3, 0, 2), rtol=1e-5, atol=1e-5)
    result = infer("conv2d", [x_type, kernel_type], **CONV2D, strides=strides, dilation=dilation, padding=N(padding))[0]
    assert result.names == ("h", "f", "b", "w")


@pytest.mark.parametrize("stride, dilation, padding", [(1, 1, "valid"), (2, 1, "same"), (1, 3, "same"), (3, 2, "valid")])
def test_conv1d_matches_direct_loops(stride, dilation, padding) -> None:
    x = RNG.standard_normal((2, 11, 3)).astype(np.float64)
    kernel = RNG.standard_normal((3, 3, 2)).astype(np.float64)
    out, = run("conv1d", [(x, tensor_type(f64, b=2, t=11, c=3)), (kernel, tensor_type(f64, k=3, c=3, f=2))],
               spatial=N("t"), kernel_dims=N("k"), in_channels=N("c"), out_channels=N("f"),
               strides=stride, dilation=dilation, padding=N(padding))
    np.testing.assert_allclose(out, direct_conv(x, kernel, (stride,), (dilation,), padding == "same"), rtol=1e-12)


def test_conv1d_by_hand_and_without_batch_dims() -> None:
    attrs = dict(spatial=N("t"), kernel_dims=N("k"), in_channels=N("c"), out_channels=N("f"))
    x = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    kernel = np.array([[[1.0]], [[10.0]]], dtype=np.float32)
    types = [tensor_type(f32, t=4, c=1), tensor_type(f32, k=2, c=1, f=1)]
    valid, = run("conv1d", list(zip([x, kernel], types)), **attrs)
    np.testing.assert_array_equal(valid[:, 0], [21, 32, 43])  # cross-correlation: no kernel flip
    same, = run("conv1d", list(zip([x, kernel], types)), **attrs, padding=N("same"))
    np.testing.assert_array_equal(same[:, 0], [21, 32, 43, 4])  # the one pad element goes after


def test_conv2d_in_bf16_and_with_an_empty_batch() -> None:
    x = RNG.standard_normal((1, 5, 5, 2)).astype(ml_dtypes.bfloat16)
    kernel = RNG.standard_normal((3, 3, 2, 2)).astype(ml_dtypes.bfloat16)
    types = [tensor_type(bf16, b=1, h=5, w=5, c=2), tensor_type(bf16, kh=3, kw=3, c=2, f=2)]
    out, = run("conv2d", list(zip([x, kernel], types)), **CONV2D, padding=N("same"))
    np.testing.assert_allclose(out.astype(np.float64), direct_conv(x, kernel, (1, 1), (1, 1), True), rtol=2e-2, atol=5e-2)
    empty, = run("conv2d", [(np.zeros((0, 5, 5, 2)), types[0].resized("b", 0).with_dtype(f32)),
                            (kernel.astype(np.float32), types[1].with_dtype(f32))], **CONV2D)
    assert empty.shape == (0, 3, 3, 2)


X2 = tensor_type(f32, b=2, h=5, w=6, c=3)
K2 = tensor_type(f32, kh=3, kw=2, c=3, f=4)


@pytest.mark.parametrize("types, attrs, message", [
    ([X2, K2], dict(spatial=N("h")), "conv2d needs exactly 2 spatial dimensions, got 1 (h)"),
    ([X2, K2], dict(kernel_dims=N("kh")), "conv2d: kernel_dims must name 2 dimensions, one per spatial dimension, got 1"),
    ([X2, K2], dict(out_channels=N("c")), "conv2d: in_channels and out_channels must be different dimensions, both are 'c'"),
    ([X2, K2], dict(in_channels=N("h")), "conv2d: in_channels 'h' cannot also be a spatial dimension"),
    ([X2, K2], dict(spatial=(N("h"), N("z"))), "conv2d: dimension 'z' is not in the input x f32[b=2, h=5, w=6, c=3] (dimensions: b, h, w, c)"),
    ([X2, K2.without(["f"])], {}, "conv2d: dimension 'f' is not in the kernel f32[kh=3, kw=2, c=3] (dimensions: kh, kw, c)"),
    ([X2, tensor_type(f32, kh=3, kw=2, c=3, f=4, g=1)], {}, "conv2d: kernel dimension 'g' is none of kernel_dims (kh, kw), in_channels (c) or out_channels (f)"),
    ([tensor_type(f32, kh=2, h=5, w=6, c=3), K2], {}, "conv2d: kernel dimension 'kh' is also a dimension of x f32[kh=2, h=5, w=6, c=3]; give kernel dimensions their own names"),
    ([tensor_type(f32, f=4, h=5, w=6, c=3), K2], {}, "conv2d: out_channels 'f' is already a dimension of x f32[f=4, h=5, w=6, c=3]"),
    ([X2, K2], dict(strides=(1, 1, 1)), "conv2d: strides has 3 entries but there are 2 spatial dimensions (h, w)"),
    ([X2, K2], dict(dilation=(1, 0)), "conv2d: dilation must be at least 1, got 0 for spatial dimension 'w'"),
    ([X2, K2], dict(dilation=(3, 1)), "conv2d: with padding = valid, spatial dimension 'h' (size 5) is smaller than the window extent 7 (kernel dimension 'kh' of size 3, dilation 3); use padding = same or a larger input"),
    ([X2, K2.resized("kw", 0)], {}, "conv2d: kernel dimension 'kw' has size 0; a window needs at least 1 element"),
    ([X2.with_dtype(i32), K2.with_dtype(i32)], {}, "conv2d: operand 0 must have a float dtype, got i32"),
    ([X2, K2.with_dtype(f64)], {}, "conv2d: operand 1 has dtype f64 but operand 0 has f32; cast one of them"),
])
def test_conv_errors(types, attrs, message) -> None:
    expect_error(message, "conv2d", types, **{**CONV2D, **attrs})


def test_conv1d_counts_its_spatial_dims_and_conv_splits() -> None:
    expect_error("conv1d needs exactly 1 spatial dimension, got 2 (h, w)", "conv1d", [X2, K2], **CONV2D)
    assert splittable("conv2d", [X2, K2], **CONV2D) == {"b", "c", "f"}


# ---------------------------------------------------------------------------- pooling


def direct_pool(x: np.ndarray, window, strides, same: bool, reduce) -> np.ndarray:
    """x [batch, *spatial, c]: each output reduces the unpadded elements of its window."""
    plans = [window_plan(n, k, s, 1, same) for n, k, s in zip(x.shape[1:-1], window, strides)]
    out = np.zeros((x.shape[0], *(o for o, _ in plans), x.shape[-1]))
    for b in range(x.shape[0]):
        for position in np.ndindex(*(o for o, _ in plans)):
            elements = [
                x[(b, *source)]
                for offset in np.ndindex(*window)
                for source in [[p * s - low + o for p, s, (_, low), o in zip(position, strides, plans, offset)]]
                if all(0 <= i < n for i, n in zip(source, x.shape[1:-1]))
            ]
            out[(b, *position)] = reduce(np.stack(elements).astype(np.float64), axis=0)
    return out


POOL = dict(spatial=(N("h"), N("w")))
XP = tensor_type(f32, b=2, h=7, w=5, c=3)


@pytest.mark.parametrize("window, strides, padding", [
    ((2, 2), (), "valid"), ((3, 2), (), "same"), ((3, 3), (1, 1), "same"), ((2, 3), (3, 1), "valid"), ((1, 4), (2, 2), "same"),
])
def test_pools_match_direct_loops(window, strides, padding) -> None:
    # Negative inputs: a zero pad would win a max and pull down a mean.
    x = (-1 - RNG.random((2, 7, 5, 3))).astype(np.float32)
    attrs = dict(**POOL, window=window, strides=strides, padding=N(padding))
    effective_strides = strides or window
    for name, reduce in (("max_pool", np.max), ("avg_pool", np.mean)):
        out, = run(name, [(x, XP)], **attrs)
        np.testing.assert_allclose(out, direct_pool(x, window, effective_strides, padding == "same", reduce), rtol=1e-6)


def test_max_pool_of_integers_over_one_dim() -> None:
    x = np.array([[-5, -7, -1, -9, -3]], dtype=np.int64)
    out, = run("max_pool", [(x, tensor_type(i64, b=1, t=5))], spatial=N("t"), window=2, padding=N("same"))
    np.testing.assert_array_equal(out, [[-5, -1, -3]])


def test_pool_errors_and_splits() -> None:
    expect_error("avg_pool: operand 0 must have a float dtype, got i32", "avg_pool", [XP.with_dtype(i32)], **POOL, window=(2, 2))
    expect_error("max_pool: window has 1 entries but there are 2 spatial dimensions (h, w)", "max_pool", [XP], **POOL, window=2)
    expect_error("max_pool: window must be at least 1, got 0 for spatial dimension 'h'", "max_pool", [XP], **POOL, window=(0, 1))
    expect_error("max_pool: strides must be at least 1, got -1 for spatial dimension 'w'", "max_pool", [XP], **POOL, window=(1, 1), strides=(1, -1))
    expect_error("max_pool: spatial must name at least one dimension", "max_pool", [XP], spatial=(), window=())
    expect_error("max_pool: dimension 'z' is not in the operand f32[b=2, h=7, w=5, c=3] (dimensions: b, h, w, c)", "max_pool", [XP], spatial=N("z"), window=2)
    expect_error("avg_pool: with padding = valid, spatial dimension 'w' (size 5) is smaller than the window extent 6 "
                 "(the pooling window of size 6); use padding = same or a larger input", "avg_pool", [XP], **POOL, window=(2, 6))
    assert infer("avg_pool", [XP], **POOL, window=(2, 6), padding=N("same"))[0] == tensor_type(f32, b=2, h=4, w=1, c=3)
    assert splittable("max_pool", [XP], **POOL, window=(2, 2)) == {"b", "c"}


# ---------------------------------------------------------------------------- dropout and random draws

XD = tensor_type(f32, b=200, h=300)
STEP = tensor_type(i32)


def test_dropout_drops_rate_and_scales_the_rest() -> None:
    x = RNG.standard_normal(XD.shape).astype(np.float32) + 3
    out, = run("dropout", [(x, XD)], rate=0.25, seed=7)
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-6)
    # The mask is the layout-invariant draw: uniform(seed, step 0, stream 0, global index) >= rate.
    u = random.uniform(7, 0, 0, np.arange(x.size, dtype=np.uint32).reshape(x.shape))
    np.testing.assert_array_equal(kept, u >= 0.25)


def test_dropout_step_operand_changes_the_mask() -> None:
    x = np.ones(XD.shape, dtype=np.float32)
    step0, = run("dropout", [(x, XD), (np.int32(0), STEP)], rate=0.5, seed=1)
    no_step, = run("dropout", [(x, XD)], rate=0.5, seed=1)
    step5, = run("dropout", [(x, XD), (np.int32(5), STEP)], rate=0.5, seed=1)
    np.testing.assert_array_equal(step0, no_step)
    assert 0.4 < np.mean((step0 == 0) != (step5 == 0)) < 0.6
    assert set(np.unique(step5)) == {0.0, 2.0}


def test_dropout_rate_zero_is_identity_and_bf16() -> None:
    x = RNG.standard_normal((4, 5)).astype(ml_dtypes.bfloat16)
    out, = run("dropout", [(x, tensor_type(bf16, a=4, b=5))], rate=0.0, seed=3)
    np.testing.assert_array_equal(out, x)
    half, = run("dropout", [(x, tensor_type(bf16, a=4, b=5))], rate=0.5, seed=3)
    kept = half != 0
    np.testing.assert_array_equal(half[kept], (x[kept].astype(np.float32) * 2).astype(ml_dtypes.bfloat16))


@pytest.mark.parametrize("rate", [1.5, 1.0, -0.1])
def test_dropout_rate_must_be_a_probability_of_dropping(rate: float) -> None:
    expect_error(f"dropout rate must be in [0, 1), got {rate}", "dropout", [XD], rate=rate, seed=0)


def test_dropout_operand_errors_and_splits() -> None:
    expect_error("dropout: operand 1 (the step) must be an i32 scalar, i32[], got i64[]", "dropout", [XD, tensor_type(i64)], rate=0.1, seed=0)
    expect_error("dropout: operand 1 (the step) must be an i32 scalar, i32[], got i32[n=1]", "dropout", [XD, tensor_type(i32, n=1)], rate=0.1, seed=0)
    expect_error("dropout: operand 0 must have a float dtype, got i32", "dropout", [XD.with_dtype(i32)], rate=0.1, seed=0)
    with pytest.raises(MeshirError) as error:
        infer("dropout", [XD], rate=0.1)
    assert error.value.message == "dropout needs attribute 'seed' (an integer)"
    assert splittable("dropout", [XD, STEP], rate=0.1, seed=0) == set()


SHAPE = (Dim("a", 300), Dim("b", 200))


def test_random_uniform_range_statistics_and_step() -> None:
    out, = run("random_uniform", [], shape=SHAPE, seed=4, minval=-2.0, maxval=6.0)
    assert out.dtype == np.float32 and out.min() >= -2 and out.max() < 6
    assert abs(out.mean() - 2.0) < 0.05 and abs(out.var() - 64 / 12) < 0.1
    stepped, = run("random_uniform", [(np.int32(1), STEP)], shape=SHAPE, seed=4, minval=-2.0, maxval=6.0)
    assert np.mean(stepped == out) < 0.001
    wide, = run("random_uniform", [], shape=SHAPE, seed=4, dtype=f64)
    assert wide.dtype == np.float64
    np.testing.assert_allclose(-2 + 8 * wide, out, rtol=1e-6, atol=1e-6)


def test_random_normal_statistics_and_dtypes() -> None:
    out, = run("random_normal", [], shape=SHAPE, seed=5, mean=1.0, stddev=3.0)
    assert abs(out.mean() - 1.0) < 0.05 and abs(out.std() - 3.0) < 0.05
    half, = run("random_normal", [], shape=SHAPE, seed=5, mean=1.0, stddev=3.0, dtype=f16)
    np.testing.assert_allclose(half.astype(np.float32), out, rtol=1e-3, atol=1e-2)
    other, = run("random_normal", [], shape=SHAPE, seed=6)
    assert abs(np.corrcoef(other.ravel(), out.ravel())[0, 1]) < 0.02


def test_random_errors_and_splits() -> None:
    expect_error("random_uniform: dtype must be a float type, got i32", "random_uniform", [], shape=SHAPE, seed=0, dtype=i32)
    expect_error("random_uniform: minval 2.0 is greater than maxval 1.0", "random_uniform", [], shape=SHAPE, seed=0, minval=2.0)
    expect_error("random_normal: stddev must be at least 0, got -1.0", "random_normal", [], shape=SHAPE, seed=0, stddev=-1.0)
    expect_error("random_normal: operand 0 (the step) must be an i32 scalar, i32[], got f32[]", "random_normal", [tensor_type(f32)], shape=SHAPE, seed=0)
    assert infer("random_normal", [STEP], shape=SHAPE, seed=0, dtype=bf16) == [TensorType(bf16, SHAPE)]
    assert splittable("random_uniform", [], shape=SHAPE, seed=0) == set()


# ---------------------------------------------------------------------------- losses and norms


def test_softmax_cross_entropy_with_labels_in_another_order() -> None:
    logits = RNG.standard_normal((4, 6)).astype(np.float32) * 3
    labels = RNG.random((6, 4)).astype(np.float32)
    out, = run("softmax_cross_entropy", [(logits, tensor_type(f32, b=4, k=6)), (labels, tensor_type(f32, k=6, b=4))], dim=N("k"))
    wide = logits.astype(np.float64)
    log_probs = wide - np.log(np.exp(wide).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out, -(labels.T * log_probs).sum(axis=1), rtol=1e-5)


def test_softmax_cross_entropy_is_stable_for_huge_logits_and_empty_classes() -> None:
    logits = np.array([[1000.0, 0.0], [-1000.0, -1000.0]], dtype=np.float32)
    labels = np.array([[0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    out, = run("softmax_cross_entropy", [(logits, tensor_type(f32, b=2, k=2)), (labels, tensor_type(f32, b=2, k=2))], dim=N("k"))
    np.testing.assert_allclose(out, [1000.0, math.log(2)], rtol=1e-6)
    empty, = run("softmax_cross_entropy", [(np.zeros((2, 0)), tensor_type(f32, b=2, k=0))] * 2, dim=N("k"))
    np.testing.assert_array_equal(empty, [0.0, 0.0])


def test_softmax_cross_entropy_errors_and_splits() -> None:
    logits = tensor_type(f32, b=2, k=3)
    expect_error("softmax_cross_entropy: labels f32[b=2] must have the same dimensions as logits f32[b=2, k=3] (in any order)",
                 "softmax_cross_entropy", [logits, tensor_type(f32, b=2)], dim=N("k"))
    expect_error("softmax_cross_entropy: dimension 'c' is not in the logits f32[b=2, k=3] (dimensions: b, k)",
                 "softmax_cross_entropy", [logits, logits], dim=N("c"))
    expect_error("softmax_cross_entropy: operand 0 must have a float dtype, got i32",
                 "softmax_cross_entropy", [logits.with_dtype(i32)] * 2, dim=N("k"))
    assert infer("softmax_cross_entropy", [logits, logits.with_dtype(f32)], dim=N("k")) == [tensor_type(f32, b=2)]
    assert splittable("softmax_cross_entropy", [logits, logits], dim=N("k")) == {"b"}


def test_layer_norm_over_two_dims_with_scale_and_bias_by_name() -> None:
    x = (RNG.standard_normal((3, 4, 5)) * 4 + 2).astype(np.float32)
    scale = RNG.standard_normal((5, 4)).astype(np.float32)
    bias = RNG.standard_normal(5).astype(np.float32)
    types = [tensor_type(f32, b=3, s=4, h=5), tensor_type(f32, h=5, s=4), tensor_type(f32, h=5)]
    out, = run("layer_norm", list(zip([x, scale, bias], types)), dims=(N("s"), N("h")), epsilon=1e-3)
    wide = x.astype(np.float64)
    mean = wide.mean(axis=(1, 2), keepdims=True)
    var = wide.var(axis=(1, 2), keepdims=True)
    expected = (wide - mean) / np.sqrt(var + 1e-3) * scale.T + bias
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    plain, = run("layer_norm", [(x, types[0])], dims=N("h"))
    h_mean = wide.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(plain, (wide - h_mean) / np.sqrt(wide.var(axis=2, keepdims=True) + 1e-6), rtol=1e-4, atol=1e-5)


def test_layer_norm_empty_dim_gives_nan_quietly() -> None:
    out, = run("layer_norm", [(np.zeros((2, 0)), tensor_type(f32, b=2, h=0))], dims=N("b"))
    assert out.shape == (2, 0)
    constant, = run("layer_norm", [(np.full((2, 3), 7.0), tensor_type(f32, b=2, h=3))], dims=N("h"), epsilon=0.0)
    assert np.all(np.isnan(constant))


def test_layer_norm_errors_and_splits() -> None:
    x = tensor_type(f32, b=3, h=5)
    expect_error("layer_norm: dims must name at least one dimension to normalize over", "layer_norm", [x], dims=())
    expect_error("layer_norm: dimension 'q' is not in the operand x f32[b=3, h=5] (dimensions: b, h)", "layer_norm", [x], dims=N("q"))
    expect_error("layer_norm: bias f32[z=5] has dimension 'z', which x f32[b=3, h=5] does not have",
                 "layer_norm", [x, tensor_type(f32, h=5), tensor_type(f32, z=5)], dims=N("h"))
    expect_error("layer_norm: epsilon must be at least 0, got -1.0", "layer_norm", [x], dims=N("h"), epsilon=-1.0)
    expect_error("layer_norm: operand 1 has dtype bf16 but operand 0 has f32; cast one of them",
                 "layer_norm", [x, tensor_type(bf16, h=5)], dims=N("h"))
    expect_error("layer_norm: operand 0 must have a float dtype, got i32", "layer_norm", [x.with_dtype(i32)], dims=N("h"))
    assert splittable("layer_norm", [x, tensor_type(f32, h=5)], dims=N("h")) == {"b"}
