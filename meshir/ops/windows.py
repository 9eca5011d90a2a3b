"""Gradients of sliding-window ops (convolutions and pools) from registry ops.

Along one spatial dimension a window op reads, for tap t of its window and
output position i, input element `i * stride + t * dilation - low` (zero, or
never the maximum, outside the input). `view` builds that strided view of a
value for one tap from ops the registry has (shift, slice or pad, and for
strides a reshape that exposes the phase); `view_transpose` is its exact
transpose, which scatters a value of the output's size back to the input's.
With them:

- conv input: dx = sum over taps of view_transpose(einsum(g, kernel at the tap));
- conv kernel: dk[tap] = einsum(view(x, tap), g), stacked along the kernel dims;
- avg_pool: dx = sum over taps of view_transpose(g / count), one dimension at a time;
- max_pool: each output's cotangent goes to the first tap (row-major over the
  window) that holds the window's maximum, padding excluded.

For stride-1 `same` windows a view is a single `shift`, which partitions over a
split spatial dimension with a halo exchange.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Value
from ..types import Dim
from .grad_helpers import Cotangents, add_all, fresh_dim, in_order, scalar

if TYPE_CHECKING:
    from ..emitter import Emitter


@dataclass(frozen=True)
class Window:
    """A window op's geometry along one spatial dimension."""

    dim: str
    size: int  # of the input
    out: int  # of the output
    taps: int  # window (kernel) extent in elements
    stride: int
    dilation: int
    low: int  # padding before the input
    high: int  # padding after it

    def offset(self, tap: int) -> int:
        """The shift that brings element `tap * dilation - low` to position 0."""
        return self.low - tap * self.dilation

    @property
    def padded(self) -> bool:
        return self.low > 0 or self.high > 0


def _resize(e: Emitter, value: Value, dim: str, size: int) -> Value:
    """Keep the first `size` elements of `dim`, padding with zeros past its end."""
    current = value.type.size_of(dim)
    if size < current:
        return e.emit("slice", value, dim=dim, begin=0, size=size)
    if size > current:
        return e.emit("pad", value, dim=dim, low=0, high=size - current)
    return value


def _with_phase(value: Value, dim: str, out: int, phase: str, phases: int) -> tuple[Dim, ...]:
    """`value`'s shape with `dim` cut row-major into (dim = out, phase = phases)."""
    dims: list[Dim] = []
    for d in value.type.dims:
        dims.extend((Dim(dim, out), Dim(phase, phases)) if d.name == dim else (d,))
    return tuple(dims)


def _shift_and_phase(w: Window, tap: int) -> tuple[int, int]:
    """Input element i * stride + tap * dilation - low as (i + blocks) * stride + phase:
    the shift by whole strides and the phase a strided view takes. A tap inside
    the first stride needs no shift, so a dimension split in blocks of whole
    strides is viewed without moving data between devices."""
    blocks, phase = divmod(-w.offset(tap), w.stride)
    return -blocks * w.stride, phase


def view(e: Emitter, value: Value, w: Window, tap: int) -> Value:
    """Output-sized view of `value` along `w.dim`: element i is value[i * stride + tap * dilation - low]."""
    shift, phase = _shift_and_phase(w, tap)
    # Cut or pad to the strided length on the side that keeps every element read:
    # after a shift toward the end, before one toward the start.
    if shift > 0:
        value = e.emit("shift", _resize(e, value, w.dim, w.out * w.stride), dim=w.dim, offset=shift)
    else:
        if shift:
            value = e.emit("shift", value, dim=w.dim, offset=shift)
        value = _resize(e, value, w.dim, w.out * w.stride)
    if w.stride == 1:
        return value
    phase_dim = fresh_dim(f"{w.dim}_phase", value.type)
    split = e.emit("reshape", value, shape=_with_phase(value, w.dim, w.out, phase_dim, w.stride))
    taken = e.emit("slice", split, dim=phase_dim, begin=phase, size=1)
    return e.emit("reshape", taken, shape=value.type.resized(w.dim, w.out).dims)


def view_transpose(e: Emitter, value: Value, w: Window, tap: int) -> Value:
    """The transpose of `view`: an input-sized value, zero where no output reads."""
    shift, phase = _shift_and_phase(w, tap)
    if w.stride > 1:
        phase_dim = fresh_dim(f"{w.dim}_phase", value.type)
        split = e.emit("reshape", value, shape=_with_phase(value, w.dim, w.out, phase_dim, 1))
        spread = e.emit("pad", split, dim=phase_dim, low=phase, high=w.stride - 1 - phase)
        value = e.emit("reshape", spread, shape=value.type.resized(w.dim, w.out * w.stride).dims)
    if shift > 0:
        return _resize(e, e.emit("shift", value, dim=w.dim, offset=-shift), w.dim, w.size)
    value = _resize(e, value, w.dim, w.size)
    if shift:
        value = e.emit("shift", value, dim=w.dim, offset=-shift)
    return value


def _view_all(e: Emitter, value: Value, windows: list[Window], taps: tuple[int, ...]) -> Value:
    for w, tap in zip(windows, taps):
        value = view(e, value, w, tap)
    return value


def _view_transpose_all(e: Emitter, value: Value, windows: list[Window], taps: tuple[int, ...]) -> Value:
    for w, tap in zip(windows, taps):
        value = view_transpose(e, value, w, tap)
    return value


# ---------------------------------------------------------------------------- convolutions


def conv_gradients(e: Emitter, op_operands: list[Value], g: Value, windows: list[Window],
                   kernel_dims: tuple[str, ...], cin: str, cout: str) -> Cotangents:
    """[dx, dkernel] of conv(x, kernel) with cotangent `g`."""
    x, kernel = op_operands

    def input_part(piece: Value, level: int) -> Value:
        """The input's gradient from the kernel taps in `piece` (fixed on levels before `level`)."""
        if level == len(windows):
            return e.emit("einsum", g, piece, output=list(x.type.names))
        w, kdim = windows[level], kernel_dims[level]
        return add_all(e, (
            view_transpose(e, input_part(e.emit("slice", piece, dim=kdim, begin=tap, size=1), level + 1), w, tap)
            for tap in range(w.taps)
        ))

    def kernel_part(viewed: Value, level: int) -> Value:
        """The kernel's gradient for the taps `viewed` is at on levels before `level`."""
        if level == len(windows):
            return e.emit("einsum", viewed, g, output=[cin, cout])
        w = windows[level]
        taps = [kernel_part(view(e, viewed, w, tap), level + 1) for tap in range(w.taps)]
        return e.emit("stack", *taps, dim=kernel_dims[level], axis=0)

    return [input_part(kernel, 0), in_order(e, kernel_part(x, 0), kernel.type.names)]


# ---------------------------------------------------------------------------- pools


def _ones(e: Emitter, x: Value, windows: list[Window]) -> Value:
    """Ones over x's spatial dimensions: viewed for a tap, zero where the tap reads padding."""
    return e.emit("ones", shape=[x.type.dim(w.dim) for w in windows], dtype=x.type.dtype)


def max_pool_gradient(e: Emitter, x: Value, y: Value, g: Value, windows: list[Window]) -> Value:
    zero = scalar(e, 0.0, g)
    ones = _ones(e, x, windows) if any(w.padded for w in windows) else None
    taken: Value | None = None
    parts = []
    for taps in itertools.product(*(range(w.taps) for w in windows)):
        hit = e.emit("eq", _view_all(e, x, windows, taps), y)
        if ones is not None:
            hit = e.emit("logical_and", hit, e.emit("gt", _view_all(e, ones, windows, taps), zero))
        if taken is None:
            taken = hit
        else:
            hit = e.emit("logical_and", hit, e.emit("logical_not", taken))
            taken = e.emit("logical_or", taken, hit)
        parts.append(_view_transpose_all(e, e.emit("select", hit, g, zero), windows, taps))
    return add_all(e, parts)


def avg_pool_gradient(e: Emitter, x: Value, g: Value, windows: list[Window]) -> Value:
    """Separable: the count of unpadded elements is a product over dimensions, and
    the transposed views of one dimension sum before the next dimension's."""
    count: Value | None = None
    whole = 1  # the taps of unpadded dimensions, where every window is full
    for w in windows:
        if not w.padded:
            whole *= w.taps
            continue
        ones = _ones(e, x, [w])
        counted = add_all(e, (view(e, ones, w, tap) for tap in range(w.taps)))
        count = counted if count is None else e.emit("mul", count, counted)
    h = g if whole == 1 else e.emit("mul", g, scalar(e, 1.0 / whole, g))
    if count is not None:
        h = e.emit("div", h, count)
    for w in windows:
        h = add_all(e, (view_transpose(e, h, w, tap) for tap in range(w.taps)))
    return h
