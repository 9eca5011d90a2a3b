"""Build a pipeline-parallel digits classifier with the Python builder and print
its .mir text.

An input layer (pixels -> features), then `--stages` residual tanh layers of
features x features placed one per stage of the mesh's `cols` axis and run as a
GPipe pipeline over `--microbatches` microbatches (frontends/builder/pipeline.py),
then a classifier; @loss is the mean cross-entropy, @accuracy the share of
correct predictions. Layout: batch over rows (data parallel), stage over cols:
each column of devices holds one stage's weights, and activations go from one
column to the next by collective_permute.

    python examples/pipeline_mlp.py > /tmp/pipe.mir
    python examples/digits_data.py /tmp/digits.npz
    meshir-run /tmp/pipe.mir --train --data /tmp/digits.npz --backend xla --devices 8 --steps 200 --lr 0.01
"""
from __future__ import annotations

import argparse

from meshir.frontends.builder import FunctionBuilder, ModuleBuilder, Tensor, f32, i32, pipelined
from meshir.ir import Module
from meshir.printer import print_module
from meshir.types import Dim

PIXELS, FEATURES, CLASSES, BATCH = 64, 64, 10, 64


def stage_layer(f: FunctionBuilder, h: Tensor) -> Tensor:
    """h + tanh(h . W[stage] + b[stage]): each stage's own weights."""
    z = f.einsum(h, f.read("stack.w"), output=[*h.names[:-1], "out"])
    z = f.rename(z, from_="out", to="features") + f.read("stack.b")
    return h + f.tanh(z)


def network(f: FunctionBuilder, x: Tensor, stages: int, microbatches: int) -> Tensor:
    h = f.einsum(x, f.read("input.w"), output=["batch", "features"]) + f.read("input.b")
    h = pipelined(f, f.tanh(h), stage_layer, stages=Dim("stage", stages), batch="batch", microbatches=microbatches)
    return f.einsum(h, f.read("classify.w"), output=["batch", "classes"]) + f.read("classify.b")


def build(stages: int = 4, microbatches: int = 4) -> Module:
    mb = ModuleBuilder()
    mb.mesh("m", rows=2, cols=stages)
    mb.layout("dp_pipe", {"batch": "rows", "stage": "cols"})
    mb.var("input.w", f32(pixels=PIXELS, features=FEATURES), "glorot_uniform", seed=1)
    mb.var("input.b", f32(features=FEATURES), "zeros")
    mb.var("stack.w", f32(stage=stages, features=FEATURES, out=FEATURES), "normal", stddev=0.1, seed=2)
    mb.var("stack.b", f32(stage=stages, features=FEATURES), "zeros")
    mb.var("classify.w", f32(features=FEATURES, classes=CLASSES), "glorot_uniform", seed=3)
    mb.var("classify.b", f32(classes=CLASSES), "zeros")
    args = {"x": f32(batch=BATCH, pixels=PIXELS), "y": i32(batch=BATCH)}
    with mb.function("loss", mesh="m", layout="dp_pipe", **args) as f:
        logits = network(f, f.arg("x"), stages, microbatches)
        onehot = f.one_hot(f.arg("y"), dim=("classes", CLASSES), dtype=f32)
        ce = f.softmax_cross_entropy(logits, onehot, dim="classes")
        f.ret(f.reduce_mean(ce, dims=["batch"], name="loss"))
    with mb.function("accuracy", mesh="m", layout="dp_pipe", **args) as f:
        predicted = f.argmax(network(f, f.arg("x"), stages, microbatches), dim="classes")
        hits = f.cast(f.eq(predicted, f.arg("y")), dtype=f32)
        f.ret(f.reduce_mean(hits, dims=["batch"], name="accuracy"))
    return mb.build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=4, help="pipeline stages, the mesh's cols (default 4)")
    parser.add_argument("--microbatches", type=int, default=4, help="microbatches per batch (default 4)")
    options = parser.parse_args()
    print(print_module(build(options.stages, options.microbatches)), end="")


if __name__ == "__main__":
    main()
