"""Test-session environment, set before any test module imports JAX.

XLA reads its CPU device count once, when JAX first initialises; the XLA
backend tests need 8 devices (meshes of 2, 2x2 and 2x4) in whatever pytest or
xdist worker process runs them, and NPROC >= 16 so that XLA's CPU collectives
do not hang on a 2-core machine (DESIGN section 9). This file only sets those
environment variables; it imports neither JAX nor TensorFlow.
"""
from meshir.backends.xla.devices import setup_cpu_devices

setup_cpu_devices(8)
