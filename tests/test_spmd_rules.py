"""The spmd pass's special rules, simulated on every device against the reference:
halo exchange, split vocabularies, split softmax, lazy partial sums."""
import numpy as np
import pytest

from meshir.frontends.text import parse_module
from meshir.passes.pipeline import PassManager, parse_pipeline

from .spmd_check import check_text, partition, simulate_and_compare


def ops_of(local) -> list[str]:
    return [op.name for op in local.ops]


@pytest.mark.parametrize("offset", [-3, -1, 1, 2, 4])
@pytest.mark.parametrize("wrap", [False, True])
def test_shift_along_a_split_dim_exchanges_halos(offset, wrap):
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[a=16, b=4]) -> f32[a=16, b=4] attributes {{mesh = @m, layout = {{a: cols, b: rows}}}} {{
  %y = shift(%x) {{dim = a, offset = {offset}, wrap = {str(wrap).lower()}}}
  return %y
}}
"""
    local = check_text(text, None, None)
    assert "collective_permute" in ops_of(local) and "all_gather" not in ops_of(local)


def test_shift_wider_than_a_block_falls_back_to_gathering():
    text = """mesh @m = <cols=4>
func @f(%x: f32[a=8]) -> f32[a=8] attributes {mesh = @m, layout = {a: cols}} {
  %y = shift(%x) {dim = a, offset = 5}
  return %y
}
"""
    assert "all_gather" in ops_of(check_text(text, None, None))


@pytest.mark.parametrize("layout", ["h:cols", "h:cols,w:rows", "w:cols,batch:rows", "h:cols,cout:rows"])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (2, 1)])
def test_same_convolution_over_split_spatial_dims_exchanges_halos(layout, kernel, dilation):
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[batch=2, h=16, w=8, cin=3], %k: f32[kh={kernel}, kw=3, cin=3, cout=4]) -> f32[batch=2, h=16, w=8, cout=4]
    attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %y = conv2d(%x, %k) {{spatial = [h, w], kernel_dims = [kh, kw], in_channels = cin, out_channels = cout, padding = same, dilation = [{dilation}, 1]}}
  return %y
}}
"""
    local = check_text(text, None, None, rtol=1e-4, atol=1e-4)
    assert "collective_permute" in ops_of(local)
    assert not any(op.name == "all_gather" and op.attributes["dim"] in ("h", "w") for op in local.ops)


def test_strided_convolution_over_a_split_dim_still_matches():
    text = """mesh @m = <cols=2>
func @f(%x: f32[n=1, t=16, c=2], %k: f32[kt=3, c=2, o=2]) -> f32[n=1, t=8, o=2] attributes {mesh = @m, layout = {t: cols}} {
  %y = conv1d(%x, %k) {spatial = [t], kernel_dims = [kt], in_channels = c, out_channels = o, strides = [2], padding = same}
  return %y
}
"""
    check_text(text, None, None, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["vocab:cols", "vocab:(rows,cols)", "vocab:rows,batch:cols", "hidden:cols,vocab:rows"])
def test_gather_and_scatter_add_over_a_split_vocabulary(layout):
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%table: f32[vocab=16, hidden=8], %ids: i32[batch=8], %up: f32[batch=8, hidden=8]) -> (f32[batch=8, hidden=8], f32[vocab=16, hidden=8], f32[batch=8, vocab=16], i32[vocab=16])
    attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %rows = gather(%table, %ids) {{dim = vocab}}
  %grads = scatter_add(%table, %ids, %up) {{dim = vocab}}
  %hot = one_hot(%ids) {{dim = vocab=16}}
  %pos = iota() {{shape = [vocab=16], dim = vocab}}
  return %rows, %grads, %hot, %pos
}}
"""
    rng = np.random.default_rng(0)
    inputs = {"table": rng.standard_normal((16, 8)).astype(np.float32),
              "ids": np.array([0, 15, 3, 3, 8, 20, -1, 7], np.int32),
              "up": rng.standard_normal((8, 8)).astype(np.float32)}
    from meshir.frontends.text import parse_module

    from .spmd_check import partition, simulate_and_compare

    local = simulate_and_compare(*partition(parse_module(text)), inputs=inputs)
    assert "axis_index" in ops_of(local)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("layout", ["a:rows", "a:(rows,cols)", "a:cols,b:rows"])
def test_normalisers_over_a_split_dim(op, layout):
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[a=16, b=8]) -> (f32[a=16, b=8], f32[b=8]) attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %y = {op}(%x) {{dim = a}}
  %z = logsumexp(%x) {{dims = [a]}}
  return %y, %z
}}
"""
    local = check_text(text, None, None, rtol=1e-5, atol=1e-5)
    assert "all_gather" not in ops_of(local)


def test_normalisers_keep_the_reference_edge_semantics():
    text = """mesh @m = <rows=2>
func @f(%x: f32[a=4, b=3]) -> (f32[a=4, b=3], f32[b=3]) attributes {mesh = @m, layout = {a: rows}} {
  %y = softmax(%x) {dim = a}
  %z = logsumexp(%x) {dims = [a]}
  return %y, %z
}
"""
    from meshir.frontends.text import parse_module

    from .spmd_check import partition, simulate_and_compare

    x = np.array([[0, -np.inf, np.inf], [1, -np.inf, 0], [2, -np.inf, 0], [3, -np.inf, 0]], np.float32)
    simulate_and_compare(*partition(parse_module(text)), inputs={"x": x})


@pytest.mark.parametrize("layout", ["a:cols", "a:(rows,cols)", "a:rows,b:cols"])
@pytest.mark.parametrize("dtype", ["f32", "i32"])
def test_cumsum_along_a_split_dim_adds_the_earlier_blocks_totals(layout, dtype):
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: {dtype}[a=16, b=8]) -> {dtype}[a=16, b=8] attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %y = cumsum(%x) {{dim = a}}
  return %y
}}
"""
    from meshir.frontends.text import parse_module

    from .spmd_check import partition, simulate_and_compare

    x = np.arange(128).reshape(16, 8) % 7 - 3
    local = simulate_and_compare(*partition(parse_module(text)), inputs={"x": x.astype(dtype.replace("f", "float").replace("i", "int"))})
    assert not any(op.name == "all_gather" and op.results[0].type.size_of("a") == 16 for op in local.ops)


def test_stacked_partial_sums_are_reduced_once():
    """autostack's gradients: a stack of partial sums stays pending, one all_reduce for the stack."""
    text = """mesh @m = <rows=2, cols=4>
func @f(%x: f32[n=8, i=4], %a: f32[n=8, o=3], %b: f32[n=8, o=3]) -> f32[s=2, i=4, o=3]
    attributes {mesh = @m, layout = {n: cols}} {
  %ga = einsum(%x, %a) {output = [i, o]}
  %gb = einsum(%x, %b) {output = [i, o]}
  %g = stack(%ga, %gb) {dim = s}
  return %g
}
"""
    local = check_text(text, None, None)
    assert [op.operands[0].owner.name for op in local.ops if op.name == "all_reduce"] == ["stack"]


@pytest.mark.parametrize("base", ["zeros", "table"])
def test_scatter_add_with_split_indices_reduces_the_table_not_the_updates(base):
    """An embedding's gradient under data parallelism: each device scatters its own
    batch rows; one all_reduce of the table, no gather of indices or updates."""
    table = "%t" if base == "table" else "%z"
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%t: f32[vocab=6, model=4], %idx: i32[batch=8, seq=2], %u: f32[batch=8, seq=2, model=4]) -> f32[vocab=6, model=4]
    attributes {{mesh = @m, layout = {{batch: (rows, cols)}}}} {{
  %z = zeros() {{shape = [vocab=6, model=4], dtype = f32}}
  %g = scatter_add({table}, %idx, %u) {{dim = vocab}}
  return %g
}}
"""
    local = check_text(text, None, None)
    assert "all_gather" not in ops_of(local)
    assert [op.operands[0].type.shape for op in local.ops if op.name == "all_reduce"] == [(6, 4)]


@pytest.mark.parametrize("window,strides,padding,permutes", [
    ("[2, 2]", "[2, 2]", "valid", 0),  # every tap inside its own block: no halo at all
    # Window rows -1, 0, 1 around each even row: only row -1 is a stride back; its
    # three taps each exchange a halo for the view, its padding mask and the transpose.
    ("[3, 3]", "[2, 2]", "same", 9),
], ids=["aligned", "overlapping"])
def test_max_pool_gradient_over_a_split_dim_takes_its_phases_in_place(window, strides, padding, permutes):
    """A strided window's gradient cuts the dimension into (dim / stride, phase) and
    picks a tap's phase, shifting only by whole strides: with blocks of whole
    strides a tap inside the first stride reads and writes its own rows."""
    text = f"""mesh @m = <rows=2, cols=4>
var @x : f32[batch=2, h=16, w=8, c=3] = normal(stddev=1.0, seed=3)
func @loss(%t: f32[batch=2, h=8, w=4, c=3]) -> f32[] attributes {{mesh = @m, layout = {{h: cols, batch: rows}}}} {{
  %x = read @x
  %p = max_pool(%x) {{spatial = [h, w], window = {window}, strides = {strides}, padding = {padding}}}
  %pt = mul(%p, %t)
  %l = reduce_sum(%pt) {{dims = [batch, h, w, c]}}
  return %l
}}
"""
    module = parse_module(text)
    PassManager(parse_pipeline("autodiff{func=loss}")).run(module)
    local = simulate_and_compare(*partition(module))
    backward = local.ops[next(i for i, op in enumerate(local.ops) if op.name == "max_pool") + 1:]
    assert sum(op.name == "collective_permute" for op in backward) == permutes
    assert not any(op.name in ("all_gather", "all_to_all") for op in local.ops)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("window", [3, 5, 4], ids=["w3", "w5", "w4"])
@pytest.mark.parametrize("layout", ["h:cols", "h:cols,w:rows", "w:rows,batch:cols"])
def test_overlapping_same_pools_over_split_dims_exchange_halos(op, window, layout):
    """Windows wider than their stride read a few rows of the neighbouring blocks:
    collective_permute brings them, the axis's ends pad (the lowest value for
    max, rows left out of the count for avg), and nothing is gathered."""
    rules = ", ".join(f"{d}: {a}" for d, a in (part.split(":") for part in layout.split(",")))
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[batch=4, h=16, w=8, c=3]) -> f32[batch=4, h=8, w=4, c=3] attributes {{mesh = @m, layout = {{{rules}}}}} {{
  %y = {op}(%x) {{spatial = [h, w], window = [{window}, {window}], strides = [2, 2], padding = same}}
  return %y
}}
"""
    local = check_text(text, None, None)
    assert "collective_permute" in ops_of(local)
    assert not any(name in ("all_gather", "all_to_all") for name in ops_of(local))


def test_an_integer_max_pool_pads_the_axis_ends_with_the_least_integer():
    text = """mesh @m = <cols=4>
func @f(%x: i32[h=16, w=6]) -> i32[h=8, w=3] attributes {mesh = @m, layout = {h: cols}} {
  %y = max_pool(%x) {spatial = [h, w], window = [3, 3], strides = [2, 2], padding = same}
  return %y
}
"""
    x = -np.arange(96, dtype=np.int32).reshape(16, 6) - 5  # all negative: a zero pad would win every edge window
    local = check_text(text, None, None, inputs={"x": x})
    assert "collective_permute" in ops_of(local) and "all_gather" not in ops_of(local)
