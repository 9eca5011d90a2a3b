"""Test-session environment, set before any test module imports JAX, and the
datasets the training tests share.

XLA reads its CPU device count once, when JAX first initialises; the XLA
backend tests need 8 devices (meshes of 2, 2x2 and 2x4) in whatever pytest or
xdist worker process runs them, and NPROC >= 16 so that XLA's CPU collectives
do not hang on a 2-core machine (DESIGN section 9). This file only sets those
environment variables; it imports neither JAX nor TensorFlow. The datasets are
made once per test process by the scripts users run (examples/, benchmarks/).
"""
import subprocess
import sys
from pathlib import Path

import pytest

from meshir.backends.xla.devices import setup_cpu_devices

setup_cpu_devices(8)

REPO = Path(__file__).resolve().parent.parent


def _made_by(tmp_path_factory, script: str, file: str, *args: str) -> str:
    path = tmp_path_factory.mktemp("data") / file
    subprocess.run([sys.executable, str(REPO / script), str(path), *args], check=True, capture_output=True, timeout=300)
    return str(path)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> str:
    """examples/digits_data.py's digits.npz: x_train, y_train, x_test, y_test."""
    return _made_by(tmp_path_factory, "examples/digits_data.py", "digits.npz")


@pytest.fixture(scope="session")
def mnist_like(tmp_path_factory) -> str:
    """examples/mnist_like.py's stand-in for Keras' mnist.npz."""
    return _made_by(tmp_path_factory, "examples/mnist_like.py", "mnist_like.npz")


@pytest.fixture(scope="session")
def patterns(tmp_path_factory) -> str:
    """benchmarks/lm_data.py's repeated token patterns: 256 training and 32 test sequences."""
    return _made_by(tmp_path_factory, "benchmarks/lm_data.py", "lm.npz", "--train", "256", "--test", "32")
