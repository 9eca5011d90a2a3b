"""Build the classifier of examples/mlp.mir with the Python builder and print it.

`python examples/mlp_builder.py` prints exactly what `meshir-opt examples/mlp.mir` prints.
"""
from meshir.frontends.builder import ModuleBuilder, f32, i32
from meshir.printer import print_module


def build():
    mb = ModuleBuilder()
    mb.mesh("m", rows=2, cols=2)
    mb.layout("dp_mp", batch="rows", hidden="cols")
    mb.var("w1", f32(pixels=784, hidden=512), "normal", stddev=0.05, seed=1)
    mb.var("b1", f32(hidden=512), "zeros")
    mb.var("w2", f32(hidden=512, classes=10), "normal", stddev=0.05, seed=2)
    with mb.function("loss", x=f32(batch=64, pixels=784), y=i32(batch=64), mesh="m", layout="dp_mp") as f:
        x, y = f.args
        h = f.einsum(x, f.read("w1"), output=["batch", "hidden"], name="h")
        hb = f.add(h, f.read("b1"), name="hb")
        a = f.relu(hb, name="a")
        logits = f.einsum(a, f.read("w2"), output=["batch", "classes"], name="logits")
        onehot = f.one_hot(y, dim=("classes", 10), dtype=f32, name="onehot")
        ce = f.softmax_cross_entropy(logits, onehot, dim="classes", name="ce")
        f.ret(f.reduce_mean(ce, dims=["batch"], name="loss"))
    return mb.build()


if __name__ == "__main__":
    print(print_module(build()), end="")
