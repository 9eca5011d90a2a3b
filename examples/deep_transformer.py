"""Build an N-layer decoder-only transformer language model with the Python
builder and print its .mir text.

The model of examples/transformer_lm.mir, made deep: token and position
embeddings, N pre-norm layers (causal multi-head self-attention and a GELU
feed-forward, each with a residual connection), a final layer norm and a
projection to the vocabulary; @loss is the mean next-token cross-entropy. Every
layer declares its own variables (`@layer3.attn.wq`, `@layer3.ffn.in.w`, ...),
so the passes that act per variable (gradient all_reduces, autostack) have many
of them to work on. Data-parallel over rows; heads and feed-forward hidden units
split over cols.

    python examples/deep_transformer.py --layers 12 > /tmp/t12.mir
    meshir-opt /tmp/t12.mir --passes='autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd' --pass-statistics
"""
from __future__ import annotations

import argparse

from meshir.frontends.builder import FunctionBuilder, ModuleBuilder, Tensor, f32, feed_forward, i32, layer_norm, multi_head_attention
from meshir.ir import Module
from meshir.printer import print_module
from meshir.types import Dim

VOCAB, MODEL, HEADS, HEAD, HIDDEN, SEQ, BATCH = 128, 64, 4, 16, 256, 32, 16
MESH = {"rows": 2, "cols": 4}
LAYOUT = {"batch": "rows", "heads": "cols", "hidden": "cols"}


def decoder_layer(f: FunctionBuilder, x: Tensor, index: int) -> Tensor:
    """x + attention(norm(x)), then h + feed_forward(norm(h)); seeds differ per layer
    so that no two layers start from the same weights."""
    name, seed = f"layer{index}", 100 * (index + 1)
    attended = multi_head_attention(
        f, layer_norm(f, x, ["model"], name=f"{name}.ln1"), seq="seq", model="model",
        heads=Dim("heads", HEADS), head_dim=Dim("head", HEAD), name=f"{name}.attn", seed=seed, causal=True)
    h = x + attended
    fed = feed_forward(f, layer_norm(f, h, ["model"], name=f"{name}.ln2"), "model", Dim("hidden", HIDDEN),
                       name=f"{name}.ffn", seed=seed + 10)
    return h + fed


def build(layers: int = 12) -> Module:
    mb = ModuleBuilder()
    mb.mesh("m", **MESH)
    mb.layout("dp_mp", LAYOUT)
    mb.var("embed", f32(vocab=VOCAB, model=MODEL), "normal", stddev=0.02, seed=1)
    mb.var("pos", f32(seq=SEQ, model=MODEL), "normal", stddev=0.02, seed=2)
    mb.var("unembed", f32(model=MODEL, vocab=VOCAB), "normal", stddev=0.02, seed=3)
    with mb.function("loss", tokens=i32(batch=BATCH, seq=SEQ), targets=i32(batch=BATCH, seq=SEQ),
                     mesh="m", layout="dp_mp") as f:
        tokens, targets = f.args
        x = f.gather(f.read("embed"), tokens, dim="vocab") + f.read("pos")
        for index in range(layers):
            x = decoder_layer(f, x, index)
        logits = f.einsum(layer_norm(f, x, ["model"], name="final_ln"), f.read("unembed"),
                          output=["batch", "seq", "vocab"], name="logits")
        onehot = f.one_hot(targets, dim=("vocab", VOCAB), dtype=f32, name="onehot")
        ce = f.softmax_cross_entropy(logits, onehot, dim="vocab", name="ce")
        f.ret(f.reduce_mean(ce, dims=["batch", "seq"], name="loss"))
    return mb.build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (default 12)")
    print(print_module(build(parser.parse_args().layers)), end="")


if __name__ == "__main__":
    main()
