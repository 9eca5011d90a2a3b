"""Every user-facing error: exit status 2, `file:line:col`, the source line and a
caret, a message naming what is wrong, no traceback, and no output file left."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshir.tools import opt

HEADER = """mesh @m = <rows=2, cols=2>
func @f(%x: f32[a=4, b=6], %i: i32[a=4]) -> f32[a=4, b=6] attributes {mesh = @m} {
"""
FOOTER = """  return %x
}
"""


def body(*lines: str) -> str:
    """A function body inside HEADER/FOOTER; its first line is line 3."""
    return HEADER + "".join(f"  {line}\n" for line in lines) + FOOTER


# (id, module text, line of the error, message fragment)
CASES = [
    ("syntax-unclosed-paren", body("%a = relu(%x {"), 3, "expected"),
    ("syntax-stray-character", body("%a = relu(%x) $"), 3, "$"),
    ("syntax-missing-equals", body("%a relu(%x)"), 3, "expected"),
    ("unknown-op", body("%a = frobnicate(%x)"), 3, "unknown op 'frobnicate'"),
    ("unknown-attribute", body("%a = relu(%x) {bogus = 1}"), 3, "relu has no attribute 'bogus'"),
    ("missing-attribute", body("%a = einsum(%x, %x)"), 3, "einsum needs attribute 'output'"),
    ("attribute-kind", body("%a = reduce_sum(%x) {dims = 3}"), 3, "attribute 'dims' must be"),
    ("duplicate-attribute", body("%a = reduce_sum(%x) {dims = [a], dims = [b]}"), 3, "dims"),
    ("undefined-value", body("%a = relu(%nope)"), 3, "%nope"),
    ("redefined-value", body("%a = relu(%x)", "%a = exp(%x)"), 4, "%a"),
    ("undefined-variable", body("%w = read @nope"), 3, "@nope"),
    ("operand-count", body("%a = relu(%x, %x)"), 3, "relu takes 1 operand, got 2"),
    ("result-count", body("%a, %b = relu(%x)"), 3, "relu produces 1 result but 2 are named"),
    ("dtype-mix", body("%c = cast(%i) {dtype = i32}", "%a = add(%x, %c)"), 4, "dtype"),
    ("dimension-size-clash", body("%y = slice(%x) {dim = a, begin = 0, size = 2}", "%a = add(%x, %y)"), 4, "dimension 'a' has size 4 in operand 0 but size 2 in operand 1"),
    ("duplicate-dimension", HEADER.replace("%i: i32[a=4]", "%i: i32[a=4, a=4]") + FOOTER, 2, "dimension 'a' appears twice"),
    ("einsum-absent-dimension", body("%a = einsum(%x) {output = [a, heads]}"), 3, "einsum output names dimension 'heads', which no operand has"),
    ("result-type-mismatch", body("%a = relu(%x) : f32[a=4, b=7]"), 3, "declared f32[a=4, b=7] but the op produces f32[a=4, b=6]"),
    ("reduce-absent-dimension", body("%a = reduce_sum(%x) {dims = [zzz]}"), 3, "'zzz'"),
    ("float-op-on-integers", body("%a = exp(%i)"), 3, "exp: operand 0 must have a float dtype, got i32"),
    ("dropout-rate-too-high", body("%a = dropout(%x) {rate = 1.5, seed = 1}"), 3, "[0, 1)"),
    ("dropout-rate-negative", body("%a = dropout(%x) {rate = -0.1, seed = 1}"), 3, "[0, 1)"),
    ("transpose-not-permutation", body("%a = transpose(%x) {order = [a]}"), 3, "transpose"),
    ("reshape-count", body("%a = reshape(%x) {shape = [c=5]}"), 3, "24"),
    ("slice-out-of-bounds", body("%a = slice(%x) {dim = b, begin = 4, size = 3}"), 3, "slice"),
    ("split-sizes", body("%a, %b = split(%x) {dim = b, sizes = [2, 2]}"), 3, "6"),
    ("one-hot-float-indices", body("%a = one_hot(%x) {dim = classes=3}"), 3, "one_hot"),
    ("unknown-dtype", HEADER.replace("f32[a=4, b=6], %i", "f33[a=4, b=6], %i") + FOOTER, 2, "f33"),
    ("collective-in-global-function", body("%a = all_reduce(%x) {axes = [rows], reduce = sum}"), 3, "spmd"),
    ("return-count", HEADER + "  return %x, %x\n}\n", 3, "declares 1 result but returns 2"),
    ("return-type", HEADER + "  %s = reduce_sum(%x) {dims = [b]}\n  return %s\n}\n", 4, "result 0 is declared f32[a=4, b=6] but %s is f32[a=4]"),
    ("unknown-function-attribute", HEADER.replace("{mesh = @m}", "{mesh = @m, colour = 3}") + FOOTER, 2, "no attribute 'colour'"),
    ("function-unknown-mesh", HEADER.replace("{mesh = @m}", "{mesh = @nowhere}") + FOOTER, 2, "@nowhere"),
    ("layout-without-mesh", HEADER.replace("{mesh = @m}", "{layout = {a: rows}}") + FOOTER, 2, "has a layout but no mesh"),
    ("layout-unknown-axis", HEADER.replace("{mesh = @m}", "{mesh = @m, layout = {a: planes}}") + FOOTER, 2, "axis 'planes', which mesh @m does not have"),
    ("layout-axis-twice", "mesh @m = <rows=2, cols=2>\nlayout @l = {a: (rows, rows)}\n", 2, "uses mesh axis 'rows' twice"),
    ("layout-not-divisible", HEADER.replace("{mesh = @m}", "{mesh = @m, layout = {b: (rows, cols)}}") + FOOTER, 2, "dimension 'b' of size 6 cannot be split over mesh axis rows/cols of size 4"),
    ("mesh-axis-twice", "mesh @m = <rows=2, rows=2>\n", 1, "names axis 'rows' twice"),
    ("redefined-symbol", "var @w : f32[a=2] = zeros\nvar @w : f32[a=2] = ones\n", 2, "@w"),
    ("unknown-initializer", "var @w : f32[a=2] = gaussian(seed=1)\n", 1, "unknown initializer 'gaussian'"),
    ("assign-type-mismatch", "var @w : f32[a=2] = zeros\n" + body("assign @w, %x").replace("mesh @m", "mesh @mm").replace("@m}", "@mm}"), 4, "assign"),
    ("reshard-unknown-axis", body("%a = reshard(%x) {layout = {a: planes}}"), 3, "planes"),
    ("concat-mismatched-dims", body("%t = transpose(%x) {order = [b, a]}", "%a = concat(%x, %t) {dim = a}"), 4, "concat"),
]


def run_opt(tmp_path: Path, text: str | bytes, *flags: str):
    model = tmp_path / "model.mir"
    if isinstance(text, bytes):
        model.write_bytes(text)
    else:
        model.write_text(text)
    out = tmp_path / "out.mir"
    return model, out, [str(model), "-o", str(out), *flags]


@pytest.mark.parametrize("case_id,text,line,fragment", CASES, ids=[c[0] for c in CASES])
def test_diagnostic(tmp_path, capsys, case_id, text, line, fragment):
    model, out, argv = run_opt(tmp_path, text)
    status = opt.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert re.search(rf"^{re.escape(str(model))}:{line}:\d+: error: ", err, re.MULTILINE), err
    assert fragment in err, err
    first_line, source_line, caret = err.split("\n")[:3]
    assert source_line == text.split("\n")[line - 1]
    column = int(first_line.split(":")[2])
    assert caret == " " * (column - 1) + "^"
    assert not out.exists()


def test_non_utf8_input(tmp_path, capsys):
    model, out, argv = run_opt(tmp_path, b"mesh @m = <rows=2>\n// caf\xe9\n")
    assert opt.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{model}:2:7: error:" in err and "UTF-8" in err
    assert "Traceback" not in err and not out.exists()


def test_missing_input_file(tmp_path, capsys):
    assert opt.main([str(tmp_path / "absent.mir")]) == 2
    err = capsys.readouterr().err
    assert "absent.mir" in err and "Traceback" not in err


@pytest.mark.parametrize("flags,fragment", [
    (["--passes=csee"], "--passes: unknown pass 'csee'"),
    (["--passes=cse{max-bytes=3}"], "max-bytes"),
    (["--mesh", "rows:two"], "--mesh"),
    (["--layout", "a:planes"], "--layout"),
    (["--layout", "b:(rows,cols)"], "--layout"),
])
def test_flag_errors_name_the_flag(tmp_path, capsys, flags, fragment):
    model, out, argv = run_opt(tmp_path, body(), *flags)
    assert opt.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not out.exists()


def test_real_process_exit_status_and_no_traceback(tmp_path):
    model, out, argv = run_opt(tmp_path, body("%a = relu(%nope)"))
    result = subprocess.run([sys.executable, "-m", "meshir.tools.opt", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{model}:3:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_at_least_thirty_distinct_diagnostics():
    assert len({fragment for _, _, _, fragment in CASES}) >= 30


def test_verify_diagnostics_file():
    path = Path(__file__).resolve().parent / "diagnostics" / "errors.mir"
    assert opt.main([str(path), "--split-input-file", "--verify-diagnostics"]) == 0
