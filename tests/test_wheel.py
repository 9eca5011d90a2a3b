"""The built wheel, installed into a clean virtual environment, imports and runs
every tool (the published Mesh TensorFlow package once shipped empty)."""
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_and_runs_in_a_clean_venv(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], cwd=tmp_path)
    wheels = list(dist.glob("meshir-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    run([str(bin_dir / "pip"), "install", "-q", str(wheels[0])], cwd=tmp_path)

    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The wheel holds every mapped package, not the source tree's folders.
    listing = run([str(bin_dir / "python"), "-c",
                   "import meshir, meshir.frontends.text, meshir.passes, meshir.tools.opt, meshir.tools.run; print(meshir.__file__)"],
                  cwd=work, env=clean_env).stdout
    assert str(env_dir) in listing
    help_text = run([str(bin_dir / "meshir-opt"), "--help"], cwd=work, env=clean_env).stdout
    assert "--passes" in help_text
    printed = run([str(bin_dir / "meshir-opt"), str(REPO / "examples" / "mlp.mir"), "--passes=canonicalize,cse,dce"],
                  cwd=work, env=clean_env).stdout
    assert "func @loss" in printed and "softmax_cross_entropy" in printed
    outputs = run([str(bin_dir / "meshir-run"), str(REPO / "examples" / "mlp.mir"), "--backend", "reference"],
                  cwd=work, env=clean_env).stdout
    assert "%loss" in outputs
    site_packages = next((env_dir / "lib").glob("python*/site-packages"))
    for stray in ("passes", "tools", "frontends", "backends"):
        assert not (site_packages / stray).exists(), f"the wheel installs a top-level '{stray}'"
