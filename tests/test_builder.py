"""The Python builder: operators, attribute conversion, layer helpers, errors."""
import numpy as np
import pytest

from meshir.diagnostics import MeshirError
from meshir.frontends.builder import ModuleBuilder, dense, f32, feed_forward, i32, layer_norm, multi_head_attention
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.printer import print_module


def test_operators_build_binary_ops_and_scalars_become_constants():
    mb = ModuleBuilder()
    with mb.function("f", x=f32(a=3), y=f32(b=2)) as f:
        x, y = f.args
        z = (x + y) * 2.0 - 1.0 / x
        f.ret(z, -x, x > 0.5)
    module = mb.build()
    text = print_module(module)
    assert "add(%x, %y)" in text and "constant() {dtype = f32, value = 2.0}" in text
    assert print_module(parse_module(text)) == text
    xv, yv = np.array([1, 2, 4], np.float32), np.array([3, 5], np.float32)
    out = list(Interpreter(module).run("f", {"x": xv, "y": yv}).values())
    np.testing.assert_allclose(out[0], (xv[:, None] + yv[None, :]) * 2 - 1 / xv[:, None], rtol=1e-6)
    np.testing.assert_array_equal(out[1], -xv)
    np.testing.assert_array_equal(out[2], xv > 0.5)


def test_python_friendly_attributes():
    mb = ModuleBuilder()
    mb.mesh("m", rows=2)
    with mb.function("f", x=f32(a=4, b=2), mesh="m") as f:
        (x,) = f.args
        renamed = f.rename(x, from_="a", to="c")
        zeros = f.zeros(shape={"c": 4, "b": 2})
        pinned = f.reshard(renamed + zeros, layout={"c": "rows"})
        parts = f.split(pinned, dim="c", sizes=[1, 3], name=["head", "tail"])
        f.ret(*parts)
    text = print_module(mb.build())
    assert "rename(%x) {from = a, to = c}" in text
    assert "reshard(%" in text and "{layout = {c: rows}}" in text
    assert "%head, %tail = split(" in text


def test_errors_surface_at_the_call():
    mb = ModuleBuilder()
    with mb.function("f", x=f32(a=3), n=i32(a=3)) as f:
        x, n = f.args
        with pytest.raises(MeshirError, match="dtype"):
            f.add(x, n)
        with pytest.raises(MeshirError, match="einsum output names dimension 'z'"):
            f.einsum(x, output=["z"])
        with pytest.raises(AttributeError):
            f.no_such_op(x)
    with pytest.raises(MeshirError, match="already defined"):
        mb.var("f", f32(a=1))


def _numpy_layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_layer_helpers_match_an_independent_numpy_transformer_layer():
    batch, seq, model = 2, 5, 8
    mb = ModuleBuilder()
    with mb.function("layer", x=f32(batch=batch, seq=seq, model=model)) as f:
        (x,) = f.args
        from meshir.types import Dim

        normed = layer_norm(f, x, ["model"], name="ln", epsilon=1e-5)
        attended = x + multi_head_attention(f, normed, seq="seq", model="model", heads=Dim("heads", 2),
                                            head_dim=Dim("head", 4), name="attn", seed=3, causal=True)
        f.ret(attended + feed_forward(f, attended, "model", Dim("hidden", 16), name="mlp", seed=7))
    module = mb.build()
    assert set(module.variables) >= {"ln.scale", "attn.wq", "attn.wo", "mlp.in.w", "mlp.out.b"}
    interpreter = Interpreter(module)
    xv = np.random.default_rng(0).standard_normal((batch, seq, model)).astype(np.float32)
    (out,) = interpreter.run("layer", {"x": xv}).values()

    w = {k: v.astype(np.float64) for k, v in interpreter.state.items()}
    h = _numpy_layer_norm(xv.astype(np.float64), w["ln.scale"], w["ln.bias"], 1e-5)
    q = np.einsum("bsm,mhd->bshd", h, w["attn.wq"])
    k = np.einsum("bsm,mhd->bshd", h, w["attn.wk"])
    v = np.einsum("bsm,mhd->bshd", h, w["attn.wv"])
    logits = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(4)
    logits = np.where(np.tril(np.ones((seq, seq), bool)), logits, -1e9)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = xv + np.einsum("bhst,bthd,mhd->bsm", weights, v, w["attn.wo"])
    from math import erf

    up = attended @ w["mlp.in.w"] + w["mlp.in.b"]
    gelu = 0.5 * up * (1 + np.vectorize(erf)(up / np.sqrt(2)))
    expected = attended + gelu @ w["mlp.out.w"] + w["mlp.out.b"]
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-5)


def test_dense_declares_glorot_weights_and_zero_bias():
    mb = ModuleBuilder()
    from meshir.types import Dim

    with mb.function("f", x=f32(batch=4, features=6)) as f:
        f.ret(dense(f, f.arg("x"), "features", Dim("units", 3), name="fc", seed=5))
    module = mb.build()
    assert module.variables["fc.w"].initializer == "glorot_uniform"
    assert module.variables["fc.b"].initializer == "zeros"
    state = Interpreter(module).state
    limit = np.sqrt(6 / (6 + 3))
    assert np.abs(state["fc.w"]).max() <= limit and state["fc.w"].std() > 0


SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 3], [5, 5, 5, 5, 5, 7, 7, 7]], np.int32)


def _packed_attention(seq: int, causal: bool, packed: bool):
    """attention(x) over `seq` positions; with `packed`, also given segment ids."""
    from meshir.types import Dim

    mb = ModuleBuilder()
    args = {"x": f32(batch=SEGMENTS.shape[0], seq=seq, model=8)}
    if packed:
        args["segments"] = i32(batch=SEGMENTS.shape[0], seq=seq)
    with mb.function("attend", **args) as f:
        f.ret(multi_head_attention(f, f.arg("x"), seq="seq", model="model", heads=Dim("heads", 2), head_dim=Dim("head", 4),
                                   name="attn", seed=3, causal=causal, segment_ids=f.arg("segments") if packed else None))
    return mb.build()


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_packed_sequences_attend_only_within_their_segment(causal):
    """Each packed segment's output equals attention over that segment alone, so
    nothing leaks between examples packed into one row."""
    x = np.random.default_rng(1).standard_normal((*SEGMENTS.shape, 8)).astype(np.float32)
    (packed,) = Interpreter(_packed_attention(8, causal, True)).run("attend", {"x": x, "segments": SEGMENTS}).values()
    for row, ids in enumerate(SEGMENTS):
        for segment in np.unique(ids):
            where = np.flatnonzero(ids == segment)
            alone_module = _packed_attention(len(where), causal, False)
            alone_x = np.repeat(x[row:row + 1, where], SEGMENTS.shape[0], axis=0)
            (alone,) = Interpreter(alone_module).run("attend", {"x": alone_x}).values()
            np.testing.assert_allclose(packed[row, where], alone[0], rtol=1e-5, atol=1e-6)


def test_changing_one_segment_leaves_the_others_untouched():
    x = np.random.default_rng(2).standard_normal((*SEGMENTS.shape, 8)).astype(np.float32)
    changed = x.copy()
    changed[0, 3:7] += 10.0  # segment 2 of row 0
    interpreter = Interpreter(_packed_attention(8, False, True))
    (before,) = interpreter.run("attend", {"x": x, "segments": SEGMENTS}).values()
    (after,) = interpreter.run("attend", {"x": changed, "segments": SEGMENTS}).values()
    untouched = np.ones(SEGMENTS.shape, bool)
    untouched[0, 3:7] = False
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert not np.allclose(after[0, 3:7], before[0, 3:7])


def test_segment_ids_over_the_wrong_dimensions_are_a_user_error():
    from meshir.types import Dim

    mb = ModuleBuilder()
    with mb.function("attend", x=f32(batch=2, seq=8, model=8), segments=f32(batch=2, seq=8)) as f:
        with pytest.raises(MeshirError, match="segment_ids must be integers over \\['batch', 'seq'\\]"):
            multi_head_attention(f, f.arg("x"), seq="seq", model="model", heads=Dim("heads", 2), head_dim=Dim("head", 4),
                                 name="attn", segment_ids=f.arg("segments"))


@pytest.mark.parametrize("layout", ["batch:rows,head:cols", "heads:rows,seq:cols"])
def test_packed_attention_partitions_to_the_same_values(layout):
    """The segment mask splits like the rest: simulated on a 2x4 mesh, with the
    heads' features or the packed sequence itself split, it equals the reference."""
    from .spmd_check import partition, simulate_and_compare

    x = np.random.default_rng(3).standard_normal((*SEGMENTS.shape, 8)).astype(np.float32)
    module = parse_module(print_module(_packed_attention(8, True, True)))  # the names the partitioned copy gets
    simulate_and_compare(*partition(module, "rows:2,cols:4", layout), inputs={"x": x, "segments": SEGMENTS})
