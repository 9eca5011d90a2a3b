"""The `spmd` pass: global programs to local programs with explicit collectives."""
from . import spmd  # noqa: F401  (registers the pass)
