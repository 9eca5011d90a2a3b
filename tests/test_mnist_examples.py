"""The MNIST examples train on mnist_like.npz (examples/mnist_like.py: scikit-learn's
digits in mnist.npz's format) on 8 simulated devices: the MLP data-parallel,
model-parallel and both; the CNN split spatially (image rows over a mesh axis),
with the same loss curve as on one device. Its partitioned train step exchanges
halos and never gathers a split dimension, and matches the global reference in
the simulator; the pooling and reshape rules it relies on are checked there too."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, shard
from meshir.ir import Function, Module
from meshir.passes.base import COLLECTIVE_BYTES, collective_axes
from meshir.passes.layout import without_trivial_axes
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools.train import resize_dimension

from .spmd_check import check_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mnist_mlp.mir")
CNN = str(EXAMPLES / "mnist_cnn.mir")
TRAIN_STEP = "autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd"
CHANCE = 0.1



def test_mnist_like_has_mnist_npz_keys_and_formats(mnist_like):
    with np.load(mnist_like) as data:
        assert sorted(data.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert data["x_train"].dtype == data["y_train"].dtype == np.uint8
        assert data["x_train"].shape[1:] == data["x_test"].shape[1:] == (28, 28)
        assert data["x_train"].max() == 255 and set(np.unique(data["y_test"])) == set(range(10))


def train(model: str, data: str, capsys, monkeypatch, flags: list[str], steps: int, evaluate: bool = True) -> tuple[list[float], dict]:
    """`meshir-run MODEL --train` on 8 devices: the loss of every step, recorded
    around the real training loop, and the final metrics line."""
    argv = [model, "--train", "--data", data, "--backend", "xla", "--devices", "8", "--steps", str(steps), "--lr", "0.001", *flags]
    losses = recorded_training(argv, evaluate).losses
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return losses, metrics


@pytest.mark.parametrize("flags", [["--mesh", "all:8", "--layout", "batch:all"], ["--mesh", "all:8", "--layout", "hidden:all"],
                                   ["--mesh", "rows:2,cols:4", "--layout", "batch:rows,hidden:cols"]],
                         ids=["data-parallel", "model-parallel", "both"])
def test_mlp_learns_on_8_devices(mnist_like, capsys, monkeypatch, flags):
    losses, metrics = train(MLP, mnist_like, capsys, monkeypatch, flags, steps=30)
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] / 3
    assert metrics["accuracy"] > 5 * CHANCE


def test_cnn_split_spatially_learns_with_the_one_device_loss_curve(mnist_like, capsys, monkeypatch):
    """The module's own layout: batch over rows, height over cols of a 2x4 mesh."""
    split, metrics = train(CNN, mnist_like, capsys, monkeypatch, [], steps=30)
    one, _ = train(CNN, mnist_like, capsys, monkeypatch, ["--mesh", "x:1", "--layout", "batch:x"], steps=10, evaluate=False)
    assert np.mean(split[-5:]) < split[0] / 2 and metrics["accuracy"] > 5 * CHANCE
    np.testing.assert_allclose(split[:10], one, rtol=2e-4, atol=2e-5)


# --- the partitioned CNN -------------------------------------------------------------------


def partitioned(module: Module, pipeline: str) -> Module:
    """A partitioned copy of `module`; `module` itself is left global."""
    copy = parse_module(print_module(module))
    PassManager(parse_pipeline(pipeline)).run(copy)
    return copy


def collectives(function: Function) -> Counter[tuple[str, str]]:
    """(collective, the mesh axes it talks over) -> how many the function holds."""
    found = Counter()
    for op in function.ops:
        if op.name in COLLECTIVE_BYTES:
            found[(op.name, ",".join(collective_axes(op)))] += 1
    return found


def test_cnn_train_step_exchanges_halos_and_gathers_nothing():
    """The default layout splits height over cols. The train step's convolutions and
    their gradients send boundary rows to neighbours along cols (collective_permute,
    on no other axis); no value (activation, weight or gradient) is all-gathered or
    all-to-all'd along any dimension; the only all_slice keeps each device's rows
    of the padded input images, whose own dimensions no layout splits."""
    local = partitioned(parse_module(Path(CNN).read_text(), CNN), TRAIN_STEP).function("loss")
    found = collectives(local)
    # Forward: each of the two 3x3 convolutions, a row from each side. Backward: the
    # second one's input gradient and both kernel gradients, the same. The pools'
    # gradients take their window phases in place and send nothing.
    assert found[("collective_permute", "cols")] == 2 * 2 + 3 * 2
    assert not any(kind in ("all_gather", "all_to_all") or (kind == "collective_permute" and axes != "cols") for kind, axes in found)
    assert [op.attributes["dim"] for op in local.ops if op.name == "all_slice"] == ["image_height"]


def test_cnn_forward_pools_without_communication():
    """Each max_pool reads the relu output of its own rows: no collective in between,
    and its result stays split over cols (a quarter of 16, then of 8, rows)."""
    local = partitioned(parse_module(Path(CNN).read_text(), CNN), "layout,spmd").function("loss")
    pools = [op for op in local.ops if op.name == "max_pool"]
    assert [op.results[0].type.size_of("height") for op in pools] == [4, 2]
    assert all(op.operands[0].owner.name == "relu" for op in pools)
    assert ("all_gather", "cols") not in collectives(local)


def test_cnn_train_step_matches_the_global_reference_in_the_simulator():
    """One SGD step on 8 examples: the partitioned step, simulated on every device,
    gives the reference's loss and moves every variable by the reference's update."""
    step = parse_module(Path(CNN).read_text(), CNN)
    resize_dimension(step, "batch", 8)
    PassManager(parse_pipeline("autodiff{func=loss},optimizer{kind=sgd,lr=1.0}")).run(step)
    local_module = partitioned(step, "layout,spmd")
    local = local_module.function("loss")
    mesh, rules = local_module.mesh_of(local), local_module.layout_of(local)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.integers(0, 256, (8, 28, 28)).astype(np.float32), "y": rng.integers(0, 10, 8).astype(np.int32)}
    reference, simulator = Interpreter(step), Interpreter(local_module)
    before = dict(reference.state)
    expected = reference.run("loss", inputs)["loss"]
    sharded = {a.name: shard(inputs[a.name], without_trivial_axes(rules.layout_of(a.type), mesh), mesh) for a in step.function("loss").args}
    got = simulator.run_local("loss", sharded)["loss"]
    assert all(np.allclose(device, expected, rtol=1e-5) for device in got)
    for name, start in before.items():
        np.testing.assert_allclose(simulator.state[name] - start, reference.state[name] - start, rtol=1e-3, atol=1e-6, err_msg=name)


# --- the rules that keep pooling and strided-window reshapes local ---------------------------


def pool_text(op: str, out: str, attrs: str, layout: str) -> str:
    return f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[n=2, h=32, w=8, c=3]) -> f32[n=2, h={out}, c=3] attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %y = {op}(%x) {{spatial = [h, w], {attrs}}}
  return %y
}}
"""


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("out,attrs,layout", [
    ("16, w=4", "window = [2, 2]", "h:cols"),
    ("16, w=4", "window = [2, 2]", "h:rows,w:cols"),
    ("8, w=4", "window = [4, 2], padding = same", "h:(rows,cols)"),
    ("8, w=8", "window = [1, 3], strides = [4, 1], padding = same", "h:cols,n:rows"),  # narrower than the stride; w padded
])
def test_pools_with_windows_inside_blocks_need_no_communication(op, out, attrs, layout):
    local = check_text(pool_text(op, out, attrs, layout), None, None)
    assert not collectives(local)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_pools_straddling_blocks_gather_and_still_match(op):
    local = check_text(pool_text(op, "10, w=8", "window = [4, 1], strides = [3, 1]", "h:rows"), None, None)
    assert ("all_gather", "rows") in collectives(local)


@pytest.mark.parametrize("layout", ["h:cols", "h:(rows,cols)", "h:cols,n:rows"])
def test_phase_reshapes_of_a_split_dimension_stay_local(layout):
    """Cutting h into (h / 2, phase) and merging it back, as strided window gradients do."""
    text = f"""mesh @m = <rows=2, cols=4>
func @f(%x: f32[n=2, h=16, c=3]) -> (f32[n=2, h=8, phase=2, c=3], f32[n=2, h=16, c=3]) attributes {{mesh = @m, layout = {{{layout}}}}} {{
  %cut = reshape(%x) {{shape = [n=2, h=8, phase=2, c=3]}}
  %merged = reshape(%cut) {{shape = [n=2, h=16, c=3]}}
  return %cut, %merged
}}
"""
    local = check_text(text, None, None)
    assert not collectives(local)
