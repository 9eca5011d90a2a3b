"""The TF backend's graphs: every op has a rule; one copy of each op per device,
placed; a plain graph on one device; the global interface (names, shapes, init,
update); name scopes for TensorBoard; dtype gaps caught at emission; and a
mismatched TF collective that ends with DeadlineExceeded within its timeout."""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pytest

from meshir.diagnostics import MeshirError, RuntimeFailure
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, random_inputs
from meshir.ir import Module
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.registry import all_ops, lookup
from meshir.tools import meshc
from meshir.tools.common import apply_overrides

from meshir.backends.tf import compile_program, write_tensorboard  # isort: skip  (imports TF lazily)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def partitioned(text: str, mesh: str | None = None, layout: str | None = None) -> Module:
    module = parse_module(text)
    apply_overrides(module, mesh, layout)
    PassManager(parse_pipeline("layout,spmd")).run(module)
    return module


def mlp(mesh: str, layout: str) -> Module:
    return partitioned((EXAMPLES / "mlp.mir").read_text(), mesh, layout)


def test_every_op_has_a_tf_rule():
    from meshir.backends.tf.rules import install, missing_rules

    install()
    assert missing_rules() == []
    assert all("tf" in op.lowerings for op in all_ops())


def test_a_split_layer_runs_on_all_eight_devices():
    program = compile_program(mlp("rows:2,cols:4", "batch:rows,hidden:cols"), "loss")
    nodes = program.graph_def().node
    # %h = einsum(%x, %w1): one copy per device, each under its device's scope and placed there.
    einsums = {n.device for n in nodes if n.name.startswith("h/dev") and n.op == "Einsum"}
    assert einsums == {f"/device:CPU:{d}" for d in range(8)}
    for node in nodes:
        match = re.match(r"^[^/]+/dev(\d+)/", node.name)
        if match:
            assert node.device == f"/device:CPU:{match.group(1)}", node.name


def test_gpu_target_places_on_gpus():
    program = compile_program(mlp("rows:2,cols:4", "batch:rows,hidden:cols"), "loss", device_kind="GPU")
    assert {n.device for n in program.graph_def().node if n.name.startswith("h/dev")} == {f"/device:GPU:{d}" for d in range(8)}


def test_one_device_is_a_plain_unplaced_graph():
    one_device = compile_program(mlp("x:1", "batch:x"), "loss")
    no_mesh = compile_program(parse_module((EXAMPLES / "mlp.mir").read_text()), "loss")  # global, unpartitioned
    for program in (one_device, no_mesh):
        nodes = program.graph_def().node
        assert {n.device for n in nodes} == {""}
        assert not any("/dev" in n.name for n in nodes)
        assert program.devices == 1


def test_global_interface_names_and_shapes():
    module = mlp("rows:2,cols:4", "batch:rows,hidden:cols")
    program = compile_program(module, "loss")
    graph = program.graph
    x, y, loss = (graph.get_tensor_by_name(n) for n in ("x:0", "y:0", "loss:0"))
    assert (x.op.type, x.shape.as_list(), x.dtype.name) == ("Placeholder", [64, 784], "float32")
    assert (y.op.type, y.shape.as_list(), y.dtype.name) == ("Placeholder", [64], "int32")
    assert (loss.shape.as_list(), loss.dtype.name) == ([], "float32")
    assert graph.get_operation_by_name("init").type == "NoOp"
    assert program.update is None  # a loss reads variables but writes none
    assert [v.name for v in program.variables] == ["w1", "b1", "w2"]
    # w1 is stored split over cols (hidden), w2 likewise: 8 slices each.
    assert [v.variables[3].shape.as_list() for v in program.variables] == [[784, 128], [128], [128, 10]]


STEP = """mesh @m = <rows=2, cols=4>
var @w : f32[a=8, b=16] = uniform(seed=3)
func @step(%x: f32[a=8, b=16], %init: f32[]) -> (f32[a=8, b=16], f32[a=8, b=16], f32[a=8, b=16])
    attributes {mesh = @m, layout = {a: rows, b: cols}} {
  %old = read @w
  assign_add @w, %x
  %new = read @w
  return %old, %new, %x
}
"""


def test_writes_run_with_every_output_and_through_update():
    with pytest.raises(MeshirError, match="names its ops 'init' and 'update'; rename argument %init"):
        compile_program(partitioned(STEP), "step")
    module = partitioned(STEP.replace("%init: f32[]", "%scale: f32[]"))
    program = compile_program(module, "step")
    assert program.update == "update"
    assert [p.tensor for p in program.outputs] == ["old:0", "new:0", "x_out:0"]  # %x is also an argument
    x = np.arange(128, dtype=np.float32).reshape(8, 16)
    reference = Interpreter(module)
    initial = reference.state["w"].copy()
    outputs, state = program.run({"x": x, "scale": np.float32(2)})
    np.testing.assert_array_equal(outputs["old"], initial)  # read before the write
    np.testing.assert_array_equal(outputs["new"], initial + x)  # and after it
    np.testing.assert_array_equal(outputs["x"], x)
    np.testing.assert_array_equal(state["w"], initial + x)
    _, given = program.run({"x": x, "scale": np.float32(2)}, {"w": np.ones((8, 16), np.float32)})
    np.testing.assert_array_equal(given["w"], 1 + x)


def test_tensorboard_graph_has_a_scope_per_op_and_per_device(tmp_path):
    import tensorflow as tf

    program = compile_program(mlp("rows:2,cols:4", "batch:rows,hidden:cols"), "loss")
    write_tensorboard(program, str(tmp_path / "tb"))
    (events,) = (tmp_path / "tb").iterdir()
    graphs = [e.graph_def for e in tf.compat.v1.train.summary_iterator(str(events)) if e.graph_def]
    graph = tf.compat.v1.GraphDef.FromString(graphs[0])
    scopes = {n.name.split("/")[0] for n in graph.node}
    assert {"h", "hb", "a", "logits", "onehot", "ce", "variables", "init", "x", "y", "loss"} <= scopes
    devices = {n.name.split("/")[1] for n in graph.node if n.name.startswith("logits/")}
    assert devices == {f"dev{d}" for d in range(8)}


# rename cannot keep its dimension split: partitioning gathers the bf16 value first.
BF16_GATHER = """mesh @m = <x=2>
func @f(%v: bf16[a=8]) -> bf16[c=8] attributes {mesh = @m, layout = {a: x}} {
  %r = rename(%v) {from = a, to = c}
  return %r
}
"""


def test_a_dtype_tf_collectives_lack_is_a_diagnostic_naming_op_and_dtype(tmp_path, capsys):
    model = tmp_path / "model.mir"
    model.write_text(BF16_GATHER)
    out = tmp_path / "out.pb"
    assert meshc.main([str(model), "-o", str(out), "--tf-collectives", "v2"]) == 2
    err = capsys.readouterr().err
    assert "all_gather of bf16: TensorFlow's CollectiveGatherV2 (--tf-collectives v2) has no bfloat16 kernel" in err
    assert "Traceback" not in err and not out.exists()
    # The default collectives move any dtype.
    assert meshc.main([str(model), "-o", str(out)]) == 0


def test_a_node_without_a_kernel_for_its_dtype_is_a_diagnostic_at_emission(monkeypatch):
    """TF's CPU Rint has no bfloat16 kernel; a rule that emitted it would crash only
    when the session placed it. The backend asks TF's kernel registry first."""
    import tensorflow as tf

    monkeypatch.setitem(lookup("round").lowerings, "tf", lambda op, x: tf.math.rint(x))
    module = parse_module("func @f(%v: bf16[a=4]) -> bf16[a=4] {\n  %r = round(%v)\n  return %r\n}\n")
    with pytest.raises(MeshirError, match=r"round \(bf16\): TensorFlow \S+ has no CPU kernel for Rint with T=bfloat16"):
        compile_program(module, "f")


def test_a_mismatched_collective_times_out_with_a_clear_error():
    """Two devices join one TF all-reduce with different instance keys: neither can
    finish, and the run ends when the collectives' timeout expires."""
    import tensorflow as tf

    module = partitioned("""mesh @m = <x=2>
func @f(%a: f32[k=8, n=4]) -> f32[n=4] attributes {mesh = @m, layout = {k: x}} {
  %s = reduce_sum(%a) {dims = [k]}
  return %s
}
""")
    program = compile_program(module, "f", collectives="v2", timeout=2.0)
    graph_def = program.graph_def()
    keys = [n for n in graph_def.node if n.name.endswith("CollectiveReduceV2/instance_key")]
    assert [n.device for n in keys] == ["/device:CPU:0", "/device:CPU:1"]
    keys[1].attr["value"].tensor.int_val[0] += 1000
    mismatched = tf.Graph()
    with mismatched.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    start = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"func @f failed in TensorFlow: DeadlineExceededError at node \S+CollectiveReduceV2: "
                                             r"Collective has timed out during execution"):
        dataclasses.replace(program, graph=mismatched).run({"a": np.ones((8, 4), np.float32)})
    assert time.monotonic() - start < 30  # a 2 s timeout; generous for a loaded 2-core machine
    outputs, _ = program.run({"a": np.ones((8, 4), np.float32)})  # matched keys, same process: fine
    np.testing.assert_array_equal(outputs["s"], np.full(4, 8, np.float32))


def test_examples_match_the_reference_under_both_collective_implementations():
    text = (EXAMPLES / "transformer_block.mir").read_text()
    inputs = random_inputs(parse_module(text).function("block"), seed=1)
    expected = Interpreter(parse_module(text)).run("block", inputs)["out"]
    for collectives in ("explicit", "v2"):
        module = partitioned(text, "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols")
        outputs, _ = compile_program(module, "block", collectives=collectives).run(inputs)
        np.testing.assert_allclose(outputs["out"], expected, rtol=1e-5, atol=1e-5)


def test_large_sums_reduce_by_chunks_on_every_device(monkeypatch):
    """Above CHUNKED_BYTES an all_reduce is a reduce-scatter of chunks then a gather:
    each device sums one chunk. Forced for every size here, on the reductions of the
    matrix (sums, max, prod; chunks that do not divide evenly included)."""
    from meshir.backends.tf import collectives

    from .spmd_matrix import MESHES
    from .tf_matrix import EXPLICIT, spread_cases
    from .xla_matrix import check_batch, failure_report

    monkeypatch.setattr(collectives, "CHUNKED_BYTES", 0)
    ops = {"einsum", "matmul", "reduce_sum", "reduce_max", "reduce_prod", "logsumexp", "layer_norm"}
    batch = [c for c in spread_cases(MESHES[-1], 2) if c.program.op in ops]
    assert len(batch) > 20
    failures = check_batch(batch, [EXPLICIT])
    assert not failures, failure_report(failures, len(batch))

    program = compile_program(partitioned(CONTRACTION), "f")
    adds = {n.device for n in program.graph_def().node if n.op == "AddN"}  # only the all_reduce adds
    assert adds == {f"/device:CPU:{d}" for d in range(8)}
    outputs, _ = program.run({"a": np.ones((3, 16), np.float32), "b": np.ones((16, 5), np.float32)})
    np.testing.assert_array_equal(outputs["y"], np.full((3, 5), 16, np.float32))  # 15 elements: uneven chunks


CONTRACTION = """mesh @m = <rows=2, cols=4>
func @f(%a: f32[m=3, k=16], %b: f32[k=16, n=5]) -> f32[m=3, n=5] attributes {mesh = @m, layout = {k: (cols, rows)}} {
  %y = einsum(%a, %b) {output = [m, n]}
  return %y
}
"""
