"""Command-line tools: meshir-opt, meshir-run."""
