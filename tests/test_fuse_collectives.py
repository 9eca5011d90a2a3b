"""fuse-collectives: fused local programs compute what the unfused ones compute,
in the numpy simulator and on XLA (8 CPU devices); the data-parallel train step
keeps one gradient all_reduce per bucket; 20 training steps lose the same."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training import recorded_training
from meshir.backends.xla import compile_local
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter, shard, storage_layouts
from meshir.ir import Function, Module
from meshir.passes.base import module_statistics
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools import opt
from meshir.tools.common import load_module
from meshir.types import TensorType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = str(EXAMPLES / "digits_mlp.mir")
SGD_STEP = "autodiff{func=loss},optimizer{kind=sgd,lr=0.1},layout,spmd"
ADAM_STEP = "autodiff{func=loss},optimizer{kind=adam,lr=0.01},layout,spmd"
DATA_PARALLEL = ("all:8", "batch:all")
MIXED = ("rows:2,cols:4", "batch:rows,hidden:cols")

# id -> (example, pipeline up to spmd, mesh, layout); every mesh has 8 devices.
PROGRAMS = {
    "mlp": ("mlp.mir", "layout,spmd", "rows:2,cols:4", "batch:rows,hidden:cols"),
    "transformer-megatron": ("transformer_block.mir", "layout,spmd", "rows:2,cols:4", "batch:rows,heads:cols,hidden:cols"),
    "transformer-model-split": ("transformer_block.mir", "layout,spmd", "rows:2,cols:4", "batch:rows,model:(rows,cols)"),
    "digits-sgd-data-parallel": ("digits_mlp.mir", SGD_STEP, *DATA_PARALLEL),
    "digits-adam-data-parallel": ("digits_mlp.mir", ADAM_STEP, *DATA_PARALLEL),
    "digits-adam-mixed": ("digits_mlp.mir", ADAM_STEP, *MIXED),
}


# Every kind that fuses, over one and two mesh axes in either order, next to
# collectives that must stay apart, and the peepholes.
EVERY_KIND = """
mesh @m = <rows=2, cols=4>

func @kinds(%x: f32[a=8, b=4], %y: f32[c=2, a=8], %z: f32[a=8, b=4, c=2], %n: i32[a=8])
    -> (f32[a=8, b=4], f32[c=2, a=8], f32[a=8, b=4], f32[c=2, a=8], f32[a=8, b=4], i32[a=8], i32[a=8],
        f32[a=64, b=4], f32[c=2, a=64], f32[a=32, b=4], f32[c=2, a=32],
        f32[a=1, b=4], f32[c=2, a=1], f32[a=8, b=2], f32[c=2, a=2],
        f32[a=2, b=16], f32[a=8, b=4], f32[a=2, b=4, c=8], f32[a=8, b=4], f32[c=2, a=8],
        f32[a=2, b=4], f32[a=8, b=4], f32[a=8, b=4], f32[a=8, b=4])
    attributes {spmd = @m} {
  %r1 = all_reduce(%x) {axes = [cols], reduce = sum}
  %r2 = all_reduce(%y) {axes = [cols], reduce = sum}
  %r3 = all_reduce(%x) {axes = [rows, cols], reduce = max}
  %r4 = all_reduce(%y) {axes = [cols, rows], reduce = max}
  %e1 = exp(%r1)
  %r5 = all_reduce(%e1) {axes = [cols], reduce = sum}
  %i1 = all_reduce(%n) {axes = [rows], reduce = prod}
  %i2 = all_reduce(%n) {axes = [rows], reduce = prod}
  %g1 = all_gather(%x) {dim = a, axes = [rows, cols]}
  %g2 = all_gather(%y) {dim = a, axes = [rows, cols]}
  %g3 = all_gather(%x) {dim = a, axes = [cols]}
  %g4 = all_gather(%y) {dim = a, axes = [cols]}
  %s1 = reduce_scatter(%x) {dim = a, axes = [cols, rows], reduce = sum}
  %s2 = reduce_scatter(%y) {dim = a, axes = [cols, rows], reduce = sum}
  %s3 = reduce_scatter(%x) {dim = b, axes = [rows], reduce = max}
  %s4 = reduce_scatter(%y) {dim = a, axes = [cols], reduce = max}
  %t1 = all_to_all(%x) {split_dim = a, concat_dim = b, axes = [cols]}
  %t2 = all_to_all(%x) {split_dim = b, concat_dim = b, axes = [cols]}
  %t3 = all_to_all(%z) {split_dim = a, concat_dim = c, axes = [cols]}
  %p1 = collective_permute(%x) {axis = cols, shift = 1, wrap = true}
  %p2 = collective_permute(%y) {axis = cols, shift = 1, wrap = true}
  %full = all_reduce(%x) {axes = [cols], reduce = sum}
  %mine = all_slice(%full) {dim = a, axes = [cols]}
  %sx = all_reduce(%x) {axes = [rows], reduce = sum}
  %sz = all_reduce(%p1) {axes = [rows], reduce = sum}
  %d = sub(%sx, %sz)
  %mx = all_reduce(%x) {axes = [cols], reduce = max}
  %mz = all_reduce(%p1) {axes = [cols], reduce = max}
  %m = maximum(%mx, %mz)
  %px = all_reduce(%x) {axes = [cols], reduce = prod}
  %pz = all_reduce(%p1) {axes = [cols], reduce = prod}
  %p = mul(%px, %pz)
  return %r1, %r2, %r3, %r4, %r5, %i1, %i2, %g1, %g2, %g3, %g4, %s1, %s2, %s3, %s4, %t1, %t2, %t3, %p1, %p2, %mine, %d, %m, %p
}
"""


def partitioned(example: str, pipeline: str, mesh: str, layout: str) -> Module:
    module = load_module(str(EXAMPLES / example), mesh, layout)
    PassManager(parse_pipeline(pipeline)).run(module)
    return module


def fused(module: Module, options: str = "") -> Module:
    """A fused copy of `module`, which stays as it was."""
    copy = parse_module(print_module(module))
    PassManager(parse_pipeline(f"fuse-collectives{options}")).run(copy)
    return copy


def per_device_inputs(function: Function, devices: int) -> dict[str, list[np.ndarray]]:
    """Different inputs on every device, replicated arguments too (each rewrite holds
    device by device): floats standard normal, integers in [0, 10) (digit labels)."""
    rng = np.random.default_rng(0)

    def draw(ttype: TensorType) -> np.ndarray:
        values = rng.standard_normal(ttype.shape) if ttype.dtype.is_float else rng.integers(0, 10, ttype.shape)
        return values.astype(ttype.dtype.numpy)

    return {arg.name: [draw(arg.type) for _ in range(devices)] for arg in function.args}


def initial_local_state(module: Module, function: Function) -> dict[str, list[np.ndarray]]:
    state, mesh = Interpreter(module).state, module.mesh_of(function)
    return {name: shard(state[name], layout, mesh) for name, layout in storage_layouts(module, function).items()}


def simulated(module: Module, function: Function, inputs: dict) -> tuple[dict, dict]:
    """Outputs and updated variable slices, per device."""
    local_state = initial_local_state(module, function)
    outputs = Interpreter(module).run_local(function.name, inputs, local_state)
    return outputs, local_state


def assert_same_per_device(got: dict, want: dict, **tolerance) -> None:
    assert list(got) == list(want)
    for name in want:
        for device, (g, w) in enumerate(zip(got[name], want[name], strict=True)):
            np.testing.assert_allclose(g, w, err_msg=f"{name} on device {device}", **tolerance)


@pytest.fixture(scope="module", params=PROGRAMS, ids=list(PROGRAMS))
def program(request) -> tuple[Module, Module]:
    """(the partitioned example, its fused copy)."""
    before = partitioned(*PROGRAMS[request.param])
    return before, fused(before)


def test_simulated_outputs_and_updates_are_unchanged(program) -> None:
    before, after = program
    assert module_statistics(after).collectives.total() <= module_statistics(before).collectives.total()
    for function in before.functions.values():
        inputs = per_device_inputs(function, before.mesh_of(function).size)
        want = simulated(before, function, inputs)
        got = simulated(after, after.functions[function.name], inputs)
        for got_part, want_part in zip(got, want):
            # Equal up to float reassociation: numpy reduces a transposed view, or a stack of
            # one-element blocks, in another order, and the peepholes reassociate sums.
            assert_same_per_device(got_part, want_part, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer-model-split", "digits-adam-data-parallel", "digits-adam-mixed"])
def test_xla_runs_the_fused_program_like_the_simulator(name: str) -> None:
    before = partitioned(*PROGRAMS[name])
    after = fused(before)
    function = before.function()
    inputs = per_device_inputs(function, before.mesh_of(function).size)
    want_outputs, want_state = simulated(before, function, inputs)
    got_outputs, got_state = compile_local(after, function.name, per_device=True).run_per_device(
        inputs, initial_local_state(after, after.functions[function.name]))
    assert_same_per_device(got_outputs, want_outputs, rtol=1e-4, atol=1e-5)
    assert_same_per_device({n: got_state[n] for n in want_state}, want_state, rtol=1e-4, atol=1e-5)


def small_integers(function: Function, devices: int) -> dict[str, list[np.ndarray]]:
    """Per-device inputs whose sums, maxima and products are exact in any order."""
    rng = np.random.default_rng(1)
    return {arg.name: [rng.integers(-3, 4, arg.type.shape).astype(arg.type.dtype.numpy) for _ in range(devices)]
            for arg in function.args}


def test_every_kind_fuses_exactly_in_the_simulator_and_on_xla() -> None:
    before = parse_module(EVERY_KIND)
    after = fused(before)
    stats = module_statistics(after).collectives
    assert (stats["all_reduce"], stats["all_gather"], stats["all_to_all"], stats["collective_permute"]) == (7, 2, 1, 1)
    # %s1 and %s2 fused; %s3 and %s4 apart; %mine from all_slice(all_reduce).
    assert (stats["reduce_scatter"], stats["all_slice"]) == (4, 0)
    function = before.function("kinds")
    inputs = small_integers(function, before.mesh_of(function).size)
    want = Interpreter(before).run_local("kinds", inputs)
    assert_same_per_device(Interpreter(after).run_local("kinds", inputs), want, rtol=0, atol=0)
    got, _ = compile_local(after, "kinds", per_device=True).run_per_device(inputs)
    assert_same_per_device(got, want, rtol=1e-6, atol=0)  # exp's last bit may differ between numpy and XLA


def greedy_buckets(sizes: list[int], max_bytes: int) -> int:
    """How many buckets independent collectives of these sizes fill, in order."""
    buckets, filled = 0, None
    for size in sizes:
        if filled is None or filled + size > max_bytes:
            buckets, filled = buckets + 1, 0
        filled += size
    return buckets


@pytest.mark.parametrize("step", [SGD_STEP, ADAM_STEP], ids=["sgd", "adam"])
@pytest.mark.parametrize("max_bytes", [32 << 20, 32768, 5000, 0])
def test_data_parallel_gradients_take_one_all_reduce_per_bucket(step: str, max_bytes: int) -> None:
    before = partitioned("digits_mlp.mir", step, *DATA_PARALLEL).functions["loss"]
    # The gradients' all_reduces and the loss's: independent, all over `all`.
    sizes = [op.operands[0].type.nbytes for op in before.ops if op.name == "all_reduce"]
    assert len(sizes) >= 5
    after = fused(partitioned("digits_mlp.mir", step, *DATA_PARALLEL), f"{{max-bytes={max_bytes}}}").functions["loss"]
    reduces = [op for op in after.ops if op.name == "all_reduce"]
    assert len(reduces) == greedy_buckets(sizes, max_bytes)  # one with the default 32 MiB
    fused_operands = [op.operands[0] for op in reduces if getattr(op.operands[0].owner, "name", None) == "concat"]
    assert all(operand.type.nbytes <= max_bytes for operand in fused_operands)


def test_pass_statistics_show_collectives_and_bytes_before_and_after(capsys) -> None:
    status = opt.main([DIGITS, "--mesh", DATA_PARALLEL[0], "--layout", DATA_PARALLEL[1], "--pass-statistics",
                       f"--passes={SGD_STEP},fuse-collectives"])
    assert status == 0
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("fuse-collectives:"))
    # Four gradients and the loss fuse into one; the accuracy function keeps its own.
    assert "all_reduce 6 -> 2" in line and "bytes[all] 38448 -> 38448" in line



def losses(digits: str, capsys, monkeypatch, passes: str, mesh: str, layout: str) -> list[float]:
    """The loss of each of 20 training steps on XLA, recorded around the real training loop."""
    argv = [DIGITS, "--train", "--data", digits, "--backend", "xla", "--devices", "8", "--steps", "20",
            "--mesh", mesh, "--layout", layout, "--passes", passes]
    recorded = recorded_training(argv).losses
    capsys.readouterr()
    return recorded


@pytest.mark.parametrize("mesh,layout", [DATA_PARALLEL, MIXED], ids=["data-parallel", "mixed"])
def test_twenty_training_steps_lose_the_same_with_fusion(digits, capsys, monkeypatch, mesh: str, layout: str) -> None:
    plain = losses(digits, capsys, monkeypatch, ADAM_STEP, mesh, layout)
    with_fusion = losses(digits, capsys, monkeypatch, f"{ADAM_STEP},fuse-collectives", mesh, layout)
    assert len(plain) == 20 and plain[-1] < plain[0]
    np.testing.assert_allclose(with_fusion, plain, rtol=1e-5, atol=1e-6)
