"""The auto-layout pass: its axis-by-axis search does at least as well as an
exhaustive search over every one-dimension-per-axis layout, and may give an axis
several dimensions; a memory budget rules out the layouts over it; the cost
model's weights move the choice as they say; `--layout auto` in the tools;
errors are diagnostics."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from meshir.diagnostics import MeshirError
from meshir.frontends.text import parse_module
from meshir.mesh import LayoutRules
from meshir.passes.estimate import estimate_function
from meshir.passes.pipeline import PassManager, parse_pipeline
from meshir.printer import print_module
from meshir.tools import meshc, opt, run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRAIN = "autodiff{func=loss},optimizer{kind=adam,lr=0.001}"


def train_step(example: str, mesh: str | None = None) -> str:
    """The example's train step, global, as text."""
    path = EXAMPLES / example
    module = parse_module(path.read_text(), str(path))
    if mesh is not None:
        from meshir.tools.common import apply_overrides

        apply_overrides(module, mesh, None)
    PassManager(parse_pipeline(TRAIN)).run(module)
    return print_module(module)


def measured(text: str, rules: LayoutRules, flops_per_second=1e12, bytes_per_second=1e10, latency=1e-5):
    """(cost in seconds, peak bytes) of `rules` as the pass's doc defines them, or
    None where the layout pass rejects the rules."""
    module = parse_module(text)
    names = [f.name for f in module.functions.values() if f.mesh_symbol()]
    for name in names:
        module.functions[name].attributes["layout"] = rules
    try:
        PassManager(parse_pipeline("layout,spmd")).run(module)
    except MeshirError:
        return None
    estimates = [estimate_function(module, module.functions[name]) for name in names]
    seconds = sum(e.flops / flops_per_second
                  + sum(e.communication.bytes_per_axis.values()) / bytes_per_second
                  + sum(e.communication.count_per_kind.values()) * latency for e in estimates)
    return seconds, max(e.memory.peak for e in estimates)


def every_layout(axes: list[str], dims: list[str]):
    """Every assignment of each mesh axis to one dimension or none."""
    for choice in itertools.product([None, *dims], repeat=len(axes)):
        rules: dict[str, tuple[str, ...]] = {}
        for axis, dim in zip(axes, choice):
            if dim is not None:
                rules[dim] = rules.get(dim, ()) + (axis,)
        yield LayoutRules(tuple(rules.items()))


def chosen(text: str, options: str = "") -> LayoutRules:
    module = parse_module(text)
    PassManager(parse_pipeline(f"auto-layout{{report=false{options}}}")).run(module)
    return module.layout_of(module.functions["loss"])


def dims_of(text: str) -> list[str]:
    module = parse_module(text)
    names: dict[str, None] = {}
    for function in module.functions.values():
        for value in function.values():
            names.update(dict.fromkeys(value.type.names))
    return list(names)


@pytest.mark.parametrize("example", ["mlp.mir", "digits_mlp.mir"])
def test_the_search_is_at_least_as_good_as_every_one_dimension_per_axis_layout(example):
    """Exhaustive over each axis splitting one dimension or none; the search may
    also give an axis several dimensions, so it can only do better."""
    text = train_step(example, mesh="rows:2,cols:2")
    costs = [c for c in (measured(text, rules) for rules in every_layout(["rows", "cols"], dims_of(text))) if c]
    best_seconds = min(seconds for seconds, _ in costs)
    seconds, _ = measured(text, chosen(text))
    assert seconds <= best_seconds * (1 + 1e-9)


def test_an_axis_may_split_several_dimensions():
    """With a budget that replicated weights exceed, the transformer's train step
    needs cols on the batch and on the weights' `hidden` as well (a value holding
    both keeps cols on `batch`, its first)."""
    text = train_step("transformer_lm.mir")
    rules = chosen(text, ",memory=3200000").as_dict()
    assert sum(1 for axes in rules.values() if "cols" in axes) >= 2
    assert measured(text, LayoutRules(tuple(rules.items())))[1] <= 3200000


def test_a_memory_budget_rules_out_the_layouts_over_it():
    text = train_step("mlp.mir")
    free = chosen(text)
    _, free_peak = measured(text, free)
    budget = free_peak - 1
    limited = chosen(text, f",memory={budget}")
    seconds, peak = measured(text, limited)
    assert limited != free and peak <= budget
    assert seconds >= measured(text, free)[0]


def test_expensive_communication_gives_a_layout_that_sends_nothing_and_cheap_communication_splits_the_work():
    text = train_step("mlp.mir")
    silent = chosen(text, ",bytes-per-second=1e-3,latency=1.0")
    module = parse_module(text)
    module.functions["loss"].attributes["layout"] = silent
    PassManager(parse_pipeline("layout,spmd")).run(module)
    assert not estimate_function(module, module.functions["loss"]).communication.count_per_kind
    # With free communication the cost is FLOPs alone: the choice does the least work per device.
    busy = chosen(text, ",bytes-per-second=1e30,latency=0")
    layouts = [rules for rules in every_layout(["rows", "cols"], dims_of(text)) if measured(text, rules)]
    least = min(measured(text, rules, bytes_per_second=1e30, latency=0)[0] for rules in layouts)
    assert measured(text, busy, bytes_per_second=1e30, latency=0)[0] <= least * (1 + 1e-9)


def test_the_pass_reports_its_choice_and_the_best_candidates(capsys):
    module = parse_module(train_step("mlp.mir"))
    PassManager(parse_pipeline("auto-layout")).run(module)
    err = capsys.readouterr().err
    chosen_line = next(line for line in err.splitlines() if line.startswith("chosen: "))
    rules = module.layout_of(module.functions["loss"])
    assert chosen_line == "chosen: {" + ", ".join(f"{d}: {a[0] if len(a) == 1 else '(' + ', '.join(a) + ')'}"
                                                  for d, a in rules.rules) + "}"
    assert "layouts measured" in err and "peak/device" in err


def test_a_budget_nothing_fits_is_a_diagnostic_naming_the_smallest_peak(capsys):
    assert opt.main([str(EXAMPLES / "mlp.mir"), "--passes=auto-layout{memory=1000}"]) == 2
    err = capsys.readouterr().err
    assert "mlp.mir:" in err and "fits in memory = 1000 bytes per device; the smallest peak found is" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("options,message", [
    ("flops-per-second=0", "flops-per-second must be positive"),
    ("sweeps=0", "sweeps at least 1"),
    ("colour=red", "colour"),
])
def test_bad_options_are_diagnostics(options, message, capsys):
    assert opt.main([str(EXAMPLES / "mlp.mir"), f"--passes=auto-layout{{{options}}}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_layout_auto_puts_the_pass_in_the_standard_pipeline(capsys):
    assert meshc.main([str(EXAMPLES / "mlp.mir"), "--layout", "auto", "--print-pipeline"]) == 0
    assert capsys.readouterr().out.strip() == "auto-layout,layout,spmd,cse,dce"


def test_layout_auto_with_passes_that_do_not_run_it_is_a_flag_error(capsys):
    assert opt.main([str(EXAMPLES / "mlp.mir"), "--layout", "auto", "--passes=layout,spmd"]) == 2
    assert "--layout auto: --passes must run auto-layout" in capsys.readouterr().err


def test_meshir_run_trains_with_layout_auto(digits, capsys):
    argv = [str(EXAMPLES / "digits_mlp.mir"), "--train", "--data", digits, "--backend", "xla", "--devices", "8",
            "--layout", "auto", "--steps", "20", "--lr", "0.01"]
    assert run.main(argv) == 0
    captured = capsys.readouterr()
    assert "===- auto-layout of mesh @m <rows=2, cols=4> -===" in captured.err
    assert '"step": 20' in captured.out
