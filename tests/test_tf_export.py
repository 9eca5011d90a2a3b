"""What meshc writes for TensorFlow, loaded where meshir is not: a fresh Python
process importing only TensorFlow and numpy runs the `.pb` (import_graph_def, a
Session with 8 CPU devices, `init`, then the outputs by name) and the SavedModel
(`tf.saved_model.load` on 8 logical CPU devices, `serving_default`), feeding
global inputs by argument name; both equal the reference. Plus the text form
and meshc's TensorFlow flags."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, random_inputs
from meshir.tools import meshc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL = str(EXAMPLES / "transformer_block.mir")
FLAGS = ["--mesh", "rows:2,cols:4", "--layout", "batch:rows,heads:cols,hidden:cols"]

# Runs in a fresh interpreter: TensorFlow and numpy only.
LOADER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf

    pb, savedmodel, inputs_path, outputs_path = sys.argv[1:]
    inputs = dict(np.load(inputs_path))
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 8)

    graph = tf.Graph()
    with graph.as_default():
        graph_def = tf.compat.v1.GraphDef.FromString(open(pb, "rb").read())
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(device_count={"CPU": 8})
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        session.run("init")
        from_pb = session.run("out:0", {f"{name}:0": value for name, value in inputs.items()})

    model = tf.saved_model.load(savedmodel)
    serve = model.signatures["serving_default"]
    from_savedmodel = serve(**{name: tf.constant(value) for name, value in inputs.items()})["out"].numpy()

    np.savez(outputs_path, pb=from_pb, savedmodel=from_savedmodel)
    print(json.dumps({
        "modules": sorted({m.split(".")[0] for m in sys.modules}),
        "devices": sorted({n.device for n in graph_def.node}),
        "signature": sorted(serve.structured_input_signature[1]),
        "logical_devices": len(tf.config.list_logical_devices("CPU")),
    }))
""")


def test_pb_and_savedmodel_run_in_a_process_with_only_tensorflow_and_numpy(tmp_path):
    """One fresh process (one TensorFlow start) loads both artifacts."""
    pb, savedmodel = tmp_path / "block.pb", tmp_path / "block.savedmodel"
    assert meshc.main([MODEL, "-o", str(pb), *FLAGS]) == 0
    assert meshc.main([MODEL, "-o", str(savedmodel), *FLAGS]) == 0
    inputs = random_inputs(parse_module(Path(MODEL).read_text()).function("block"), seed=4)
    np.savez(tmp_path / "inputs.npz", **inputs)
    child = subprocess.run(
        [sys.executable, "-c", LOADER, str(pb), str(savedmodel), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    with np.load(tmp_path / "outputs.npz") as outputs:
        from_pb, from_savedmodel = outputs["pb"], outputs["savedmodel"]
    expected = Interpreter(parse_module(Path(MODEL).read_text())).run("block", inputs)["out"]

    assert "meshir" not in report["modules"] and {"tensorflow", "numpy"} <= set(report["modules"])
    # The GraphDef, placed on 8 devices, in a v1 Session.
    assert {f"/device:CPU:{d}" for d in range(8)} <= set(report["devices"])
    np.testing.assert_allclose(from_pb, expected, rtol=1e-5, atol=1e-5)
    # The SavedModel's serving_default over the global interface, in TF2.
    assert report["signature"] == ["x"] and report["logical_devices"] == 8
    np.testing.assert_allclose(from_savedmodel, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(from_savedmodel, from_pb)


def test_text_graphdef_is_the_binary_one(tmp_path):
    import tensorflow as tf
    from google.protobuf import text_format

    model = tmp_path / "step.mir"
    model.write_text("mesh @m = <x=2>\nfunc @f(%a: f32[n=4]) -> f32[n=4] attributes {mesh = @m, layout = {n: x}} {\n"
                     "  %b = exp(%a)\n  return %b\n}\n")
    assert meshc.main([str(model), "-o", str(tmp_path / "f.pb")]) == 0
    assert meshc.main([str(model), "-o", str(tmp_path / "f.pbtxt")]) == 0
    binary = tf.compat.v1.GraphDef.FromString((tmp_path / "f.pb").read_bytes())
    text = text_format.Parse((tmp_path / "f.pbtxt").read_text(), tf.compat.v1.GraphDef())
    assert text == binary
    # The output takes the name "b"; the op computing it is scoped "b_1".
    assert {"b_1/dev0/Exp", "b_1/dev1/Exp", "a", "b", "init"} <= {n.name for n in binary.node}


@pytest.mark.parametrize("flags,fragment", [
    (["-o", "{out}.hlo", "--tensorboard", "{out}_tb"], "--tensorboard shows the TensorFlow graph"),
    (["-o", "{out}.pb", "--emit-mode", "gspmd"], "--emit-mode gspmd: XLA's partitioner has no TensorFlow counterpart"),
    (["-o", "{out}.savedmodel/", "--tf-collectives", "v3"], "invalid choice: 'v3'"),
])
def test_tensorflow_flag_errors_exit_2_without_output(tmp_path, capsys, flags, fragment):
    out = tmp_path / "model"
    argv = [str(EXAMPLES / "mlp.mir"), *[f.format(out=out) for f in flags]]
    try:
        status = meshc.main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_that_is_not_a_savedmodel_is_left_alone(tmp_path, capsys):
    (tmp_path / "keep.savedmodel").mkdir()
    (tmp_path / "keep.savedmodel" / "notes.txt").write_text("mine")
    assert meshc.main([str(EXAMPLES / "mlp.mir"), "-o", str(tmp_path / "keep.savedmodel")]) == 2
    assert "exists and is not a SavedModel" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.savedmodel"]
    assert (tmp_path / "keep.savedmodel" / "notes.txt").read_text() == "mine"
