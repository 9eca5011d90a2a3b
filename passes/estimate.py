"""`estimate`: what each function costs one device: peak memory by kind, FLOPs and
the bytes it sends over each mesh axis. The module is not changed.

    estimate                  print the report on standard error
    estimate{report=false}    only the counters that `--pass-statistics` prints

A local (post-`spmd`) function is measured per device, in its per-device types; a
global one as if it ran whole on one device.

Memory is a liveness schedule of the function in program order, kept close to
what a compiler such as XLA allocates (tests/test_estimate.py compares the two):
- the variables it touches are resident throughout, in their per-device storage
  type; a `read` that yields the storage type is a view of that buffer;
- its arguments are resident throughout (the caller owns them);
- any other value takes a buffer where its op runs and gives it back after the
  op of its last use; returned values live to the end; `stop_gradient`,
  `rename` and `reshape` are views of their operand's buffer;
- an elementwise value (or a broadcast or constant) whose only user is
  elementwise, a reduction, a broadcast or an `assign` is fused into that user:
  never stored, its operands stay live until the user runs;
- a `cast` is fused so into every one of its users when each is such a user or
  a normalization (layer_norm, softmax, ...): a conversion is cheap enough that
  a backend computes it again in each (XLA's fusion duplicates it), so a
  mixed-precision step keeps a bf16 value but not also its f32 form;
- a value that an `assign` stores is computed straight into the variable's
  buffer when nothing reads the variable's old value later (a train step
  updates in place, as meshir-run's donated step does);
- while an op runs, its operands and its results are live together;
- a value that contractions read in different layouts is stored once per layout
  (layout copies, below).

Layout copies. A contraction reads each operand in one physical layout, the one
its matrix-product kernel wants: XLA's layout assignment gives a dot's left
operand its summed dimensions minor-most ([batch, kept, summed]) and its right
operand its summed dimensions before its kept ones ([batch, summed, kept]), the
result being [batch, left kept, right kept]. A computed operand is written in
the wanted layout by its producer. A value that two contractions want in different layouts cannot be
written once for both, so XLA materializes it once per layout: it makes the
second copy together with the value (running the producer fusion a second time
with the other output layout, or copying its result at once) and frees each after
the last contraction that reads that layout. The typical case is a layer's input
`x` in a train step: the forward einsum(x, w) -> [batch, seq, out] reads it as
the left operand summing `model`, [batch, seq | model]; the weight gradient
einsum(x, d_h) -> [model, out] reads it as the left operand summing `batch` and
`seq`, [model | batch, seq]. (The backward `d_y` that einsum(x, d_y) and
einsum(d_y, w) read needs no copy: it is the right operand summing `batch, seq`
in one, the left one summing `out` in the other, [batch, seq | out] both times.)
The estimate does the same, independently of the backend: for each contraction
of two or more operands that sums some dimensions of an operand, the wanted
layout is its dimensions in three groups, major to minor: those another
operand has too and the result keeps, then the other kept ones and then the
summed ones when the operand is the left one (its first kept dimension comes
before any other operand's in the result), the summed ones and then the kept
ones otherwise. The value's own buffer serves its other users and the first
layout wanted (in program order); each further distinct layout gets a copy of the
same size, made with the value and alive to that layout's last use. Dimensions
are matched by position, through `rename` and `stop_gradient` views; users
through a `reshape` count as other users. Only values computed from the
function's arguments get copies: a variable, or a slice of stacked variables,
is read by every contraction from its one buffer (XLA's buffer assignment for the
transformer train step keeps one buffer per weight).

Intermediates kept for the backward part. Gradient rules derive the backward
part from an op's inputs: layer_norm's gradient normalizes x again, gelu's
computes erf (or tanh) of x again, softmax_cross_entropy's takes the softmax of
the logits. A backend that merges equal expressions finds that value inside the
forward op's own computation and keeps it from the forward part, while its
backward fusions still read x (XLA's buffer assignment for the transformer train
step keeps, per layer norm, both x and its normalized form). So for each such
forward op whose input the backward part reads, the estimate keeps
RECOMPUTED_INTERMEDIATES[op] buffers of that input's size, from the op to the
last backward op that reads the input.

Kinds of memory: parameters (trainable variables), optimizer slots (`@w.m`,
`@w.v`, `@w.momentum`, `@w.row`, `@w.col`, `@step`), other variables (state such as
a loss scale), inputs (arguments), gradients (`%grad_<var>`, the values autodiff
names), activations saved for the backward part (forward values still live when
the backward part starts, layout copies among them: the backward contraction's
copy of a forward value is what the backward part keeps), collective buffers
(results of collectives), layout copies (the other copies) and temporaries
(everything else). The backward part starts at the first op that a gradient needs
and the loss does not.

Bytes moved are what each device sends under ring algorithms: an all_reduce over
n devices sends 2(n-1)/n of its operand, a reduce_scatter or all_to_all (n-1)/n
of its operand, an all_gather (n-1)/n of its result, a collective_permute all of
it. A collective over several axes is counted as one ring per axis, in order,
each over the data that the previous ones leave (which adds up to the flat ring's
volume). `--pass-statistics` instead counts each collective's payload.

FLOPs count a multiply-add as two: a contraction does one per point of all the
dimensions it touches, a convolution or pool one per output and window tap, an
elementwise op one per result, a reduction one per operand element (a few for
softmax-like ops); ops that only move data do none.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

from meshir.interpreter import storage_layouts
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh
from meshir.types import TensorType

from .base import COLLECTIVE_BYTES, Pass, collective_axes, register_pass
from .optimizer import STEP

# The suffixes optimizer.py gives the slot variables of `@w`: `@w.m`, `@w.v`, ...
SLOT_SUFFIXES = ("m", "v", "momentum", "row", "col")
# Ops whose result is their first operand's buffer under another name or shape.
VIEW_OPS = frozenset({"stop_gradient", "rename", "reshape"})
# Ops that contract operands into a product (see the module doc on layout copies),
# and the layout one wants an operand in: groups of its dimension positions, major first.
CONTRACTIONS = frozenset({"einsum", "matmul"})
Layout = tuple[frozenset[int], ...]
# Ops besides the elementwise and binary ones that a backend fuses into their
# only user, and users besides elementwise, binary and reduction ops that take them:
# the fused value is computed inside its user's loop and never stored.
FUSIBLE_PRODUCERS = frozenset({"broadcast", "constant", "zeros", "ones", "full", "iota"})
FUSING_CONSUMERS = frozenset({"broadcast", "assign", "assign_add"})
# Conversions are cheap enough that a backend recomputes them inside each of their
# users, when all of those are fusing consumers or the normalizations (loops over
# their input as well): a mixed-precision step keeps x, not also its f32 copy.
CONVERSIONS = frozenset({"cast"})
NORMALIZATIONS = frozenset({"layer_norm", "softmax", "log_softmax", "logsumexp", "softmax_cross_entropy"})
# How many values the size of its first operand an op's forward computation makes
# that its gradient rule computes again, and a merging backend keeps instead (see
# the module doc): layer_norm's normalized input, gelu's erf (or tanh),
# softmax_cross_entropy's log-softmax.
RECOMPUTED_INTERMEDIATES = {"layer_norm": 1, "gelu": 1, "softmax_cross_entropy": 1}
# FLOPs per element of the first operand for reductions that do more than one
# operation per element (a max, a subtraction, an exponential, a sum, a division...).
FLOPS_PER_ELEMENT = {"softmax": 5, "log_softmax": 5, "logsumexp": 4, "softmax_cross_entropy": 6, "layer_norm": 8}
# Ops that only move or make data: no arithmetic.
NO_FLOPS_GROUPS = frozenset({"shape", "indexing", "state", "constants", "mesh", "collectives"})

# What the estimate totals over the whole function, and every kind the peak splits into.
TOTALS = ("parameters", "optimizer_slots", "other_variables", "inputs", "gradients", "saved_activations")
KINDS = TOTALS + ("collective_buffers", "layout_copies", "temporaries")
RESIDENT = TOTALS[:4]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. `parameters` to `saved_activations` are totals over the
    whole function; `peak` is the most live at once, during op `peak_op`, and
    `at_peak` splits it by kind."""

    parameters: int
    optimizer_slots: int
    other_variables: int
    inputs: int
    gradients: int
    saved_activations: int
    peak: int
    peak_op: str
    at_peak: dict[str, int]


@dataclass(frozen=True)
class CommunicationEstimate:
    """Bytes each device sends, per mesh axis and per collective kind, and how many
    collectives of each kind the function runs."""

    bytes_per_axis: dict[str, int] = field(default_factory=dict)
    bytes_per_kind: dict[str, int] = field(default_factory=dict)
    count_per_kind: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionEstimate:
    function: str
    mesh: str | None  # "@m <rows=2, cols=4>" for a local function; None: one device
    memory: MemoryEstimate
    flops: int
    communication: CommunicationEstimate

    def as_json(self) -> dict[str, Any]:
        memory = self.memory
        return {
            "function": self.function,
            "per_device_of": self.mesh,
            "memory_bytes": {
                **{kind: getattr(memory, kind) for kind in TOTALS},
                "peak": memory.peak,
                "peak_op": memory.peak_op,
                "at_peak": dict(memory.at_peak),
            },
            "flops": self.flops,
            "bytes_moved_per_axis": dict(self.communication.bytes_per_axis),
            "bytes_moved_per_collective": dict(self.communication.bytes_per_kind),
            "collectives": dict(self.communication.count_per_kind),
        }


# --- variables and values ----------------------------------------------------


def variable_kind(module: Module, name: str) -> str:
    variable = module.variables[name]
    owner, _, suffix = name.rpartition(".")
    if not variable.trainable and (name == STEP or (suffix in SLOT_SUFFIXES and owner in module.variables)):
        return "optimizer_slots"
    return "parameters" if variable.trainable else "other_variables"


def stored_types(module: Module, function: Function, mesh: Mesh | None) -> dict[str, TensorType]:
    """Each variable the function touches -> the type one device stores it in."""
    types = {}
    for name, layout in storage_layouts(module, function).items():
        stored = module.variables[name].slice_type
        types[name] = layout.local_type(stored, mesh) if function.is_local else stored
    return types


def gradient_values(module: Module, function: Function) -> list[Value]:
    """The gradients autodiff made: the results after the loss while the function
    still returns them (its `gradients` attribute), else the values named `grad_<var>`."""
    if "gradients" in function.attributes:
        return function.returns[1:1 + len(function.attributes["gradients"])]
    return [v for v in function.values() if v.name and v.name.startswith("grad_") and v.name[5:] in module.variables]


def _ancestors(function: Function, roots: list[Value], stop: set[Value] = frozenset()) -> set[Operation]:
    """The ops whose results `roots` depend on, the roots' own ops included, not
    looking past the values in `stop`."""
    needed, found = set(roots), set()
    for op in reversed(function.ops):
        if any(r in needed for r in op.results):
            found.add(op)
            needed.update(v for v in op.operands if v not in stop)
    return found


def backward_start(function: Function, gradients: list[Value]) -> int | None:
    """The index of the first op a gradient needs and the loss does not; None without
    gradients. The loss's own needs stop at the gradients: a loss all-reduced in one
    fused collective with them (fuse-collectives) does not make the backward forward."""
    if not gradients or not function.returns:
        return None
    forward = _ancestors(function, function.returns[:1], stop=set(gradients))
    backward = _ancestors(function, gradients) - forward
    return next((i for i, op in enumerate(function.ops) if op in backward), None)


# --- liveness ----------------------------------------------------------------


@dataclass(eq=False)
class _Buffer:
    """One allocation: the value that made it, the op indices it lives over, and
    every value that is a view of it; `copy`: a second layout of `root` that a
    contraction reads (see the module doc), which no value names."""

    root: Value
    born: int
    dies: int
    views: list[Value] = field(default_factory=list)
    copy: bool = False


def _fusible_producer(op: Operation) -> bool:
    return op.opdef.group in ("elementwise", "binary") or op.name in FUSIBLE_PRODUCERS


def _fusing_consumer(op: Operation) -> bool:
    return op.opdef.group in ("elementwise", "binary", "reductions") or op.name in FUSING_CONSUMERS


def _operand_layout(op: Operation, operand: Value) -> Layout | None:
    """The layout the contraction `op` wants `operand` in, as groups of its dimension
    positions from major to minor (see the module doc); None when `op` is no
    contraction of two or more operands or sums none of `operand`'s dimensions."""
    if op.name not in CONTRACTIONS or len(op.operands) < 2:
        return None
    result = op.results[0].type.names
    others = {name for other in op.operands if other is not operand for name in other.type.names}
    names = operand.type.names
    summed = frozenset(i for i, name in enumerate(names) if name not in result)
    if not summed:
        return None
    batch = frozenset(i for i, name in enumerate(names) if name in result and name in others)
    free = frozenset(i for i, name in enumerate(names) if name in result and name not in others)
    first_free = min((result.index(names[i]) for i in free), default=len(result))
    others_first = min((result.index(n) for n in others if n in result and n not in names), default=len(result))
    groups = (batch, free, summed) if first_free < others_first else (batch, summed, free)
    return tuple(group for group in groups if group)


def _data_dependent(function: Function) -> set[Value]:
    """The values computed from the function's arguments (activations and what
    derives from them), as opposed to those made from variables and constants alone."""
    dependent = set(function.args)
    for op in function.ops:
        if any(v in dependent for v in op.operands):
            dependent.update(op.results)
    return dependent


def _split_layouts(buffer: _Buffer, uses: list[tuple[int, Layout | None]], end: int | None) -> list[_Buffer]:
    """Sets `buffer.dies` from its uses (positions where they run, and the layout
    each contraction wants) and returns its layout copies: its own layout serves
    the other ops and the first layout wanted; every later distinct layout gets a
    copy made with the value and alive to that layout's last use."""
    last_use: dict[Layout, int] = {}
    for position, layout in uses:
        if layout is not None:
            last_use[layout] = max(last_use.get(layout, position), position)
    home = next(iter(last_use), None)
    buffer.dies = end if end is not None else max(
        [buffer.born] + [position for position, layout in uses if layout is None or layout == home])
    return [_Buffer(buffer.root, buffer.born, last, copy=True) for layout, last in last_use.items() if layout != home]


def _execution_positions(function: Function) -> dict[Operation, int]:
    """Where each op's work happens: its own index, or, for an op fused into its
    users (its only user, or every user of a conversion), the last one's position
    (see the module doc)."""
    users = function.users()
    returned = set(function.returns)
    runs_at: dict[Operation, int] = {}
    for index in range(len(function.ops) - 1, -1, -1):
        op = function.ops[index]
        readers = users.get(op.results[0], []) if len(op.results) == 1 else []
        if op.name in CONVERSIONS:
            fused = bool(readers) and all(_fusing_consumer(u) or u.name in NORMALIZATIONS for u in readers)
        else:
            fused = _fusible_producer(op) and len(readers) == 1 and _fusing_consumer(readers[0])
        fused = fused and op.results[0] not in returned
        runs_at[op] = max(runs_at[u] for u in readers) if fused else index
    return runs_at


def _stored_in_place(function: Function, runs_at: dict[Operation, int], views: dict[Value, str]) -> set[Value]:
    """Values an `assign` stores that are computed straight into their variable's
    buffer: those made no earlier than the last use of the variable's old value."""
    position = {op: i for i, op in enumerate(function.ops)}
    last_use = {value: -1 for value in views}
    for op in function.ops:
        for operand in op.operands:
            if operand in views:
                last_use[operand] = max(last_use[operand], runs_at[op])
    in_place = set()
    for index, op in enumerate(function.ops):
        value = op.operands[0] if op.name in ("assign", "assign_add") else None
        if value is None or value.owner is None or value in function.returns:
            continue
        variable = op.attr("var").name
        old_value_needed = max((last_use[v] for v, name in views.items() if name == variable and position[v.owner] < index),
                               default=-1)
        if old_value_needed <= runs_at[value.owner]:
            in_place.add(value)
    return in_place


def _buffers(function: Function, stored: dict[str, TensorType], runs_at: dict[Operation, int]) -> list[_Buffer]:
    """The buffers of the function's op results, each living from where its op runs
    to where its last user runs. Fused values, views, reads of a variable's storage
    type and values computed into a variable's buffer get none of their own."""
    views: dict[Value, str] = {}  # values that are a variable's buffer -> the variable
    for op in function.ops:
        if op.name == "read" and op.result.type == stored.get(op.attr("var").name):
            views[op.result] = op.attr("var").name
        elif op.name in VIEW_OPS and op.operands[0] in views:
            views[op.result] = views[op.operands[0]]
    in_place = _stored_in_place(function, runs_at, views)
    owner: dict[Value, _Buffer | None] = {}  # None: no buffer of its own
    buffers: list[_Buffer] = []
    for index, op in enumerate(function.ops):
        for result in op.results:
            if op.name in VIEW_OPS:
                owner[result] = owner.get(op.operands[0])
                if owner[result] is not None:
                    owner[result].views.append(result)
            elif result in views or result in in_place or runs_at[op] != index:
                owner[result] = None
            else:
                owner[result] = _Buffer(result, index, index, [result])
                buffers.append(owner[result])
    # A wanted layout is kept by position: rename and stop_gradient keep their
    # operand's dimension order, a reshape does not (its users count as others).
    positional = set()
    for value in owner:
        if value.owner.name not in VIEW_OPS or (value.owner.name != "reshape" and value.owner.operands[0] in positional):
            positional.add(value)
    computed = _data_dependent(function)
    uses: dict[_Buffer, list[tuple[int, Layout | None]]] = {b: [] for b in buffers}
    for op in function.ops:
        if op.name in VIEW_OPS:
            continue  # its users read the buffer, not the view itself
        for operand in op.operands:
            buffer = owner.get(operand)
            if buffer is not None:
                layout = _operand_layout(op, operand) if operand in positional and operand in computed else None
                uses[buffer].append((runs_at[op], layout))
    returned = {owner[v] for v in function.returns if owner.get(v) is not None}
    copies = []
    for buffer in buffers:
        copies += _split_layouts(buffer, uses[buffer], len(function.ops) if buffer in returned else None)
    return buffers + copies


def _kept_intermediates(function: Function, backward: int | None, runs_at: dict[Operation, int]) -> list[_Buffer]:
    """The forward intermediates that the backward part computes again and a
    merging backend keeps instead (RECOMPUTED_INTERMEDIATES): each lives from its
    forward op to the last backward op that reads that op's input."""
    if backward is None:
        return []
    users = function.users()
    kept = []
    for op in function.ops[:backward]:
        count = RECOMPUTED_INTERMEDIATES.get(op.name, 0)
        source = op.operands[0] if op.operands else None
        last = max((runs_at[user] for user in users.get(source, []) if runs_at[user] >= backward), default=None)
        if count and last is not None:
            kept += [_Buffer(source, runs_at[op], last, copy=True) for _ in range(count)]
    return kept


def _buffer_kind(buffer: _Buffer, gradients: set[Value], backward: int | None) -> str:
    if any(v in gradients for v in buffer.views):
        return "gradients"
    if backward is not None and buffer.born < backward <= buffer.dies:
        return "saved_activations"
    if buffer.copy:
        return "layout_copies"
    if buffer.root.owner is not None and buffer.root.owner.name in COLLECTIVE_BYTES:
        return "collective_buffers"
    return "temporaries"


def _describe(op: Operation, index: int, total: int) -> str:
    names = ", ".join(f"%{r.name}" for r in op.results if r.name)
    return f"{names + ' = ' if names else ''}{op.name} (op {index + 1} of {total})"


def estimate_memory(module: Module, function: Function, mesh: Mesh | None) -> MemoryEstimate:
    stored = stored_types(module, function, mesh)
    resident: Counter[str] = Counter()
    for name, ttype in stored.items():
        resident[variable_kind(module, name)] += ttype.nbytes
    resident["inputs"] = sum(a.type.nbytes for a in function.args)
    gradients = gradient_values(module, function)
    backward = backward_start(function, gradients)
    runs_at = _execution_positions(function)
    buffers = _buffers(function, stored, runs_at) + _kept_intermediates(function, backward, runs_at)
    kinds = [_buffer_kind(b, set(gradients), backward) for b in buffers]

    live_change = [0] * (len(function.ops) + 2)
    for buffer in buffers:
        live_change[buffer.born] += buffer.root.type.nbytes
        live_change[buffer.dies + 1] -= buffer.root.type.nbytes
    live, peak_live, peak_index = 0, 0, 0
    for index in range(len(function.ops)):
        live += live_change[index]
        if live > peak_live:
            peak_live, peak_index = live, index
    at_peak = Counter({kind: resident[kind] for kind in RESIDENT})
    for buffer, kind in zip(buffers, kinds):
        if buffer.born <= peak_index <= buffer.dies:
            at_peak[kind] += buffer.root.type.nbytes
    peak_op = _describe(function.ops[peak_index], peak_index, len(function.ops)) if function.ops else "none"
    return MemoryEstimate(
        parameters=resident["parameters"],
        optimizer_slots=resident["optimizer_slots"],
        other_variables=resident["other_variables"],
        inputs=resident["inputs"],
        gradients=sum(v.type.nbytes for v in gradients),
        saved_activations=sum(b.root.type.nbytes for b, k in zip(buffers, kinds) if k == "saved_activations"),
        peak=sum(resident.values()) + peak_live,
        peak_op=peak_op,
        at_peak={kind: at_peak[kind] for kind in KINDS},
    )


# --- FLOPs -------------------------------------------------------------------


def op_flops(op: Operation) -> int:
    """Floating-point operations of one op, counting a multiply-add as two."""
    group = op.opdef.group
    if op.name in ("einsum", "matmul"):
        product = math.prod({d.name: d.size for v in op.operands for d in v.type.dims}.values())
        return 2 * product if len(op.operands) > 1 else product
    if op.name in ("conv1d", "conv2d"):
        kernel = op.operands[1].type
        return 2 * op.results[0].type.num_elements * kernel.num_elements // max(kernel.size_of(op.attr("out_channels")), 1)
    if op.name in ("max_pool", "avg_pool"):
        return op.results[0].type.num_elements * math.prod(op.attr("window"))
    if op.name == "scatter_add":
        return op.operands[1].type.num_elements
    if group in NO_FLOPS_GROUPS:
        return 0
    if group == "reductions" or op.name in FLOPS_PER_ELEMENT:
        return FLOPS_PER_ELEMENT.get(op.name, 1) * op.operands[0].type.num_elements
    return sum(r.type.num_elements for r in op.results)


# --- communication -----------------------------------------------------------


def _ring_share(kind: str, group: int) -> Fraction:
    """The part of the data a device sends in a ring of `group` devices."""
    if kind == "all_reduce":
        return Fraction(2 * (group - 1), group)
    if kind == "collective_permute":
        return Fraction(1)
    return Fraction(group - 1, group)


def collective_bytes_per_axis(op: Operation, mesh: Mesh) -> dict[str, Fraction]:
    """Bytes one device sends over each axis of one collective (see the module doc)."""
    payload = COLLECTIVE_BYTES[op.name](op)
    axes = collective_axes(op)
    sent: dict[str, Fraction] = {}
    remaining = Fraction(payload)
    for axis in axes:
        size = mesh.axis_size(axis)
        sent[axis] = remaining * _ring_share(op.name, size) if size > 1 else Fraction(0)
        remaining /= size
    return sent


def estimate_communication(function: Function, mesh: Mesh | None) -> CommunicationEstimate:
    per_axis: Counter[str] = Counter()
    per_kind: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for op in function.ops:
        if op.name not in COLLECTIVE_BYTES or op.name == "all_slice" or mesh is None:
            continue
        counts[op.name] += 1
        for axis, sent in collective_bytes_per_axis(op, mesh).items():
            per_axis[axis] += sent
            per_kind[op.name] += sent
    return CommunicationEstimate({a: round(b) for a, b in sorted(per_axis.items())},
                                 {k: round(b) for k, b in sorted(per_kind.items())}, dict(sorted(counts.items())))


# --- the whole function, the module, the report ------------------------------


def estimate_function(module: Module, function: Function) -> FunctionEstimate:
    """The estimate of one verified function."""
    mesh = module.mesh_of(function) if function.is_local else None
    return FunctionEstimate(
        function=function.name,
        mesh=f"@{mesh.name} {mesh}" if mesh is not None else None,
        memory=estimate_memory(module, function, mesh),
        flops=sum(op_flops(op) for op in function.ops),
        communication=estimate_communication(function, mesh),
    )


def estimate_module(module: Module) -> list[FunctionEstimate]:
    return [estimate_function(module, f) for f in module.functions.values()]


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:,.2f} {unit}"
    return f"{count} B"


_LABELS = {
    "parameters": "parameters", "optimizer_slots": "optimizer slots", "other_variables": "other variables",
    "inputs": "inputs", "gradients": "gradients", "saved_activations": "activations saved for backward",
    "collective_buffers": "collective buffers", "layout_copies": "layout copies", "temporaries": "temporaries",
}


def format_report(estimates: list[FunctionEstimate]) -> str:
    lines = []
    for e in estimates:
        memory = e.memory
        where = f"per device of mesh {e.mesh}" if e.mesh else "whole, on one device"
        lines.append(f"===- Estimate of func @{e.function} ({where}) -===")
        lines.append("memory:")
        for kind in TOTALS:
            lines.append(f"  {_LABELS[kind]:<32}{format_bytes(getattr(memory, kind)):>12}")
        lines.append(f"  {'peak':<32}{format_bytes(memory.peak):>12}  during {memory.peak_op}")
        for kind in KINDS:
            if memory.at_peak[kind]:
                lines.append(f"    {_LABELS[kind]:<30}{format_bytes(memory.at_peak[kind]):>12}")
        lines.append(f"flops: {e.flops:,}")
        comm = e.communication
        if comm.count_per_kind:
            lines.append("bytes sent per device:")
            for axis, sent in comm.bytes_per_axis.items():
                lines.append(f"  axis {axis:<27}{format_bytes(sent):>12}")
            for kind, sent in comm.bytes_per_kind.items():
                lines.append(f"  {kind + ' x' + str(comm.count_per_kind[kind]):<32}{format_bytes(sent):>12}")
        else:
            lines.append("bytes sent per device: none")
    return "\n".join(lines) + "\n"


@register_pass
@dataclass(frozen=True)
class Estimate(Pass):
    name: ClassVar[str] = "estimate"
    report: bool = True  # print the report on standard error

    def run(self, module: Module) -> dict[str, int]:
        estimates = estimate_module(module)
        if self.report:
            sys.stderr.write(format_report(estimates))
        counters = {}
        for e in estimates:
            counters[f"peak-bytes[@{e.function}]"] = e.memory.peak
            counters[f"flops[@{e.function}]"] = e.flops
        return counters
