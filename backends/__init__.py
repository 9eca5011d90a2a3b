"""Backends that run local programs: reference (numpy) now; xla and tf arrive with their issues."""
