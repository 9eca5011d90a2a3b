"""The optimizer pass against independent numpy optimizers, run for a few steps
on the reference interpreter; its slot variables and options."""
import math

import numpy as np
import pytest

from meshir.diagnostics import FlagError
from meshir.frontends.text import parse_module
from meshir.interpreter import Interpreter
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module

# A "gradient function" as autodiff leaves it: the loss, then one gradient per
# variable named in `gradients`. Here the gradients are inputs, so the test
# controls them exactly.
STEP = """var @w : f32[r=3, c=4] = uniform(seed=1)
var @b : f32[c=4] = ones
func @step(%gw: f32[r=3, c=4], %gb: f32[c=4]) -> (f32[], f32[r=3, c=4], f32[c=4]) attributes {gradients = [@w, @b]} {
  %loss = reduce_sum(%gb) {dims = [c]}
  return %loss, %gw, %gb
}
"""


def train(options: str, gradients: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict, str]:
    module = parse_module(STEP)
    PassManager(parse_pipeline(f"optimizer{{{options}}}")).run(module)
    interpreter = Interpreter(module)
    start = {k: v.copy() for k, v in interpreter.state.items()}
    for gw, gb in gradients:
        interpreter.run("step", {"gw": gw, "gb": gb})
    return start, interpreter.state, print_module(module)


def gradient_stream(steps: int):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)) for _ in range(steps)]


def numpy_optimizer(kind: str, params: dict, grads: list, lr: float, **o) -> dict:
    params = {k: v.astype(np.float64) for k, v in params.items()}
    state: dict = {}
    for t, (gw, gb) in enumerate(grads):
        for name, g in (("w", gw.astype(np.float64)), ("b", gb.astype(np.float64))):
            if kind == "sgd":
                d = g
            elif kind == "momentum":
                v = state[name] = o["momentum"] * state.get(name, 0) + g
                d = g + o["momentum"] * v if o.get("nesterov") else v
            elif kind == "adam":
                m = state[name + "m"] = 0.9 * state.get(name + "m", 0) + 0.1 * g
                v = state[name + "v"] = 0.999 * state.get(name + "v", 0) + 0.001 * g * g
                d = (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
            params[name] = params[name] - lr * d
    return params


@pytest.mark.parametrize("kind,options,extra", [
    ("sgd", "kind=sgd,lr=0.1", {}),
    ("momentum", "kind=momentum,lr=0.1,momentum=0.8", {"momentum": 0.8}),
    ("momentum", "kind=momentum,lr=0.1,momentum=0.8,nesterov=true", {"momentum": 0.8, "nesterov": True}),
    ("adam", "kind=adam,lr=0.01", {}),
])
def test_optimizers_match_numpy(kind, options, extra):
    grads = gradient_stream(4)
    start, state, _ = train(options, grads)
    lr = float(options.split("lr=")[1].split(",")[0])
    expected = numpy_optimizer(kind, {"w": start["w"], "b": start["b"]}, grads, lr, **extra)
    np.testing.assert_allclose(state["w"], expected["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["b"], expected["b"], rtol=1e-5, atol=1e-6)
    assert int(state["step"]) == 4


def test_adafactor_factors_matrix_second_moments_into_row_and_column_slots():
    grads = gradient_stream(3)
    start, state, text = train("kind=adafactor,lr=0.01,beta2=0.9", grads)
    assert "var @w.row : f32[r=3]" in text and "var @w.col : f32[c=4]" in text and "var @b.v : f32[c=4]" in text
    row = col = 0
    w = start["w"].astype(np.float64)
    for gw, _ in grads:
        sq = gw.astype(np.float64) ** 2 + 1e-30
        row = 0.9 * row + 0.1 * sq.mean(1)
        col = 0.9 * col + 0.1 * sq.mean(0)
        w = w - 0.01 * gw / np.sqrt(np.outer(row, col) / row.mean())
    np.testing.assert_allclose(state["w"], w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("schedule,expected", [
    ("schedule=constant", lambda t: 0.1),
    ("schedule=linear-warmup,warmup-steps=4", lambda t: 0.1 * min(1, (t + 1) / 4)),
    ("schedule=cosine,warmup-steps=2,decay-steps=6", lambda t: 0.1 * min(1, (t + 1) / 2) * 0.5 * (1 + math.cos(math.pi * min(t, 6) / 6))),
    ("schedule=rsqrt,warmup-steps=2", lambda t: 0.1 * math.sqrt(2) / math.sqrt(max(t + 1, 2))),
])
def test_learning_rate_schedules(schedule, expected):
    ones = [(np.ones((3, 4), np.float32), np.ones(4, np.float32))] * 6
    start, state, _ = train(f"kind=sgd,lr=0.1,{schedule}", ones)
    total = sum(expected(t) for t in range(6))
    np.testing.assert_allclose(state["b"], start["b"] - total, rtol=1e-5)


def test_clipping_by_global_norm_and_decoupled_weight_decay():
    g = (np.full((3, 4), 3.0, np.float32), np.full(4, 4.0, np.float32))
    start, state, _ = train("kind=sgd,lr=0.5,clip-norm=1.0,weight-decay=0.1", [g])
    norm = math.sqrt(12 * 9 + 4 * 16)
    np.testing.assert_allclose(state["b"], start["b"] - 0.5 * 4.0 / norm - 0.5 * 0.1 * start["b"], rtol=1e-5)
    np.testing.assert_allclose(state["w"], start["w"] - 0.5 * 3.0 / norm - 0.5 * 0.1 * start["w"], rtol=1e-5)


def test_train_step_returns_only_the_loss_and_counts_steps():
    _, _, text = train("kind=adam,lr=0.01", [])
    assert "-> f32[]" in text and "gradients" not in text
    assert "assign_add @step" in text and "var @step : i32[] = zeros {trainable = false}" in text
    assert "var @w.m : f32[r=3, c=4] = zeros {trainable = false}" in text


@pytest.mark.parametrize("options,fragment", [("kind=rmsprop", "kind"), ("lr=-1", "lr must be positive"), ("schedule=linear", "schedule")])
def test_bad_options_are_flag_errors(options, fragment):
    with pytest.raises(FlagError, match=fragment):
        parse_pipeline(f"optimizer{{{options}}}")
