"""meshc: the artifacts it writes, what the HLO says about the partitioning, and
its flag errors (exit 2, no partial file)."""
import re
from pathlib import Path

import pytest

from meshir.tools import meshc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.mir")

CONTRACTION = """mesh @m = <rows=2, cols=4>
func @f(%a: f32[m=8, k=16], %b: f32[k=16, n=8]) -> f32[m=8, n=8] attributes {{mesh = @m, layout = {layout}}} {{
  %y = einsum(%a, %b) {{output = [m, n]}}
  return %y
}}
"""


def compile_text(tmp_path: Path, text: str, suffix: str, *flags: str) -> str:
    model = tmp_path / "model.mir"
    model.write_text(text)
    out = tmp_path / f"out{suffix}"
    assert meshc.main([str(model), "-o", str(out), *flags]) == 0
    return out.read_bytes().decode() if suffix != ".jaxexport" else out.read_bytes()


def all_reduce_groups(hlo: str) -> list[str]:
    return re.findall(r"all-reduce\(.*?replica_groups=(\{[^ ]*\})", hlo)


def test_contraction_over_a_split_dim_is_one_all_reduce_over_that_axis(tmp_path):
    hlo = compile_text(tmp_path, CONTRACTION.format(layout="{k: cols}"), ".hlo")
    # Devices are numbered row-major: a cols group is one row of the 2x4 mesh.
    assert all_reduce_groups(hlo) == ["{{0,1,2,3},{4,5,6,7}}"]
    hlo_rows = compile_text(tmp_path, CONTRACTION.format(layout="{k: rows}"), ".hlo")
    assert all_reduce_groups(hlo_rows) == ["{{0,4},{1,5},{2,6},{3,7}}"]


def test_a_layout_that_splits_nothing_has_no_collectives(tmp_path):
    hlo = compile_text(tmp_path, CONTRACTION.format(layout="{}"), ".hlo")
    for collective in ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute"):
        assert collective not in hlo


def test_stablehlo_and_export_artifacts(tmp_path):
    mlir = compile_text(tmp_path, CONTRACTION.format(layout="{k: cols}"), ".mlir")
    assert "stablehlo" in mlir and "func.func" in mlir
    exported = compile_text(tmp_path, CONTRACTION.format(layout="{k: cols}"), ".jaxexport")
    assert isinstance(exported, bytes) and len(exported) > 100


def test_gspmd_mode_leaves_partitioning_to_xla(tmp_path):
    hlo = compile_text(tmp_path, CONTRACTION.format(layout="{k: cols}"), ".hlo", "--emit-mode", "gspmd")
    assert "all-reduce" in hlo


def test_mesh_and_layout_flags_override_the_module(tmp_path):
    out = tmp_path / "mlp.hlo"
    assert meshc.main([MLP, "-o", str(out), "--mesh", "rows:8", "--layout", "batch:rows"]) == 0
    assert all_reduce_groups(out.read_text()) == ["{{0,1,2,3,4,5,6,7}}"]


@pytest.mark.parametrize("flags,fragment", [
    (["-o", "{out}.bin"], "unknown output kind"),
    (["-o", "{out}.hlo", "--passes=layout,spmdd"], "unknown pass 'spmdd'"),
    (["-o", "{out}.hlo", "--mesh", "rows:3"], "--mesh"),
    (["-o", "{out}.hlo", "--layout", "batch:planes"], "--layout"),
    (["-o", "{out}.hlo", "--devices", "2"], "--devices"),
    (["-o", "{out}.hlo", "--entry", "@nope"], "no function @nope"),
])
def test_flag_errors_exit_2_without_output(tmp_path, capsys, flags, fragment):
    out = tmp_path / "model"
    argv = [MLP, *[f.format(out=out) for f in flags]]
    assert meshc.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags,pipeline", [
    ([], "layout,spmd,cse,dce"),
    (["-o", "model.pbtxt"], "layout,spmd,fuse-collectives,cse,dce"),
    (["--train", "--optimizer", "sgd", "--lr", "0.1"], "autostack,autodiff{func=loss},optimizer{kind=sgd,lr=0.1},layout,spmd,cse,dce"),
    (["--mixed-precision", "bf16", "-o", "model.pb"], "mixed-precision{activation=bf16,backend=tf},layout,spmd,fuse-collectives,cse,dce"),
    (["--train", "--mixed-precision", "f16"], "mixed-precision{activation=f16,backend=xla,loss-scale=dynamic,func=loss},"
                                               "autostack,autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd,cse,dce"),
    (["--passes", "layout,spmd"], "layout,spmd"),
])
def test_print_pipeline_shows_the_standard_pipeline_for_the_flags(capsys, flags, pipeline):
    assert meshc.main([MLP, "--print-pipeline", *flags]) == 0
    assert capsys.readouterr().out.strip() == pipeline


def test_output_is_required_unless_printing_the_pipeline(capsys):
    assert meshc.main([MLP]) == 2
    assert "-o OUT is required" in capsys.readouterr().err
