"""The emitted train step (`meshc --train`): its collectives, counted in the
local program and in the HLO XLA compiles, differ between data- and
model-parallel layouts as they should; the `.pb` and `.jaxexport` train steps
train in processes that import only TensorFlow or JAX and numpy, taking the
same steps as meshir-run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from meshir.frontends.text import parse_module
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.tools import meshc
from meshir.tools.common import apply_overrides

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = EXAMPLES / "digits_mlp.mir"
TRAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd"
COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "collective_permute")
DATA_PARALLEL = ["--mesh", "all:8", "--layout", "batch:all"]
MODEL_PARALLEL = ["--mesh", "all:8", "--layout", "hidden:all"]
VARIABLES = {"w1": (64, 128), "b1": (128,), "w2": (128, 10), "b2": (10,)}


def local_train_step(flags: list[str]):
    module = parse_module(DIGITS.read_text(), str(DIGITS))
    apply_overrides(module, flags[1], flags[3])
    PassManager(parse_pipeline(TRAIN)).run(module)
    return module.functions["loss"]


def collectives(function) -> list:
    return [op for op in function.ops if op.name in COLLECTIVES]


def test_data_parallel_step_all_reduces_each_gradient_once_and_no_activation():
    step = local_train_step(DATA_PARALLEL)
    reduced = {op.operands[0].name: op.operands[0].type.shape for op in collectives(step)}
    assert {op.name for op in collectives(step)} == {"all_reduce"}
    assert all(op.attr("axes") == ("all",) for op in collectives(step))
    assert reduced == {f"grad_{name}": shape for name, shape in VARIABLES.items()} | {"loss_local": ()}


def test_model_parallel_step_communicates_activations_not_weight_gradients():
    step = local_train_step(MODEL_PARALLEL)
    operands = [op.operands[0] for op in collectives(step)]
    assert operands and all(v.type.has("batch") for v in operands)
    assert not any(v.name and v.name.startswith("grad_") for v in operands)
    assert [op.name for op in collectives(step)] == ["all_reduce"]  # the logits' partial sum over hidden


def hlo_collectives(tmp_path: Path, flags: list[str]) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """(kind, replica groups, operand shapes) of each collective in the compiled HLO."""
    out = tmp_path / "step.hlo"
    assert meshc.main([str(DIGITS), "--train", *flags, "-o", str(out)]) == 0
    found = []
    for line in out.read_text().splitlines():
        match = re.search(r"= (\(?[^=]*?\)?) (all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute)(?:-start)?\(", line)
        if match:
            shapes = [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", match.group(1))]
            groups = re.search(r"replica_groups=(\{[^ ]*\})", line)
            found.append((match.group(2), groups.group(1) if groups else "", shapes))
    return found


def test_emitted_hlo_of_the_data_parallel_step_reduces_gradients_over_all_devices(tmp_path):
    found = hlo_collectives(tmp_path, DATA_PARALLEL)
    assert {kind for kind, _, _ in found} == {"all-reduce"}
    assert {groups for _, groups, _ in found} == {"{{0,1,2,3,4,5,6,7}}"}
    # The standard pipeline fuses them (fuse-collectives; XLA may combine them too):
    # what they carry, element for element, is the gradients and the loss.
    carried = sum(int(np.prod(shape)) for _, _, shapes in found for shape in shapes)
    assert carried == sum(int(np.prod(shape)) for shape in VARIABLES.values()) + 1


def test_emitted_hlo_of_the_model_parallel_step_reduces_only_activations(tmp_path):
    found = hlo_collectives(tmp_path, MODEL_PARALLEL)
    assert [(kind, shapes) for kind, _, shapes in found] == [("all-reduce", [(64, 10)])]


JAX_TRAINER = textwrap.dedent("""
    import sys
    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("rows", "cols"))
    unflatten = jax.tree_util.tree_unflatten
    in_shardings = unflatten(exported.in_tree, exported.in_shardings_jax(mesh))[0]
    out_shardings = unflatten(exported.out_tree, exported.out_shardings_jax(mesh))
    step = jax.jit(exported.call, in_shardings=in_shardings, out_shardings=out_shardings)
    data = np.load(sys.argv[2])
    variables = {key[len("var_"):]: data[key] for key in data.files if key.startswith("var_")}
    losses = []
    for i in range(int(data["steps"])):
        outputs, variables = step({"x": data["x"][i], "y": data["y"][i]}, variables)
        losses.append(float(outputs["loss"]))
    assert not any(name.startswith("meshir") for name in sys.modules)
    np.save(sys.argv[3], np.array(losses))
""")

TF_TRAINER = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 8)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(open(sys.argv[1], "rb").read()), name="")
    data = np.load(sys.argv[2])
    losses = []
    with tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(device_count={"CPU": 8})) as session:
        session.run("init")
        for i in range(int(data["steps"])):
            loss, _ = session.run(["loss:0", "update"], {"x:0": data["x"][i], "y:0": data["y"][i]})
            losses.append(float(loss))
    assert not any(name.startswith("meshir") for name in sys.modules)
    np.save(sys.argv[3], np.array(losses))
""")

STEPS = 8


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)[: STEPS * 64].reshape(STEPS, 64, 64)
    y = digits.target.astype(np.int32)[: STEPS * 64].reshape(STEPS, 64)
    return {"x": x, "y": y}


def meshir_losses(batches: dict[str, np.ndarray]) -> list[float]:
    """The same steps through meshir's own XLA runner."""
    import argparse

    from meshir.tools.compile import prepare
    from meshir.tools.runners import XlaRunner

    module = parse_module(DIGITS.read_text(), str(DIGITS))
    args = argparse.Namespace(passes=TRAIN, emit_mode="spmd", entry="loss", devices=8)
    module, _ = prepare(module, args)
    runner = XlaRunner(module, "spmd")
    return [float(runner("loss", {"x": batches["x"][i], "y": batches["y"][i]})["loss"]) for i in range(STEPS)]


@pytest.mark.parametrize("suffix,trainer", [(".jaxexport", JAX_TRAINER), (".pb", TF_TRAINER)], ids=["jax", "tensorflow"])
def test_emitted_train_step_trains_without_meshir(tmp_path, batches, suffix, trainer):
    from meshir.interpreter import Interpreter

    artifact = tmp_path / f"step{suffix}"
    assert meshc.main([str(DIGITS), "--train", "--optimizer", "adam", "--lr", "0.001", "-o", str(artifact)]) == 0
    trained = parse_module(DIGITS.read_text(), str(DIGITS))
    PassManager(parse_pipeline(TRAIN)).run(trained)
    initial = {f"var_{name}": value for name, value in Interpreter(trained).state.items()}
    np.savez(tmp_path / "data.npz", steps=STEPS, **batches, **initial)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "NPROC": "16"}
    subprocess.run([sys.executable, "-c", trainer, str(artifact), str(tmp_path / "data.npz"), str(tmp_path / "losses.npy")],
                   env=env, check=True, cwd=tmp_path, timeout=300)
    losses = np.load(tmp_path / "losses.npy")
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, meshir_losses(batches), rtol=2e-4, atol=2e-5)


def test_train_flag_errors_exit_2_without_output(tmp_path, capsys):
    out = tmp_path / "step.hlo"
    assert meshc.main([str(DIGITS), "--train", "--optimizer", "rmsprop", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rmsprop" in err and "Traceback" not in err and not out.exists()
