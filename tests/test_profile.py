"""meshir-run --profile: a JAX profiler trace that TensorBoard's profile plugin and
Perfetto open, naming meshir's ops (`einsum:%h`, backends/xla/trace.py)."""
import gzip
import json
from pathlib import Path

import pytest

from meshir.tools import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BLOCK = str(EXAMPLES / "transformer_block.mir")
DIGITS = str(EXAMPLES / "digits_mlp.mir")



def trace_files(directory: Path) -> dict[str, bytes]:
    """The profile's files by name, gzip undone: TensorBoard finds them under
    plugins/profile/<run>/."""
    runs = list((directory / "plugins" / "profile").iterdir())
    assert len(runs) == 1
    return {f.name: gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes() for f in runs[0].iterdir()}


def test_a_single_run_is_profiled_whole_with_meshir_op_names(tmp_path, capsys):
    assert run.main([BLOCK, "--backend", "xla", "--devices", "8", "--profile", str(tmp_path / "profile")]) == 0
    assert "%out" in capsys.readouterr().out
    files = trace_files(tmp_path / "profile")
    assert "perfetto_trace.json.gz" in files
    (xplane,) = [data for name, data in files.items() if name.endswith(".xplane.pb")]
    # The ops defining %q and %weights, as XLA's op metadata names them.
    assert b"einsum:%q" in xplane and b"softmax:%weights" in xplane


def test_training_profiles_the_chosen_steps(digits, tmp_path, capsys):
    argv = [DIGITS, "--train", "--data", digits, "--backend", "xla", "--devices", "8", "--steps", "4",
            "--profile", str(tmp_path / "profile"), "--profile-steps", "2:3"]
    assert run.main(argv) == 0
    assert "step 4/4" in capsys.readouterr().err
    files = trace_files(tmp_path / "profile")
    (xplane,) = [data for name, data in files.items() if name.endswith(".xplane.pb")]
    assert b"einsum:%h" in xplane and b"all_reduce:%" in xplane
    (timeline,) = [data for name, data in files.items() if name.endswith(".trace.json.gz")]
    steps = [e["args"]["step_num"] for e in json.loads(timeline)["traceEvents"] if e.get("name") == "train"]
    assert steps == ["2", "3"]  # marked for TensorBoard's step view; steps 1 and 4 are not traced


@pytest.mark.parametrize("argv,fragment", [
    (["--profile-steps", "2:3"], "--profile-steps needs --profile DIR"),
    (["--profile", "{dir}", "--profile-steps", "2:3"], "only a training run (--train) has steps"),
    (["--profile", "{dir}", "--train", "--profile-steps", "3"], "expected A:B"),
    (["--profile", "{dir}", "--train", "--profile-steps", "4:2"], "expected 1 <= A <= B, got 4:2"),
    (["--profile", "{dir}", "--train", "--steps", "5", "--profile-steps", "7:9"], "the run has only 5 steps"),
    (["--profile", "{dir}", "--backend", "reference"], "need --backend xla"),
])
def test_profile_flag_errors(argv, fragment, tmp_path, capsys):
    args = [a.format(dir=tmp_path / "profile") for a in argv]
    assert run.main([BLOCK, "--backend", "xla", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
