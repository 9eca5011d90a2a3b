"""Write a toy next-token data set for examples/transformer_lm.mir as an .npz:
tokens_train, targets_train, tokens_test, targets_test, each i32[examples, 32].

Every example repeats a random pattern of 2 to 8 tokens; the targets are the
tokens shifted left by one. After the pattern's first period the next token is
fully determined, so a causal model can learn to copy from earlier positions.

    python benchmarks/lm_data.py lm.npz [--train 2048] [--test 256] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

SEQ = 32
VOCAB = 128
PERIODS = (2, 8)


def repeated_patterns(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, targets), each int32[count, SEQ]."""
    positions = np.arange(SEQ + 1)
    periods = rng.integers(PERIODS[0], PERIODS[1] + 1, size=count)
    patterns = rng.integers(0, VOCAB, size=(count, PERIODS[1]))
    sequences = np.take_along_axis(patterns, positions[None, :] % periods[:, None], axis=1).astype(np.int32)
    return sequences[:, :-1], sequences[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="lm.npz")
    parser.add_argument("--train", type=int, default=2048, help="training examples (default 2048)")
    parser.add_argument("--test", type=int, default=256, help="test examples (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tokens_train, targets_train = repeated_patterns(args.train, rng)
    tokens_test, targets_test = repeated_patterns(args.test, rng)
    np.savez(args.path, tokens_train=tokens_train, targets_train=targets_train,
             tokens_test=tokens_test, targets_test=targets_test)
    print(f"wrote {args.path}: {args.train} training and {args.test} test sequences of {SEQ} tokens")


if __name__ == "__main__":
    main()
