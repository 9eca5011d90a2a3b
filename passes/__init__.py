"""Passes: the pass base class and registry, the pipeline parser, one module per pass."""
