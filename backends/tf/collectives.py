"""The collectives of local programs, across the devices of one TF graph.

A collective rule sees every device at once: `rule(op, xs, comm)` takes the
operand's per-device tensors (index = device number) and returns the result's,
creating each device's ops on that device (`comm.on(d)`). `axis_index` and
`all_slice` need no communication: each device's copy is a constant or a
static slice, since the device is known while its copy is built.
`dynamic_slice` runs per device like any other op.

Two implementations, `comm.mode`:

- "explicit" (the default): data moves by reading another device's tensor.
  TensorFlow inserts the transfer (a Send/Recv pair within the process), and
  the reduction is an `add_n` (or maximum/minimum/multiply fold) in group order.
  Measured on this 2-core machine with 8 logical CPU devices in one Session
  (all_reduce of f32, per call): 32 B: TF's CollectiveReduceV2 3.0 ms, add_n on
  one device then copies 0.48 ms; 64 KiB: 5.0 ms vs 0.79 ms; 1 MiB: 12.8 ms vs
  1.25 ms, and a reduce-scatter-then-gather of chunks 1.13 ms; 16 MiB: 155 ms vs
  17.7 ms, chunks 7.9 ms. So sums reduce on the group's first device below
  `CHUNKED_BYTES` and by chunks above it (each device sums one chunk, then every
  device concatenates them); either way every replica is bit-identical. Nothing
  waits on a rendezvous, so nothing can hang, in a Session or in a TF2 function.
- "v2": TensorFlow's CollectiveReduceV2 / CollectiveGatherV2 /
  CollectiveAllToAllV2, for runtimes where they are the fast path (NCCL on
  GPUs, several hosts). Every group gets its own group key and every collective
  its own instance key; each device's collectives are chained by control
  dependencies in program order (the ordering tokens a TF2 function needs, which
  a GraphDef carries as plain control edges); every collective has a timeout, so a
  mismatched one fails with DeadlineExceeded instead of hanging. TF has no CPU
  reduce-scatter (it is an all-reduce and a slice here) and no collective
  permute (it is a copy, as in "explicit"). A TF collective takes only the dtypes
  its op definition lists (no bfloat16 gather): others are a diagnostic at
  emission. TF orders a group's members by device number, so blocks are
  reordered where meshir's group order (first axis major) differs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from meshir.diagnostics import MeshirError
from meshir.mesh import Mesh
from meshir.registry import OpView

from .kernels import allowed_dtypes
from .rules_common import ConstantPool, Rule, const, move_axis, slice_axis, tf, tf_dtype

COLLECTIVE_MODES = ("explicit", "v2")
CHUNKED_BYTES = 1 << 20  # explicit sums at least this large reduce by chunks (see the module doc)
DEFAULT_TIMEOUT_SECONDS = 300.0


class Communicator:
    """The devices of one program and how its collectives reach them."""

    def __init__(self, mesh: Mesh, devices: list[str] | None, pool: ConstantPool, mode: str = "explicit",
                 timeout: float = DEFAULT_TIMEOUT_SECONDS):
        if mode not in COLLECTIVE_MODES:
            raise MeshirError(f"unknown tf collective implementation '{mode}' (choose {', '.join(COLLECTIVE_MODES)})")
        self.mesh, self.devices, self.pool, self.mode, self.timeout = mesh, devices, pool, mode, timeout
        self._group_keys: dict[tuple[int, ...], int] = {}
        self._instances = 0
        self._last: dict[int, Any] = {}  # device -> its latest TF collective, for ordering
        # Every TF collective, for the outputs to depend on: a fetch that needs only one
        # device's copy would otherwise prune the peers it waits for.
        self.launched: list[Any] = []
        self._scopes: dict[int, str] = {}

    def begin_op(self) -> None:
        """A new meshir op: its per-device name scopes start afresh."""
        self._scopes = {}

    @contextlib.contextmanager
    def on(self, device: int) -> Iterator[None]:
        """Ops created inside are placed on `device`, under its name scope `dev<i>`
        (re-entered, not renamed, when one op visits a device twice), and take their
        constants from that device. On one unplaced device there is neither."""
        if self.devices is None:
            yield
            return
        graph = self.pool.graph
        with tf.device(self.devices[device]), graph.name_scope(self._scopes.get(device, f"dev{device}")) as scope, \
                self.pool.on(device):
            self._scopes[device] = scope
            yield

    # --- TF collectives (mode "v2") ---

    def _keys(self, group: list[int]) -> tuple[int, int]:
        group_key = self._group_keys.setdefault(tuple(sorted(group)), len(self._group_keys) + 1)
        self._instances += 1
        return group_key, self._instances

    def tf_collective(self, make: Callable[..., tf.Tensor], group: list[int], inputs: dict[int, tf.Tensor],
                      **attrs: Any) -> dict[int, tf.Tensor]:
        """One TF collective over `group`: `make(input=..., group_size=..., ...)` on each
        member, after that member's previous collective."""
        group_key, instance_key = self._keys(group)
        out = {}
        for device in group:
            with self.on(device), tf.control_dependencies([self._last[device]] if device in self._last else []):
                out[device] = make(input=inputs[device], group_size=len(group), group_key=group_key,
                                   instance_key=instance_key, ordering_token=[], timeout_seconds=self.timeout, **attrs)
            self._last[device] = out[device].op
            self.launched.append(out[device].op)
        return out


def _axes(op: OpView) -> tuple[str, ...]:
    return tuple(op.attr("axes"))


def _reducible(op: OpView, x: tf.Tensor) -> tf.Tensor:
    """The dtype a collective reduces in, as the simulator: float32 for 16-bit floats,
    int32 for bool (max is any, min is all)."""
    ttype = op.operand_types[0]
    if ttype.dtype.is_float and ttype.dtype.itemsize < 4:
        return tf.cast(x, tf.float32)
    if ttype.dtype.is_bool:
        return tf.cast(x, tf.int32)
    return x


_FOLDS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "sum": tf.add, "max": tf.maximum, "min": tf.minimum, "prod": tf.multiply,
}
_MERGE_OPS = {"sum": "Add", "max": "Max", "min": "Min", "prod": "Mul"}


def _combine(reduce: str, blocks: list[tf.Tensor]) -> tf.Tensor:
    """The blocks reduced in group order."""
    if reduce == "sum" and len(blocks) > 1:
        return tf.add_n(blocks)
    total = blocks[0]
    for block in blocks[1:]:
        total = _FOLDS[reduce](total, block)
    return total


def _explicit_reduce(op: OpView, group: list[int], xs: list[tf.Tensor], comm: Communicator) -> dict[int, tf.Tensor]:
    """The group's reduction on each member (see the module doc for the two shapes)."""
    reduce = op.attr("reduce")
    local = op.operand_types[0]
    if local.nbytes < CHUNKED_BYTES or local.num_elements < len(group):
        with comm.on(group[0]):
            total = _combine(reduce, [xs[d] for d in group])
        out = {}
        for device in group:
            with comm.on(device):
                out[device] = tf.identity(total)
        return out
    sizes = [local.num_elements // len(group) + (i < local.num_elements % len(group)) for i in range(len(group))]
    pieces = {}
    for device in group:
        with comm.on(device):
            pieces[device] = tf.split(tf.reshape(xs[device], const([-1])), const(sizes), axis=const(0))
    chunks = []
    for position, device in enumerate(group):
        with comm.on(device):
            chunks.append(_combine(reduce, [pieces[d][position] for d in group]))
    out = {}
    for device in group:
        with comm.on(device):
            out[device] = tf.reshape(tf.concat(chunks, const(0)), const(local.shape))
    return out


def _v2_reduce(op: OpView, group: list[int], xs: list[tf.Tensor], comm: Communicator) -> dict[int, tf.Tensor]:
    inputs = {d: xs[d] for d in group}
    # 8-bit and unsigned integers reduce in int64 (numpy sums them in int64 too, then wraps).
    if inputs[group[0]].dtype not in allowed_dtypes("CollectiveReduceV2"):
        inputs = {d: tf.cast(x, tf.int64) for d, x in inputs.items()}
    return comm.tf_collective(tf.raw_ops.CollectiveReduceV2, group, inputs,
                              merge_op=_MERGE_OPS[op.attr("reduce")], final_op="Id")


def _reduced(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    """Each device's group reduction, in the operand's dtype."""
    axes = _axes(op)
    if not axes:
        return xs
    wide = []
    for device, x in enumerate(xs):
        with comm.on(device):
            wide.append(_reducible(op, x))
    reduce_group = _v2_reduce if comm.mode == "v2" else _explicit_reduce
    out: list[Any] = [None] * len(xs)
    for group in comm.mesh.groups(axes):
        for device, total in reduce_group(op, group, wide, comm).items():
            with comm.on(device):
                out[device] = tf.cast(total, tf_dtype(op.operand_types[0].dtype))
    return out


def _own_block(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    """Block k of `dim` on the device at position k of its group over `axes`."""
    axes, result = _axes(op), op.result_types[0]
    if not axes:
        return xs
    axis, size = op.operand_types[0].axis_of(op.attr("dim")), result.size_of(op.attr("dim"))
    out = []
    for device, x in enumerate(xs):
        with comm.on(device):
            out.append(slice_axis(x, axis, comm.mesh.index_in_group(device, axes) * size, size))
    return out


def _reduce_scatter(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    axes = _axes(op)
    if not axes or comm.mode == "v2":  # no CPU CollectiveReduceScatterV2: reduce, keep the own block
        return _own_block(op, _reduced(op, xs, comm), comm)
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    size = op.result_types[0].size_of(op.attr("dim"))
    out: list[Any] = [None] * len(xs)
    for group in comm.mesh.groups(axes):
        for position, device in enumerate(group):
            blocks = []
            for source in group:
                with comm.on(source):
                    blocks.append(_reducible(op, slice_axis(xs[source], axis, position * size, size)))
            with comm.on(device):
                out[device] = tf.cast(_combine(op.attr("reduce"), blocks), tf_dtype(op.result_types[0].dtype))
    return out


def _checked_dtype(op: OpView, tf_op: str, x: tf.Tensor) -> None:
    if x.dtype not in allowed_dtypes(tf_op):
        names = ", ".join(sorted(t.name for t in allowed_dtypes(tf_op)))
        raise MeshirError(
            f"{op.name} of {op.operand_types[0].dtype}: TensorFlow's {tf_op} (--tf-collectives v2) has no "
            f"{x.dtype.name} kernel, only {names}; the explicit collectives (the default) move every dtype"
        )


def _rank_order(group: list[int]) -> list[int]:
    """Group positions in the order TF ranks the members: by device number."""
    return sorted(range(len(group)), key=lambda position: group[position])


def _all_gather(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    axes = _axes(op)
    if not axes:
        return xs
    axis = op.operand_types[0].axis_of(op.attr("dim"))
    out: list[Any] = [None] * len(xs)
    for group in comm.mesh.groups(axes):
        if comm.mode == "v2":
            _checked_dtype(op, "CollectiveGatherV2", xs[group[0]])
            fronts = {}
            for device in group:
                with comm.on(device):
                    fronts[device] = move_axis(xs[device], axis, 0)
            gathered = comm.tf_collective(tf.raw_ops.CollectiveGatherV2, group, fronts)
            order = _rank_order(group)
            whole = [len(group) * fronts[group[0]].shape[0], *fronts[group[0]].shape[1:]]
            for device in group:
                with comm.on(device):
                    # The gathered length is a run-time number to TF (group_size is a tensor).
                    gathered_whole = tf.reshape(gathered[device], const(whole))
                    blocks = tf.split(gathered_whole, len(group), axis=const(0))  # in rank order
                    by_position = [blocks[order.index(p)] for p in range(len(group))]
                    out[device] = move_axis(tf.concat(by_position, const(0)), 0, axis)
        else:
            for device in group:
                with comm.on(device):
                    out[device] = tf.concat([xs[d] for d in group], const(axis))
    return out


def _all_to_all(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    axes = _axes(op)
    if not axes:
        return xs
    ttype = op.operand_types[0]
    split, concat = ttype.axis_of(op.attr("split_dim")), ttype.axis_of(op.attr("concat_dim"))
    out: list[Any] = [None] * len(xs)
    for group in comm.mesh.groups(axes):
        count = len(group)
        chunks = {}
        for device in group:
            with comm.on(device):
                chunks[device] = tf.split(xs[device], count, axis=const(split))  # chunk j goes to position j
        if comm.mode == "v2":
            received = _v2_all_to_all(op, group, chunks, split, comm)
        else:
            received = {device: [chunks[source][position] for source in group] for position, device in enumerate(group)}
        for device in group:
            with comm.on(device):
                out[device] = tf.concat(received[device], const(concat))
    return out


def _v2_all_to_all(op: OpView, group: list[int], chunks: dict[int, list[tf.Tensor]], split: int,
                   comm: Communicator) -> dict[int, list[tf.Tensor]]:
    """CollectiveAllToAllV2 cuts its input's first axis into one piece per rank and
    joins what it receives in rank order: the chunks travel as a stack."""
    _checked_dtype(op, "CollectiveAllToAllV2", chunks[group[0]][0])
    order = _rank_order(group)
    stacked = {}
    for device in group:
        with comm.on(device):
            stacked[device] = tf.stack([chunks[device][p] for p in order])
    exchanged = comm.tf_collective(tf.raw_ops.CollectiveAllToAllV2, group, stacked)
    received = {}
    for device in group:
        with comm.on(device):
            by_rank = tf.unstack(tf.reshape(exchanged[device], const(stacked[device].shape)))
            received[device] = [by_rank[order.index(p)] for p in range(len(group))]
    return received


def _collective_permute(op: OpView, xs: list[tf.Tensor], comm: Communicator) -> list[tf.Tensor]:
    """The device at coordinate c gets a copy of the operand of c - shift (modulo the
    axis with wrap), or zeros: a point-to-point copy in both modes."""
    mesh, axis, shift = comm.mesh, op.attr("axis"), op.attr("shift")
    size = mesh.axis_size(axis)
    out = []
    for device, x in enumerate(xs):
        coords = mesh.coords(device)
        source = coords[axis] - shift
        if op.attr("wrap"):
            source %= size
        with comm.on(device):
            if 0 <= source < size:
                out.append(tf.identity(xs[mesh.device({**coords, axis: source})]))
            else:
                out.append(tf.fill(const(x.shape), const(0, x.dtype)))
    return out


def _axis_index(op: OpView, comm: Communicator) -> list[tf.Tensor]:
    out = []
    for device in comm.mesh.devices():
        with comm.on(device):
            out.append(tf.identity(const(comm.mesh.coords(device)[op.attr("axis")], tf.int32)))
    return out


def _dynamic_slice(op: OpView, x: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Per device: the start clamped so that the slice fits, in int64 so that large
    unsigned offsets stay positive."""
    ttype, size = op.operand_types[0], op.attr("size")
    axis = ttype.axis_of(op.attr("dim"))
    start = tf.clip_by_value(tf.cast(offset, tf.int64), const(0, tf.int64), const(ttype.shape[axis] - size, tf.int64))
    return slice_axis(x, axis, start, size)


# Device-aware ops (opdef.device_aware) take (op, per-device tensors, comm) and
# return per-device tensors; dynamic_slice is an ordinary per-device rule.
RULES: dict[str, Rule] = {
    "all_reduce": _reduced,
    "all_gather": _all_gather,
    "reduce_scatter": _reduce_scatter,
    "all_to_all": _all_to_all,
    "collective_permute": _collective_permute,
    "all_slice": _own_block,
    "axis_index": _axis_index,
    "dynamic_slice": _dynamic_slice,
}
