"""meshir-run --backend tf: a model on 8 CPU devices equals the reference (--check);
its outputs file equals the reference run's; flags it cannot honour exit 2."""
import re
from pathlib import Path

import numpy as np

from meshir.tools import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.mir")


def test_mlp_on_eight_devices_matches_reference(capsys, tmp_path):
    base = [MLP, "--mesh", "rows:2,cols:4", "--layout", "batch:rows,hidden:cols", "--seed", "5"]
    assert run.main([*base, "--backend", "tf", "--devices", "8", "--check", "--outputs", str(tmp_path / "tf.npz")]) == 0
    out = capsys.readouterr().out
    assert "%loss : f32[] =" in out
    assert float(re.search(r"check: largest \|tf - reference\| = (\S+)", out).group(1)) < 1e-5
    assert run.main([*base, "--outputs", str(tmp_path / "ref.npz")]) == 0
    with np.load(tmp_path / "tf.npz") as tf_outputs, np.load(tmp_path / "ref.npz") as ref:
        np.testing.assert_allclose(tf_outputs["loss"], ref["loss"], rtol=1e-6)


def test_flags_the_tf_backend_cannot_honour_exit_2(capsys):
    assert run.main([MLP, "--backend", "tf", "--mesh", "rows:2,cols:4", "--devices", "4"]) == 2
    assert "--devices: mesh @m <rows=2, cols=4> needs 8 devices, got 4" in capsys.readouterr().err
    assert run.main([MLP, "--backend", "tf", "--emit-mode", "gspmd"]) == 2
    assert "XLA's partitioner has no TensorFlow counterpart" in capsys.readouterr().err
