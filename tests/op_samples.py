"""One-op samples for every global op: operand types and attributes in `.mir` text.

`SAMPLES[op]` lists the cases the SPMD equivalence matrix (tests/spmd_matrix.py)
runs `op` on. Every dimension a 2x4 mesh might split has a size divisible by 8,
so most layouts are legal; small dimensions (kernel taps, top_k's k, stacked
pairs) stay replicated on meshes they cannot divide. Samples are tiny: the
matrix runs each one under dozens of layouts on four meshes.

In `attrs`, `$0` and `$1` stand for the mesh's first and second axis (for
`reshard`/`transfer` pins); a sample naming `$1` runs only on 2-axis meshes.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One op application: `%r... = op(operands) {attrs}` in a function of its own."""

    operands: tuple[str, ...]  # "x: f32[a=8, b=16]": the argument name and type
    attrs: str = ""  # "{dim = b, begin = 3, size = 8}"
    variables: tuple[str, ...] = ()  # "var @w : f32[a=8] = normal(seed=1)"
    symbol: str | None = None  # the leading `@var` operand of read/assign
    # argument name -> [low, high): integers drawn uniformly (indices in range, or
    # deliberately out of it), floats uniformly (positive inputs for log, sqrt ...).
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def describe(self) -> str:
        symbol = [self.symbol] if self.symbol else []
        return f"({', '.join([*symbol, *self.operands])}) {self.attrs}".rstrip()


def S(*operands: str, attrs: str = "", **kw) -> Sample:
    return Sample(tuple(operands), attrs, **kw)


X = "x: f32[a=8, b=16]"
Y_BROADCAST = "y: f32[b=16]"
POSITIVE = {"x": (0.5, 2.0)}

UNARY_FLOAT = "neg sin cos tanh sigmoid relu silu softplus erf sign floor ceil round square".split()
UNARY_POSITIVE = "log log1p sqrt rsqrt reciprocal".split()
BINARY_NUMERIC = "sub mul maximum minimum lt le gt ge".split()

SAMPLES: dict[str, list[Sample]] = {
    **{op: [S(X)] for op in UNARY_FLOAT},
    **{op: [S(X, bounds=POSITIVE)] for op in UNARY_POSITIVE},
    "exp": [S(X), S("x: bf16[a=8, b=16]")],
    "abs": [S(X), S("x: i32[a=8, b=16]", bounds={"x": (-9, 9)})],
    "gelu": [S(X), S(X, attrs="{approximate = true}")],
    "logical_not": [S("x: bool[a=8, b=16]")],
    "cast": [S(X, attrs="{dtype = i32}"), S("x: i32[a=8, b=16]", attrs="{dtype = bf16}"),
             S(X, attrs="{dtype = bool}")],
    # Binary ops broadcast by name: y[b] brings no new dimension; add's y[b, c] brings c.
    **{op: [S(X, Y_BROADCAST)] for op in BINARY_NUMERIC},
    "add": [S(X, Y_BROADCAST), S(X, "y: f32[b=16, c=8]"), S("x: bf16[a=8]", "y: bf16[a=8, b=16]")],
    "div": [S(X, Y_BROADCAST), S("x: i32[a=8, b=16]", "y: i32[b=16]", bounds={"x": (-20, 20), "y": (-3, 4)})],
    "pow": [S(X, Y_BROADCAST, bounds=POSITIVE)],
    **{op: [S("x: i32[a=8, b=16]", "y: i32[b=16]", bounds={"x": (0, 3), "y": (0, 3)})] for op in ("eq", "ne")},
    **{op: [S("x: bool[a=8, b=16]", "y: bool[b=16, c=8]")] for op in ("logical_and", "logical_or")},
    "select": [S("c: bool[a=8]", X, Y_BROADCAST), S("c: bool[a=8, b=16]", "x: f32[b=16]", "y: f32[c=8]")],
    "einsum": [
        S("x: f32[a=8, k=16]", "w: f32[k=16, n=8]", attrs="{output = [a, n]}"),  # contracts k
        S("x: f32[b=8, i=8]", "y: f32[i=8, j=16]", "z: f32[j=16]", attrs="{output = [b]}"),  # a chain
        S("x: f32[a=8]", "y: f32[n=16]", attrs="{output = [n, a]}"),  # outer product
        S("x: f32[a=8, k=16]", attrs="{output = []}"),  # a full sum
        S("q: f32[b=8, h=8, s=8]", "k: f32[b=8, h=8, t=16]", attrs="{output = [b, h, s, t]}"),  # no contraction
    ],
    "matmul": [S("x: f32[a=8, k=16]", "w: f32[k=16, n=8]"),
               S("x: f32[b=8, k=16]", "y: f32[b=8, k=16]", attrs="{batch = [b]}")],
    "reduce_sum": [S(X, attrs="{dims = [b]}"), S(X, attrs="{dims = [a, b]}"), S("x: i32[a=8, b=16]", attrs="{dims = [a]}"),
                   S("x: bf16[a=8, b=16]", attrs="{dims = [b]}")],
    "reduce_mean": [S(X, attrs="{dims = [b]}"), S(X, attrs="{dims = [a, b]}")],
    "reduce_max": [S(X, attrs="{dims = [b]}"), S("x: i32[a=8, b=16]", attrs="{dims = [a, b]}")],
    "reduce_min": [S(X, attrs="{dims = [a]}")],
    "reduce_prod": [S(X, attrs="{dims = [b]}", bounds={"x": (0.5, 1.5)})],
    "reduce_any": [S("x: bool[a=8, b=16]", attrs="{dims = [b]}")],
    "reduce_all": [S("x: bool[a=8, b=16]", attrs="{dims = [a]}")],
    "logsumexp": [S(X, attrs="{dims = [b]}"), S(X, attrs="{dims = [a, b]}")],
    # Small integers tie often: the first index along the (maybe split) dim must win.
    "argmax": [S(X, attrs="{dim = b}"), S("x: i32[a=8, b=16]", attrs="{dim = b}", bounds={"x": (0, 3)})],
    "argmin": [S(X, attrs="{dim = a}"), S("x: i32[a=8, b=16]", attrs="{dim = a}", bounds={"x": (0, 3)})],
    "top_k": [S(X, attrs="{dim = b, k = 8}"), S("x: i32[a=8, b=16]", attrs="{dim = b, k = 3}", bounds={"x": (0, 4)})],
    "softmax": [S(X, attrs="{dim = b}")],
    "log_softmax": [S(X, attrs="{dim = b}")],
    "cumsum": [S(X, attrs="{dim = b}"), S("x: i32[a=8, b=16]", attrs="{dim = a}")],
    "rename": [S(X, attrs="{from = b, to = c}")],
    "reshape": [
        S(X, attrs="{shape = [a=8, c=4, d=4]}"),  # splits the last dim; a may stay split
        S("x: f32[a=8, b=4, c=4]", attrs="{shape = [a=8, d=16]}"),  # merges two dims
        S(X, attrs="{shape = [c=16, d=8]}"),  # nothing in common
        S(X, attrs="{shape = [b=16, a=8]}"),  # same names, reinterpreted row-major: not a transpose
        S("x: f32[a=16, b=8]", attrs="{shape = [c=8, d=2, b=8]}"),  # keeps a suffix, splits the prefix
    ],
    "transpose": [S(X, attrs="{order = [b, a]}"), S("x: f32[a=8, b=8, c=16]", attrs="{order = [c, a, b]}")],
    "broadcast": [S(Y_BROADCAST, attrs="{shape = [a=8, b=16]}"), S("y: f32[a=8]", attrs="{shape = [b=16, a=8]}")],
    "slice": [
        S(X, attrs="{dim = b, begin = 3, size = 8}"),  # across device boundaries
        S(X, attrs="{dim = b, begin = 8, size = 8}"),  # aligned with a 2-way split
        S(X, attrs="{dim = a, begin = 1, size = 5}"),  # a size no split divides
    ],
    "concat": [S("x: f32[a=8, b=8]", "y: f32[a=8, b=16]", attrs="{dim = b}"),
               S("x: f32[a=8, b=16]", "y: f32[a=8, b=16]", "z: f32[a=16, b=16]", attrs="{dim = a}")],
    "split": [S("x: f32[a=8, b=24]", attrs="{dim = b, sizes = [8, 16]}"), S(X, attrs="{dim = a, sizes = [3, 5]}")],
    "pad": [S("x: f32[a=8, b=8]", attrs="{dim = b, low = 3, high = 5, value = 1.5}"),
            S(X, attrs="{dim = a, low = 0, high = 8}")],
    "stack": [S("x: f32[a=8]", "y: f32[a=8]", attrs="{dim = s}"), S(X, "y: f32[a=8, b=16]", attrs="{dim = s, axis = 2}")],
    "unstack": [S("x: f32[s=2, a=8]", attrs="{dim = s}"), S("x: f32[a=8, s=2, b=8]", attrs="{dim = s}")],
    "shift": [
        S(X, attrs="{dim = b, offset = 3}"),
        S(X, attrs="{dim = b, offset = -5, wrap = true}"),
        S(X, attrs="{dim = a, offset = 6}"),  # more than a device's block of a
        S("x: i32[a=8, b=16]", attrs="{dim = b, offset = 20}"),  # past the end: all zeros
    ],
    "one_hot": [
        S("i: i32[b=8]", attrs="{dim = v=16, dtype = f32}", bounds={"i": (0, 16)}),
        S("i: i32[a=8, b=8]", attrs="{dim = v=16, dtype = i32}", bounds={"i": (-2, 18)}),  # out of range: zero rows
    ],
    "gather": [
        S("x: f32[v=16, d=8]", "i: i32[b=8]", attrs="{dim = v}", bounds={"i": (0, 16)}),
        S("x: f32[d=8, v=16]", "i: i32[a=8, b=8]", attrs="{dim = v}", bounds={"i": (-3, 19)}),
    ],
    "scatter_add": [
        S("x: f32[v=16, d=8]", "i: i32[b=8]", "u: f32[b=8, d=8]", attrs="{dim = v}", bounds={"i": (0, 16)}),
        S("x: f32[d=8, v=16]", "i: i32[b=16]", "u: f32[b=16, d=8]", attrs="{dim = v}", bounds={"i": (-2, 6)}),  # repeats
    ],
    "iota": [S(attrs="{shape = [a=8, b=16], dim = b}"), S(attrs="{shape = [a=16], dim = a, dtype = f32}")],
    "conv1d": [
        S("x: f32[n=8, w=16, ci=8]", "k: f32[kw=3, ci=8, co=8]",
          attrs="{spatial = [w], kernel_dims = [kw], in_channels = ci, out_channels = co, padding = same}"),
        S("x: f32[n=8, w=16, ci=8]", "k: f32[kw=2, ci=8, co=8]",
          attrs="{spatial = [w], kernel_dims = [kw], in_channels = ci, out_channels = co, strides = [2]}"),
    ],
    "conv2d": [
        S("x: f32[n=8, h=8, w=8, ci=8]", "k: f32[kh=3, kw=3, ci=8, co=8]",
          attrs="{spatial = [h, w], kernel_dims = [kh, kw], in_channels = ci, out_channels = co, padding = same}"),
    ],
    "max_pool": [S("x: f32[n=8, w=16]", attrs="{spatial = [w], window = [2]}"),
                 S("x: f32[n=8, w=16]", attrs="{spatial = [w], window = [3], strides = [1], padding = same}")],
    "avg_pool": [S("x: f32[n=8, w=16]", attrs="{spatial = [w], window = [2]}"),
                 S("x: f32[n=8, w=16]", attrs="{spatial = [w], window = [3], strides = [1], padding = same}")],
    "dropout": [S(X, attrs="{rate = 0.5, seed = 7}"),
                S(X, "step: i32[]", attrs="{rate = 0.25, seed = 3}", bounds={"step": (0, 1000)})],
    "random_uniform": [S(attrs="{shape = [a=8, b=16], seed = 3}"),
                       S("step: i32[]", attrs="{shape = [a=16], seed = 5, minval = -2.0, maxval = 2.0}")],
    "random_normal": [S(attrs="{shape = [a=8, b=16], seed = 4, mean = 1.0, stddev = 2.0}"),
                      S(attrs="{shape = [a=8, b=8], seed = 4, dtype = bf16}")],
    "softmax_cross_entropy": [S("l: f32[b=8, c=16]", "y: f32[c=16, b=8]", attrs="{dim = c}")],
    "layer_norm": [S("x: f32[b=8, d=16]", "s: f32[d=16]", "o: f32[d=16]", attrs="{dims = [d]}"),
                   S("x: f32[b=8, d=16]", attrs="{dims = [b, d]}")],
    "reshard": [S(X, attrs="{layout = {a: $0}}"), S(X, attrs="{layout = {b: ($0, $1)}}"), S(X, attrs="{layout = {}}")],
    "transfer": [S(X, attrs="{to = @m}"), S(X, attrs="{to = @m, layout = {b: $0}}")],
    "read": [S(symbol="@w", variables=("var @w : f32[a=8, b=16] = normal(seed=1)",))],
    "assign": [S(X, symbol="@w", variables=("var @w : f32[a=8, b=16] = zeros",))],
    "assign_add": [S(X, symbol="@w", variables=("var @w : f32[a=8, b=16] = normal(seed=2)",))],
    "stop_gradient": [S(X)],
    "constant": [S(attrs="{value = 2.5, shape = [a=8, b=16]}"),
                 S(attrs="{value = [0, 1, 2, 3, 4, 5, 6, 7], shape = [a=8], dtype = i32}")],
    "zeros": [S(attrs="{shape = [a=8, b=16]}")],
    "ones": [S(attrs="{shape = [a=8, b=16], dtype = i32}")],
    "full": [S(attrs="{shape = [a=8, b=16], value = 3.0}")],
}
