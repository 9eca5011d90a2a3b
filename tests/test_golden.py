"""Golden IR tests: each tests/golden/*.mir runs its `// RUN:` line through
meshir-opt in-process and checks the output against its `// CHECK` lines with
FileCheck (the `filecheck` package)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from meshir.tools import opt

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(GOLDEN.glob("*.mir"))


def opt_arguments(path: Path) -> list[str]:
    """The meshir-opt arguments of the file's RUN line, `%s` made the file's path;
    a trailing `| filecheck %s` is what this test does itself."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("// RUN:")]
    assert len(lines) == 1, f"{path.name} needs exactly one '// RUN:' line"
    command = lines[0].removeprefix("// RUN:").split("|")[0]
    tool, *arguments = shlex.split(command)
    assert tool == "meshir-opt", f"{path.name}: RUN line must call meshir-opt, not {tool}"
    return [str(path) if a == "%s" else a for a in arguments]


def test_there_is_a_golden_file_for_each_cleanup_pass() -> None:
    assert {"canonicalize.mir", "cse.mir", "dce.mir"} <= {p.name for p in CASES}


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_golden(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = opt.main(opt_arguments(path))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    check = subprocess.run(
        [sys.executable, "-m", "filecheck", str(path)], input=captured.out, capture_output=True, text=True
    )
    assert check.returncode == 0, f"{check.stdout}{check.stderr}\n--- meshir-opt output ---\n{captured.out}"
