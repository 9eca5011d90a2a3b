"""Passes: the pass base class and registry, the pipeline parser, one module per pass."""
from . import autodiff, canonicalize, cse, dce, layout, optimizer, spmd  # noqa: F401  (each registers its pass)
