"""meshir-opt and meshir-run from the command line: flags, files, exit status."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

from meshir.tools import opt, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.mir")

SIMPLE = """func @f(%x: f32[a=3], %y: f32[a=3]) -> (f32[a=3], f32[]) {
  %s = add(%x, %y)
  %t = reduce_sum(%s) {dims = [a]}
  return %s, %t
}
"""


def test_opt_prints_canonical_text_and_writes_atomically(tmp_path, capsys):
    assert opt.main([MLP]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "mlp.out.mir"
    assert opt.main([MLP, "-o", str(out)]) == 0
    assert out.read_text() == printed
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.out.mir"]
    assert opt.main([str(out)]) == 0
    assert capsys.readouterr().out == printed


def test_output_files_get_the_mode_the_umask_gives(tmp_path):
    """Written through a private temporary file, the output still ends up with the
    permissions a plain open() would give it (not owner-only)."""
    previous = os.umask(0o022)
    try:
        out = tmp_path / "mlp.out.mir"
        assert opt.main([MLP, "-o", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_opt_reads_standard_input():
    result = subprocess.run([sys.executable, "-m", "meshir.tools.opt", "-"], input=SIMPLE, capture_output=True, text=True)
    assert result.returncode == 0 and "%t = reduce_sum(%s) {dims = [a]} : f32[]" in result.stdout


def test_opt_mesh_and_layout_overrides(capsys):
    assert opt.main([MLP, "--mesh", "rows:4;cols:2", "--layout", "batch:rows;hidden:cols"]) == 0
    out = capsys.readouterr().out
    assert "mesh @m = <rows=4, cols=2>" in out
    assert "layout = {batch: rows, hidden: cols}" in out


def test_opt_instrumentation(capsys):
    assert opt.main([MLP, "--passes=canonicalize,cse,dce", "--print-ir-after-all", "--time-passes", "--pass-statistics"]) == 0
    err = capsys.readouterr().err
    for name in ("canonicalize", "cse", "dce"):
        assert f"IR Dump After {name}" in err
    assert "func @loss" in err


def test_opt_split_input_file_keeps_line_numbers(tmp_path, capsys):
    model = tmp_path / "two.mir"
    model.write_text(SIMPLE + "// -----\n" + SIMPLE.replace("@f", "@g").replace("%x, %y)", "%x, %nope)"))
    assert opt.main([str(model), "--split-input-file"]) == 2
    assert f"{model}:8:" in capsys.readouterr().err


def test_verify_diagnostics(tmp_path, capsys):
    model = tmp_path / "expect.mir"
    model.write_text(
        "func @f(%x: f32[a=3]) -> f32[a=3] {\n"
        "  // expected-error@+1 {{use of undefined value %nope}}\n"
        "  %s = add(%x, %nope)\n"
        "  return %s\n}\n"
        "// -----\n"
        "func @g(%x: f32[a=3]) -> f32[a=3] {\n"
        "  // expected-error@+1 {{relu takes 1 operand, got 2}}\n"
        "  %s = relu(%x, %x)\n"
        "  return %s\n}\n"
    )
    assert opt.main([str(model), "--split-input-file", "--verify-diagnostics"]) == 0
    model.write_text(model.read_text().replace("got 2", "got 3"))
    assert opt.main([str(model), "--split-input-file", "--verify-diagnostics"]) == 1
    assert "was not produced" in capsys.readouterr().err


def test_run_with_inputs_and_outputs(tmp_path, capsys):
    model = tmp_path / "f.mir"
    model.write_text(SIMPLE)
    x = np.array([1, 2, 3], np.float32)
    y = np.array([10, 20, 30], np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=y)
    assert run.main([str(model), "--entry", "@f", "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")]) == 0
    assert "%t : f32[] = 66." in capsys.readouterr().out
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["s"], x + y)
        assert float(out["t"]) == 66.0


def test_run_seeded_inputs_are_deterministic(capsys):
    assert run.main([MLP, "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert run.main([MLP, "--seed", "7"]) == 0
    assert capsys.readouterr().out == first
    assert run.main([MLP, "--seed", "8"]) == 0
    assert capsys.readouterr().out != first


def test_run_user_errors_exit_2(tmp_path, capsys):
    model = tmp_path / "f.mir"
    model.write_text(SIMPLE)
    np.savez(tmp_path / "bad.npz", x=np.zeros(4, np.float32), y=np.zeros(3, np.float32))
    cases = [
        [str(model), "--entry", "@nope"],
        [str(model), "--inputs", str(tmp_path / "missing.npz")],
        [str(model), "--inputs", str(tmp_path / "bad.npz"), "--outputs", str(tmp_path / "out.npz")],
        [str(model), "--backend", "quantum"],
    ]
    for argv in cases:
        assert run.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err
    assert not (tmp_path / "out.npz").exists()


def test_output_to_a_device_writes_to_it_instead_of_replacing_it():
    """-o /dev/null discards the output; a rename would put a regular file in its place."""
    import stat

    assert opt.main([str(EXAMPLES / "mlp.mir"), "-o", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_bug_in_a_tool_is_reported_as_one_not_as_a_user_error(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(opt, "split_chunks", broken)
    assert opt.main([MLP]) == 1
    err = capsys.readouterr().err
    assert "meshir-opt: internal error: ZeroDivisionError: boom" in err and "This is a bug in meshir" in err
