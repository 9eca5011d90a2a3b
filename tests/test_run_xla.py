"""meshir-run --backend xla: the examples under data-parallel, model-parallel and
mixed layouts on 8 simulated CPU devices equal the reference (--check)."""
import re
from pathlib import Path

import numpy as np
import pytest

from meshir.tools import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = [
    ("mlp.mir", "rows:8", "batch:rows"),
    ("mlp.mir", "cols:8", "hidden:cols"),
    ("mlp.mir", "rows:2,cols:4", "batch:rows,hidden:cols"),
    ("transformer_block.mir", "rows:8", "batch:rows"),
    ("transformer_block.mir", "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols"),
    ("transformer_block.mir", "rows:2,cols:4", "seq:rows,model:cols"),
]


@pytest.mark.parametrize("name,mesh,layout", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_example_on_xla_matches_reference(capsys, name, mesh, layout):
    argv = [str(EXAMPLES / name), "--backend", "xla", "--mesh", mesh, "--layout", layout, "--devices", "8", "--check"]
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    difference = float(re.search(r"check: largest \|xla - reference\| = (\S+)", out).group(1))
    assert difference < 1e-4


def test_xla_outputs_file_equals_reference_outputs(tmp_path):
    base = [str(EXAMPLES / "mlp.mir"), "--mesh", "rows:2,cols:4", "--seed", "5"]
    assert run.main([*base, "--backend", "xla", "--outputs", str(tmp_path / "xla.npz")]) == 0
    assert run.main([*base, "--backend", "reference", "--outputs", str(tmp_path / "ref.npz")]) == 0
    with np.load(tmp_path / "xla.npz") as xla, np.load(tmp_path / "ref.npz") as ref:
        np.testing.assert_allclose(xla["loss"], ref["loss"], rtol=1e-5)
