"""Issue 6's counts, on the 12-layer transformer's train step on 8 devices
(examples/deep_transformer.py): fuse-collectives leaves one gradient all_reduce
per bucket; mixed precision contracts in bf16 and reduces in f32 in the emitted
StableHLO; autostack leaves fewer variables, HLO instructions and GraphDef nodes.

Counts are taken in the IR where the claim is about the IR; each emitted program
is compiled once, the TensorFlow GraphDefs taking most of the time (a graph holds
all 8 devices' copies of the step: about 105,000 nodes without autostack)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from meshir.ir import Module
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools import meshc
from meshir.tools.common import apply_overrides

REPO = Path(__file__).resolve().parent.parent
LAYERS = 12
PARTITIONED = "autodiff{func=loss},optimizer{kind=adam,lr=0.001},layout,spmd"
AUTOSTACKED = "autostack," + PARTITIONED
HLO_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?[\w.\-]+ = ", re.M)


def build_model() -> Module:
    spec = importlib.util.spec_from_file_location("deep_transformer", REPO / "examples" / "deep_transformer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.build(LAYERS)


def compiled(pipeline: str, mesh: str | None = None, layout: str | None = None) -> Module:
    module = build_model()
    apply_overrides(module, mesh, layout)
    PassManager(parse_pipeline(pipeline)).run(module)
    return module


def all_reduces(module: Module) -> int:
    return sum(op.name == "all_reduce" for op in module.functions["loss"].ops)


def buckets_needed(sizes: list[int], max_bytes: int) -> int:
    """Buckets filled greedily in order: a size that would take the open bucket past
    `max_bytes` opens the next one (a size larger than `max_bytes` is alone)."""
    filled: list[int] = []
    for size in sizes:
        if not filled or filled[-1] + size > max_bytes:
            filled.append(0)
        filled[-1] += size
    return len(filled)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "deep_transformer.mir"
    path.write_text(print_module(build_model()))
    return path


def emitted(model_path: Path, pipeline: str, filename: str) -> Path:
    """What `meshc -o filename` writes for the model under `pipeline`."""
    out = model_path.with_name(filename)
    assert meshc.main([str(model_path), "--passes", pipeline, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def data_parallel_step() -> Module:
    return compiled(PARTITIONED, "all:8", "batch:all")


@pytest.mark.parametrize("max_bytes", [1 << 20, 1 << 18])
def test_fuse_collectives_leaves_one_gradient_all_reduce_per_bucket(data_parallel_step, max_bytes):
    model = build_model()
    # Data-parallel, each device all-reduces every gradient whole, and a gradient has
    # its variable's type; the optimizer updates the variables, and so reduces their
    # gradients, in declaration order (@embed's too: each device scatters its own rows
    # and the table is all-reduced). The loss's partial sums are one more f32 all_reduce, last.
    gradients = [v.type.nbytes for v in model.variables.values() if v.trainable]
    sizes = gradients + [model.functions["loss"].result_types[0].nbytes]
    fused = compiled(PARTITIONED + f",fuse-collectives{{max-bytes={max_bytes}}}", "all:8", "batch:all")
    assert all_reduces(data_parallel_step) == len(sizes)
    expected = buckets_needed(sizes, max_bytes)
    assert 1 < expected < len(gradients) / 10  # the bucket size matters, and fusing removes most of them
    assert all_reduces(fused) == expected


def test_mixed_precision_contracts_in_bf16_and_reduces_in_f32(model_path):
    program = emitted(model_path, "mixed-precision{activation=bf16}," + PARTITIONED, "mixed.mlir").read_text()
    dots = re.findall(r"stablehlo.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\)", program)
    # Every einsum of the forward pass has two differentiable operands: one dot
    # forward and one per operand's cotangent.
    contractions = sum(op.name == "einsum" for op in build_model().functions["loss"].ops)
    assert len(dots) >= 3 * contractions
    assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b in dots)
    sums = re.findall(r"stablehlo.reduce\(.*applies stablehlo.add .*: \((tensor<[^>]*>)", program)
    assert sums and all(t.endswith("xf32>") for t in sums)


def test_autostack_leaves_fewer_variables():
    plain, stacked = compiled(PARTITIONED), compiled(AUTOSTACKED)
    # The layers' variables of equal types share a few stacks, and so do their Adam slots.
    assert len(stacked.variables) * 5 < len(plain.variables)


def test_autostack_leaves_fewer_hlo_instructions(model_path):
    plain, stacked = (len(HLO_INSTRUCTION.findall(emitted(model_path, pipeline, name).read_text()))
                      for pipeline, name in ((PARTITIONED, "plain.hlo"), (AUTOSTACKED, "stacked.hlo")))
    assert stacked < 0.8 * plain


def test_autostack_leaves_fewer_graphdef_nodes(model_path):
    from tensorflow.core.framework.graph_pb2 import GraphDef

    def nodes(pipeline: str, filename: str) -> int:
        graph = GraphDef()
        graph.ParseFromString(emitted(model_path, pipeline, filename).read_bytes())
        return len(graph.node)

    plain, stacked = nodes(PARTITIONED, "plain.pb"), nodes(AUTOSTACKED, "stacked.pb")
    assert stacked < 0.5 * plain
