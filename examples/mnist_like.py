"""Write a stand-in for Keras' mnist.npz, made from scikit-learn's bundled 8x8
digits (no download), for trying and testing the MNIST examples offline.

    python examples/mnist_like.py mnist_like.npz

The file has mnist.npz's keys and formats: x_train and x_test uint8 images of
28x28 pixels in 0..255, y_train and y_test uint8 labels 0..9. Each 8x8 digit is
scaled to 0..255, upscaled 3x to 24x24 and centred with 2 pixels of border, as
MNIST centres its digits in a 28x28 field. It is only a stand-in: it has 1,797
images, not 70,000; pass the real mnist.npz with `--data` to train on MNIST.
"""
import sys

import numpy as np
from sklearn.datasets import load_digits

SIDE = 28
UPSCALE = 3
TEST_EXAMPLES = 384  # three batches of 128


def as_mnist_images(digits_8x8: np.ndarray) -> np.ndarray:
    """(n, 8, 8) intensities in 0..16 -> (n, 28, 28) uint8 in 0..255."""
    scaled = np.round(digits_8x8 * (255 / 16)).astype(np.uint8)
    upscaled = np.kron(scaled, np.ones((1, UPSCALE, UPSCALE), np.uint8))
    border = (SIDE - upscaled.shape[-1]) // 2
    return np.pad(upscaled, ((0, 0), (border, border), (border, border)))


def main(path: str) -> None:
    digits = load_digits()
    x = as_mnist_images(digits.images)
    y = digits.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:TEST_EXAMPLES], order[TEST_EXAMPLES:]
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    print(f"wrote {path}: {len(train)} training and {len(test)} test images of {SIDE}x{SIDE} (a stand-in for mnist.npz)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mnist_like.npz")
