"""Every file under examples/ is run: each `.mir` through meshir-opt and the
reference backend, each builder script as a program."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshir.frontends.text import parse_module, read_source
from meshir.interpreter import Interpreter, random_inputs
from meshir.printer import print_module
from meshir.tools import opt, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MIR_FILES = sorted(EXAMPLES.glob("*.mir"))
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_examples_exist():
    assert {p.name for p in MIR_FILES} >= {"mlp.mir", "transformer_block.mir", "digits_mlp.mir"}
    assert "mlp_builder.py" in {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", MIR_FILES, ids=lambda p: p.name)
def test_mir_example_runs_on_the_reference_backend(path, capsys):
    assert opt.main([str(path), "--passes=canonicalize,cse,dce"]) == 0
    assert run.main([str(path), "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert " = " in out


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_example_script_runs(path, tmp_path):
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_mlp_builder_prints_exactly_what_parsing_mlp_mir_prints():
    script = subprocess.run([sys.executable, str(EXAMPLES / "mlp_builder.py")], capture_output=True, text=True, check=True)
    parsed = print_module(parse_module(read_source(str(EXAMPLES / "mlp.mir"))))
    assert script.stdout == parsed


def test_mlp_loss_matches_an_independent_numpy_model():
    module = parse_module(read_source(str(EXAMPLES / "mlp.mir")))
    function = module.function("loss")
    inputs = random_inputs(function, seed=3)
    interpreter = Interpreter(module)
    loss = interpreter.run("loss", inputs)["loss"]
    w1, b1, w2 = (interpreter.state[n] for n in ("w1", "b1", "w2"))
    hidden = np.maximum(inputs["x"] @ w1 + b1, 0)
    logits = hidden.astype(np.float64) @ w2
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    expected = -log_probs[np.arange(64), inputs["y"]].mean()
    assert abs(float(loss) - expected) < 1e-4
    assert w1.std() == pytest.approx(0.05, rel=0.05)
