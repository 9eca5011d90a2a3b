"""A long mutation-fuzz run of the parser, verifier and printer (not a test).

    python benchmarks/fuzz_parser.py [--mutants 100000] [--seed 0]

Prints how many mutants parsed, how many gave diagnostics, mutants per second,
and any crash (an exception that is not a MeshirError) with its input.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshir.diagnostics import MeshirError  # noqa: E402
from meshir.frontends.text import parse_module  # noqa: E402
from meshir.printer import print_module  # noqa: E402
from tests.mutation import mutate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seeds = [p.read_text() for p in sorted(REPO.glob("examples/*.mir")) + sorted(REPO.glob("tests/golden/*.mir"))]
    rng = random.Random(args.seed)
    counts = {"ok": 0, "diagnostic": 0, "crash": 0}
    start = time.perf_counter()
    for _ in range(args.mutants):
        text = mutate(rng.choice(seeds), rng)
        try:
            print_module(parse_module(text, "mutant.mir"))
            counts["ok"] += 1
        except MeshirError:
            counts["diagnostic"] += 1
        except Exception:  # noqa: BLE001 - a crash is what we are looking for
            counts["crash"] += 1
            print("CRASH on input:\n" + text + "\n" + traceback.format_exc(), file=sys.stderr)
    elapsed = time.perf_counter() - start
    print(f"{args.mutants} mutants in {elapsed:.1f} s ({args.mutants / elapsed:.0f}/s): "
          f"{counts['ok']} parsed, {counts['diagnostic']} diagnostics, {counts['crash']} crashes")
    return 1 if counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
