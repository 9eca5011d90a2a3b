"""Passes: the pass base class and registry, the pipeline parser, one module per pass."""
from . import auto_layout, autodiff, autostack, canonicalize, cse, dce, estimate, fuse_collectives, layout, mixed_precision, optimizer, spmd  # noqa: F401  (each registers its pass)
