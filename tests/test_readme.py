"""Every command in the README runs; `.ci/run` runs exactly the README's test command."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
COMMANDS = [line.split("  #")[0].strip() for block in SH_BLOCKS for line in block.splitlines() if line.strip()]
SETUP = [c for c in COMMANDS if "pip install" in c]


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    assert len(SETUP) == 2
    main_job, tests = SETUP
    assert "meshir-run examples/digits_mlp.mir --train" in main_job and "batch:rows,hidden:cols" in main_job and "pytest" in tests
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def _run(command: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    return subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_main_job_command_runs(tmp_path):
    """The main job's own steps (set-up is what this test session already did):
    the progress bar on stderr, the metrics with at least 95% accuracy on stdout."""
    steps = [s.strip().removeprefix(".venv/bin/") for s in SETUP[0].split("&&") if "-m venv" not in s and "pip install" not in s]
    result = _run(" && ".join(steps).replace("digits.npz", str(tmp_path / "digits.npz")))
    assert result.returncode == 0, result.stderr
    assert "step 300/300" in result.stderr and "examples/s" in result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 300 and metrics["accuracy"] >= 0.95


TOUR_BLOCKS = [[c for c in commands if c not in SETUP] for commands in
               ([line.split("  #")[0].strip() for line in block.splitlines() if line.strip()] for block in SH_BLOCKS)]


@pytest.mark.parametrize("commands", [b for b in TOUR_BLOCKS if b], ids=lambda b: b[0][:60])
def test_tour_block_runs(commands):
    """Each block's commands in order, as a reader pastes them: a block may use
    what an earlier command of the same block made, never another block's."""
    for command in commands:
        result = _run(command)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("block", PY_BLOCKS)
def test_python_blocks_run(block):
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["module"].functions
