"""The op registry is complete: every op of DESIGN section 4 is defined once with
a type rule, a reference implementation, a splittable rule and a gradient rule
(or an explicit NOT_DIFFERENTIABLE)."""
import pytest

from meshir.registry import NOT_DIFFERENTIABLE, all_ops, find

# DESIGN.md section 4, group by group: the language's op set.
DESIGN_OPS = {
    "elementwise": "neg abs exp log log1p sqrt rsqrt square sin cos tanh sigmoid relu gelu silu softplus erf sign floor ceil round reciprocal logical_not cast",
    "binary": "add sub mul div pow maximum minimum eq ne lt le gt ge logical_and logical_or select",
    "contraction": "einsum matmul",
    "reductions": "reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_any reduce_all logsumexp argmax argmin top_k softmax log_softmax cumsum",
    "shape": "rename reshape transpose broadcast slice concat split pad stack unstack shift",
    "indexing": "one_hot gather scatter_add iota",
    "nn": "conv1d conv2d max_pool avg_pool dropout random_uniform random_normal softmax_cross_entropy layer_norm",
    "state": "read assign assign_add stop_gradient",
    "constants": "constant zeros ones full",
    "mesh": "reshard transfer",
    "collectives": "all_reduce all_gather reduce_scatter all_to_all collective_permute axis_index dynamic_slice all_slice",
}
ALL_DESIGN_OPS = [(group, name) for group, names in DESIGN_OPS.items() for name in names.split()]


def rules_of(opdef) -> list[str]:
    rules = []
    for rule, present in (
        ("type", opdef.type_rule_fn is not None),
        ("reference", opdef.reference_fn is not None),
        ("splittable", opdef.splittable_fn is not None),
        ("gradient", opdef.gradient_fn not in (None, NOT_DIFFERENTIABLE)),
    ):
        if present:
            rules.append(rule)
    return rules + sorted(opdef.lowerings)


@pytest.mark.parametrize("group,name", ALL_DESIGN_OPS)
def test_design_op_is_registered_in_its_group(group, name):
    opdef = find(name)
    assert opdef is not None, f"op {name} of DESIGN section 4 is not registered"
    assert opdef.group == group


def test_registry_has_no_ops_outside_the_design():
    design = {name for _, name in ALL_DESIGN_OPS}
    assert {op.name for op in all_ops()} == design


@pytest.mark.parametrize("opdef", list(all_ops()), ids=lambda op: op.name)
def test_every_op_has_type_reference_and_splittable_rules(opdef):
    rules = rules_of(opdef)
    missing = [r for r in ("type", "reference", "splittable") if r not in rules]
    assert not missing, f"{opdef.name} lacks {missing}"
    assert opdef.doc


@pytest.mark.parametrize("opdef", list(all_ops()), ids=lambda op: op.name)
def test_every_op_has_a_gradient_rule_or_says_it_has_none(opdef):
    rule = opdef.gradient_fn
    assert rule is NOT_DIFFERENTIABLE or callable(rule), (
        f"{opdef.name} needs `{opdef.name}.gradient(fn)` or `{opdef.name}.gradient(NOT_DIFFERENTIABLE)`"
    )


def test_rule_table(capsys):
    """Print which rules each op has (run with -s to read it)."""
    table = {op.name: rules_of(op) for op in all_ops()}
    for name, rules in sorted(table.items()):
        print(f"{name:24} {' '.join(rules)}")
    assert all("type" in r and "reference" in r for r in table.values())


def test_generated_op_reference_is_current():
    from pathlib import Path

    from meshir.tools.opdocs import render

    docs = Path(__file__).resolve().parent.parent / "docs" / "ops.md"
    assert docs.read_text() == render(), "docs/ops.md is stale: python -m meshir.tools.opdocs > docs/ops.md"
