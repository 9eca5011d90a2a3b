"""Write scikit-learn's bundled 8x8 digits (no download) as an .npz in Keras'
mnist.npz layout: x_train, y_train, x_test, y_test, pixels scaled to [0, 1].

    python examples/digits_data.py digits.npz
"""
import sys

import numpy as np
from sklearn.datasets import load_digits

TEST_EXAMPLES = 384  # six batches of 64


def main(path: str) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:TEST_EXAMPLES], order[TEST_EXAMPLES:]
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    print(f"wrote {path}: {len(train)} training and {len(test)} test examples")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits.npz")
