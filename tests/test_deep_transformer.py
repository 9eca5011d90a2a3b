"""examples/deep_transformer.py: the text it prints parses and prints back the same,
every layer has its own variables, and a few train steps give the same losses on
one device as on the 2x4 mesh (as tests/test_transformer_lm.py does for the
hand-written 2-layer model)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training
from meshir.frontends.text import parse_module
from meshir.printer import print_module

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "deep_transformer.py"
LAYERS = 2  # enough to repeat a layer; small enough to train in seconds
STEPS = 3


def load_example():
    spec = importlib.util.spec_from_file_location("deep_transformer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> Path:
    """The script's stdout, saved as a .mir file."""
    text = subprocess.run([sys.executable, str(SCRIPT), "--layers", str(LAYERS)], check=True, capture_output=True, text=True).stdout
    path = tmp_path_factory.mktemp("model") / "deep.mir"
    path.write_text(text)
    return path



def test_printed_text_round_trips(printed):
    text = printed.read_text()
    assert print_module(parse_module(text)) == text


def test_script_prints_what_build_returns(printed):
    assert printed.read_text() == print_module(load_example().build(LAYERS))


def test_every_layer_has_its_own_variables():
    variables = load_example().build(3).variables
    per_layer = [{name.split(".", 1)[1] for name in variables if name.startswith(f"layer{i}.")} for i in range(3)]
    assert per_layer[0] == per_layer[1] == per_layer[2]
    assert {"attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.in.w", "ffn.out.w", "ln1.scale", "ln2.bias"} <= per_layer[0]


def loss_curve(model: Path, data: str, monkeypatch: pytest.MonkeyPatch, mesh: str, layout: str) -> list[float]:
    """The loss of every step, recorded around the real training loop."""
    argv = [str(model), "--train", "--data", data, "--backend", "xla", "--devices", "8", "--steps", str(STEPS),
            "--lr", "0.003", "--mesh", mesh, "--layout", layout]
    return recorded_training(argv).losses


def test_losses_on_the_2x4_mesh_equal_one_device(printed, patterns, monkeypatch, capsys):
    one = loss_curve(printed, patterns, monkeypatch, "x:1", "batch:x")
    mesh = loss_curve(printed, patterns, monkeypatch, "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols")
    capsys.readouterr()
    assert len(one) == len(mesh) == STEPS and one[-1] < one[0]
    np.testing.assert_allclose(mesh, one, rtol=2e-4, atol=2e-5)
