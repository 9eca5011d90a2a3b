"""`fuse-collectives {max-bytes}`: fewer, larger collectives in local programs.

Each collective pays a fixed latency, so independent collectives that could
travel together are combined: every operand is flattened into a fresh `fused`
dimension, the pieces are concatenated, one collective moves them all, and
`split` plus `reshape` give back each original result (under its own name).

What fuses, keyed by kind, dtype and the attributes that must agree:
- `all_reduce` (same `reduce`; the same set of `axes`, in any order, since a
  reduction does not care how its group is numbered) and `collective_permute`
  (same `axis`, `shift` and `wrap`) act on every element alike, so a flat
  concatenation is exact.
- `reduce_scatter`, `all_gather` and `all_to_all` (same `axes` in the same
  order, which numbers the blocks; the same `reduce`) act on blocks of one
  dimension. Each operand is first transposed to put that dimension first and
  reshaped to `[block, fused]`, one row per block of the group, so that
  concatenating along `fused` keeps every member's k-th block in row k; the
  fused collective works on `block`, and each piece is reshaped back (for
  `all_to_all`, the received rows become the major part of `concat_dim`).
- `all_slice` moves nothing, so there is nothing to save by fusing it;
  `axis_index` and `dynamic_slice` are not communication.

Buckets fill greedily in program order: a collective joins the open bucket of
its key unless the bucket's operand bytes (per device) would exceed
`max-bytes` or it depends on a member (or a member on it, transitively, through
other buckets too); then it opens a new bucket. A collective larger than
`max-bytes` stays alone. The fused block goes where all its operands are
available and before the first use of any of its results: the function is
re-sorted topologically, keeping the original order wherever dependences allow
and every variable's reads and writes in their order.

Before fusing, two peepholes remove collectives outright:
`all_slice(all_reduce(x))` becomes `reduce_scatter(x)`, and
`add(all_reduce(x), all_reduce(y))` becomes `all_reduce(add(x, y))` (likewise
`sub` for sums, `maximum`/`minimum` for max/min, `mul` for products), when the
all_reduces feed nothing else. `--pass-statistics` shows the collectives and
bytes before and after.
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass
from typing import Callable, ClassVar, Hashable

from meshir.emitter import Emitter
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import Mesh
from meshir.ops.grad_helpers import fresh_dim
from meshir.registry import lookup
from meshir.types import Dim, TensorType

from .base import Pass, register_pass
from .cse import attribute_key

# --- peepholes -----------------------------------------------------------------------

# Binary ops that commute with an all_reduce of the given kind:
# op(all_reduce(x), all_reduce(y)) == all_reduce(op(x, y)) up to float reassociation.
_COMBINED_UNDER: dict[str, str] = {"add": "sum", "sub": "sum", "maximum": "max", "minimum": "min", "mul": "prod"}


def _scratch(module: Module, function: Function) -> Emitter:
    """An emitter whose ops collect in a list of their own (`.function.ops`), to be spliced in."""
    return Emitter(module, dataclasses.replace(function, ops=[], returns=[]))


def _derived(name: str | None, suffix: str) -> str | None:
    return f"{name}_{suffix}" if name is not None else None


def _all_reduce_feeding_only(value: Value, op: Operation, uses: dict[Value, int]) -> Operation | None:
    """The all_reduce defining `value`, when `op` holds every use of it."""
    owner = value.owner
    if owner is None or owner.name != "all_reduce" or uses.get(value, 0) != op.operands.count(value):
        return None
    return owner


def _reduce_scatter_for_slice(e: Emitter, op: Operation, uses: dict[Value, int]) -> Value | None:
    """all_slice(all_reduce(x)) -> reduce_scatter(x): each device reduces only the block it keeps."""
    reduced = _all_reduce_feeding_only(op.operands[0], op, uses)
    if reduced is None or sorted(reduced.attr("axes")) != sorted(op.attr("axes")):
        return None
    return e.emit("reduce_scatter", reduced.operands[0], dim=op.attr("dim"), axes=op.attr("axes"),
                  reduce=reduced.attr("reduce"), name=op.result.name)


def _reduce_after_combining(e: Emitter, op: Operation, uses: dict[Value, int]) -> Value | None:
    """op(all_reduce(x), all_reduce(y)) -> all_reduce(op(x, y)): one collective instead of two."""
    left, right = (_all_reduce_feeding_only(v, op, uses) for v in op.operands)
    if left is None or right is None or left.operands[0].type != right.operands[0].type:
        return None  # operands of different types would broadcast into more bytes to reduce
    reduce = _COMBINED_UNDER[op.name]
    if left.attr("reduce") != reduce or right.attr("reduce") != reduce or sorted(left.attr("axes")) != sorted(right.attr("axes")):
        return None
    local = e.emit(op.name, left.operands[0], right.operands[0], name=_derived(op.result.name, "local"))
    return e.emit("all_reduce", local, axes=left.attr("axes"), reduce=reduce, name=op.result.name)


# Each rewrite replaces an op and the all_reduces feeding it (they feed nothing
# else), or returns None to leave them alone.
_PEEPHOLES: dict[str, Callable[[Emitter, Operation, dict[Value, int]], Value | None]] = {
    "all_slice": _reduce_scatter_for_slice,
    **{name: _reduce_after_combining for name in _COMBINED_UNDER},
}


def rewrite_peepholes(module: Module, function: Function) -> None:
    """Apply the peepholes in one forward sweep, so chains (add(add(...), ...)) collapse."""
    uses = function.use_counts()
    replaced: dict[Value, Value] = {}
    consumed: set[Operation] = set()
    kept: list[Operation] = []
    for op in function.ops:
        op.operands = [replaced.get(v, v) for v in op.operands]
        rewrite = _PEEPHOLES.get(op.name)
        if rewrite is not None:
            e = _scratch(module, function)
            replacement = rewrite(e, op, uses)
            if replacement is not None:
                consumed.update(v.owner for v in op.operands)
                kept.extend(e.function.ops)
                replaced[op.result] = replacement
                uses[replacement] = uses.get(op.result, 0)
                continue
        kept.append(op)
    function.ops = [op for op in kept if op not in consumed]
    function.returns = [replaced.get(v, v) for v in function.returns]


# --- which collectives fuse, and how ----------------------------------------------------


@dataclass(frozen=True)
class Fusion:
    """How one kind of collective fuses.

    `matched`: attributes that must be equal. `lead`: the attribute naming the
    operand dimension cut into the group's blocks (None: the collective treats
    every element alike). `cuts_operand`: the operand holds the group's G
    blocks (else it is one block). `joined`: the attribute naming the result
    dimension that the received blocks make up."""

    matched: tuple[str, ...]
    axes_in_any_order: bool = False
    lead: str | None = None
    cuts_operand: bool = False
    joined: str | None = None


FUSIONS: dict[str, Fusion] = {
    "all_reduce": Fusion(matched=("reduce",), axes_in_any_order=True),
    "collective_permute": Fusion(matched=("axis", "shift", "wrap")),
    "reduce_scatter": Fusion(matched=("axes", "reduce"), lead="dim", cuts_operand=True, joined="dim"),
    "all_gather": Fusion(matched=("axes",), lead="dim", joined="dim"),
    "all_to_all": Fusion(matched=("axes",), lead="split_dim", cuts_operand=True, joined="concat_dim"),
}


def _fusion_key(op: Operation) -> Hashable:
    fusion = FUSIONS[op.name]
    key = (op.name, op.operands[0].type.dtype, tuple(attribute_key(op.attr(a)) for a in fusion.matched))
    return key + (tuple(sorted(op.attr("axes"))),) if fusion.axes_in_any_order else key


def _data_order(ops: list[Operation]) -> list[tuple[int, int]]:
    """(op, an earlier op defining one of its operands), by index."""
    defined_by = {v: i for i, op in enumerate(ops) for v in op.results}
    return [(i, defined_by[v]) for i, op in enumerate(ops) for v in dict.fromkeys(op.operands) if v in defined_by]


def _state_order(ops: list[Operation]) -> list[tuple[int, int]]:
    """(op, the previous op touching the same variable), by index: reads and writes keep their order."""
    last_access: dict[str, int] = {}
    pairs = []
    for i, op in enumerate(ops):
        symbol = lookup(op.name).symbol_operand
        if symbol is None:
            continue
        variable = op.attributes[symbol].name
        if variable in last_access:
            pairs.append((i, last_access[variable]))
        last_access[variable] = i
    return pairs


class _DependenceGraph:
    """The function's ops (by index) with an edge from each op to those that must
    follow it; the buckets filled so far are contracted into one node each."""

    def __init__(self, ops: list[Operation]):
        self.index = {op: i for i, op in enumerate(ops)}
        self.successors: list[list[int]] = [[] for _ in ops]
        for i, before in _data_order(ops) + _state_order(ops):
            self.successors[before].append(i)
        self.members: dict[int, list[int]] = {}  # index -> every index of its bucket

    def merge(self, bucket: list[Operation], op: Operation) -> None:
        first = self.index[bucket[0]]
        group = self.members.get(first, [first])
        group.append(self.index[op])
        for i in group:
            self.members[i] = group

    def depends(self, bucket: list[Operation], op: Operation) -> bool:
        """Whether `op` depends on the bucket or the bucket on `op`: fusing them would make a cycle."""
        indices = {self.index[m] for m in bucket}
        return self._reaches(indices, {self.index[op]}) or self._reaches({self.index[op]}, indices)

    def _reaches(self, sources: set[int], targets: set[int]) -> bool:
        stack, seen = list(sources), set(sources)
        while stack:
            for successor in self.successors[stack.pop()]:
                for node in self.members.get(successor, [successor]):
                    if node in targets:
                        return True
                    if node not in seen:
                        seen.add(node)
                        stack.append(node)
        return False


def fill_buckets(ops: list[Operation], max_bytes: int) -> list[list[Operation]]:
    """Greedy buckets of fusable collectives in program order; only those of two or more."""
    graph = _DependenceGraph(ops)
    open_buckets: dict[Hashable, list[Operation]] = {}
    buckets: list[list[Operation]] = []
    for op in ops:
        if op.name not in FUSIONS:
            continue
        key = _fusion_key(op)
        bucket = open_buckets.get(key)
        if bucket is None or _operand_bytes(bucket) + op.operands[0].type.nbytes > max_bytes or graph.depends(bucket, op):
            bucket = open_buckets[key] = []
            buckets.append(bucket)
        else:
            graph.merge(bucket, op)
        bucket.append(op)
    return [b for b in buckets if len(b) > 1]


def _operand_bytes(bucket: list[Operation]) -> int:
    return sum(op.operands[0].type.nbytes for op in bucket)


# --- emitting a fused bucket ------------------------------------------------------------


@dataclass(frozen=True)
class _PackedDims:
    """The fresh dimension names of packed operands: `[block, fused]` (or `[fused]`)."""

    block: str
    fused: str


def _ordered(e: Emitter, value: Value, names: tuple[str, ...], name: str | None) -> Value:
    if value.type.names == names:
        return value
    return e.emit("transpose", value, order=list(names), name=name)


def _lead_first(ttype: TensorType, lead: str) -> tuple[Dim, ...]:
    return (ttype.dim(lead), *(d for d in ttype.dims if d.name != lead))


def _pack(e: Emitter, op: Operation, dims: _PackedDims, mesh: Mesh) -> Value:
    """The member's operand as `[fused]`, or as `[block, fused]` with one row per block of its group."""
    fusion, x = FUSIONS[op.name], op.operands[0]
    packed_name = _derived(x.name, "packed")
    if fusion.lead is None:
        return e.emit("reshape", x, shape=[Dim(dims.fused, x.type.num_elements)], name=packed_name)
    lead = op.attr(fusion.lead)
    x = _ordered(e, x, tuple(d.name for d in _lead_first(x.type, lead)), _derived(x.name, f"{lead}_major"))
    rows = mesh.group_size(op.attr("axes")) if fusion.cuts_operand else 1
    return e.emit("reshape", x, shape=[Dim(dims.block, rows), Dim(dims.fused, x.type.num_elements // rows)], name=packed_name)


def _unpack(e: Emitter, op: Operation, piece: Value, dims: _PackedDims) -> Value:
    """The member's result from its piece of the fused collective's result."""
    fusion, result = FUSIONS[op.name], op.result
    if fusion.lead is None:
        return e.emit("reshape", piece, shape=result.type.dims, name=result.name)
    lead, joined = op.attr(fusion.lead), op.attr(fusion.joined)
    lead_first = _lead_first(result.type, lead)
    if joined != lead:
        # The received rows are the major part of `joined`: move them beside it, then merge.
        rows = piece.type.size_of(dims.block)
        per_block = tuple(Dim(d.name, d.size // rows) if d.name == joined else d for d in lead_first)
        rows_apart = e.emit("reshape", piece, shape=[Dim(dims.block, rows), *per_block], name=_derived(result.name, "rows"))
        order = [d.name for d in per_block]
        order.insert(order.index(joined), dims.block)
        piece = _ordered(e, rows_apart, tuple(order), _derived(result.name, f"rows_by_{joined}"))
    if lead_first == result.type.dims:
        return e.emit("reshape", piece, shape=lead_first, name=result.name)
    restored = e.emit("reshape", piece, shape=lead_first, name=_derived(result.name, f"{lead}_major"))
    return _ordered(e, restored, result.type.names, result.name)


def emit_bucket(module: Module, function: Function, bucket: list[Operation], number: int,
                dims: _PackedDims) -> tuple[list[Operation], dict[Value, Value]]:
    """The ops of one fused collective, and each member's result -> its replacement."""
    first = bucket[0]
    fusion = FUSIONS[first.name]
    e = _scratch(module, function)
    packed = [_pack(e, op, dims, module.mesh_of(function)) for op in bucket]
    operands = e.emit("concat", *packed, dim=dims.fused, name=f"bucket{number}")
    attributes = dict(first.attributes)
    for attribute in {fusion.lead, fusion.joined} - {None}:
        attributes[attribute] = dims.block
    fused = e.emit(first.name, operands, name=f"bucket{number}_{first.name}", **attributes)
    pieces = e.emit("split", fused, dim=dims.fused, sizes=[p.type.size_of(dims.fused) for p in packed],
                    name=[_derived(op.result.name, "piece") for op in bucket])
    replacements = {op.result: _unpack(e, op, piece, dims) for op, piece in zip(bucket, pieces)}
    return e.function.ops, replacements


# --- putting the fused blocks in place --------------------------------------------------


def schedule(units: list[list[Operation]], keys: list[int], ordering: list[tuple[int, int]]) -> list[Operation]:
    """The units' ops in a topological order of their data dependences and of the
    `ordering` pairs (unit, earlier unit); among ready units the smallest key goes first."""
    defined_by = {v: u for u, ops in enumerate(units) for op in ops for v in op.results}
    predecessors = [{defined_by[v] for op in ops for v in op.operands if v in defined_by} - {u}
                    for u, ops in enumerate(units)]
    for unit, before in ordering:
        predecessors[unit].add(before)
    successors: list[list[int]] = [[] for _ in units]
    for unit, earlier in enumerate(predecessors):
        for before in earlier:
            successors[before].append(unit)
    waiting = [len(p) for p in predecessors]
    ready = [(keys[u], u) for u in range(len(units)) if waiting[u] == 0]
    heapq.heapify(ready)
    ordered: list[Operation] = []
    while ready:
        _, unit = heapq.heappop(ready)
        ordered += units[unit]
        for successor in successors[unit]:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                heapq.heappush(ready, (keys[successor], successor))
    # Buckets are filled so that no cycle forms; a unit left waiting would be an op lost.
    assert len(ordered) == sum(map(len, units)), "fuse-collectives: the units' dependences form a cycle"
    return ordered


def fuse_buckets(module: Module, function: Function, max_bytes: int) -> None:
    """Fuse the function's buckets, each placed where its first member was unless
    dependences move it later (or move the ops using its results)."""
    ops = function.ops
    buckets = fill_buckets(ops, max_bytes)
    if not buckets:
        return
    types = [v.type for v in function.values()]
    dims = _PackedDims(block=fresh_dim("block", *types), fused=fresh_dim("fused", *types))
    # One unit per op, except that a bucket's members make one unit, keyed by its first member.
    unit_of_op: dict[Operation, int] = {}
    units: list[list[Operation]] = []
    keys: list[int] = []
    replacements: dict[Value, Value] = {}
    first_unit_of_bucket: dict[int, int] = {}
    bucket_of = {op: b for b, bucket in enumerate(buckets) for op in bucket}
    for index, op in enumerate(ops):
        b = bucket_of.get(op)
        if b is None:
            unit_of_op[op] = len(units)
            units.append([op])
            keys.append(index)
        elif b in first_unit_of_bucket:
            unit_of_op[op] = first_unit_of_bucket[b]
        else:
            fused_ops, replaced = emit_bucket(module, function, buckets[b], b, dims)
            replacements.update(replaced)
            unit_of_op[op] = first_unit_of_bucket[b] = len(units)
            units.append(fused_ops)
            keys.append(index)
    for op in (op for unit in units for op in unit):
        op.operands = [replacements.get(v, v) for v in op.operands]
    function.returns = [replacements.get(v, v) for v in function.returns]
    state_order = [(unit_of_op[ops[i]], unit_of_op[ops[before]]) for i, before in _state_order(ops)]
    function.ops = schedule(units, keys, state_order)


@register_pass
@dataclass(frozen=True)
class FuseCollectives(Pass):
    name: ClassVar[str] = "fuse-collectives"
    max_bytes: int = 32 << 20  # per device, summed over a bucket's operands

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max-bytes must be at least 0, got {self.max_bytes}")

    def run(self, module: Module) -> None:
        for function in module.functions.values():
            if function.is_local:
                rewrite_peepholes(module, function)
                fuse_buckets(module, function, self.max_bytes)
