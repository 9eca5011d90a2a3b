"""Mutation fuzzing: thousands of mutated copies of the examples go through the
parser, verifier and printer and give only diagnostics, never a crash. A larger
run lives in benchmarks/fuzz_parser.py."""
import random
from pathlib import Path

import pytest

from meshir.diagnostics import MeshirError
from meshir.frontends.text import parse_module
from meshir.printer import print_module

from .mutation import mutate

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted(REPO.glob("examples/*.mir")) + sorted(REPO.glob("tests/golden/*.mir"))


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_mutants_give_diagnostics_not_crashes(path):
    original = path.read_text()
    rng = random.Random(path.name)
    outcomes = {"ok": 0, "diagnostic": 0}
    for _ in range(800 if path.parent.name == "examples" else 150):
        text = mutate(original, rng)
        try:
            printed = print_module(parse_module(text, "mutant.mir"))
        except MeshirError as exc:
            assert exc.render().startswith(("mutant.mir:", "error:")), exc.render()
            outcomes["diagnostic"] += 1
            continue
        assert print_module(parse_module(printed, "printed.mir")) == printed
        outcomes["ok"] += 1
    assert outcomes["diagnostic"] > 0
