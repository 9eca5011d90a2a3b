"""`autostack`: combine variables of one type and update rule into one stacked variable.

    autostack                       stacks of at most 64 MiB
    autostack{max-bytes=1048576}    stacks of at most 1 MiB

Variables of equal type (dtype, dimension names and sizes, so equal layouts),
equal attributes (trainable, slice and activation dtypes) and read by the same
functions become one variable `@stackN : T[stackN=K, ...]`, whose new leading
dimension (named like the variable) has one element per member. In each
function the reads of a stack's members become one `read @stackN` and one
`unstack {dim = stackN}` at the first of them, and each old read's uses take
the matching result.

Run it before `autodiff` and `optimizer`
(`autostack,autodiff{func=loss},optimizer{kind=adam},layout,spmd`): the
gradient of `unstack` is a `stack` of the members' cotangents, so autodiff
returns one gradient per stack and the optimizer updates each stack once, with
one set of slots (`@stackN.m`, `@stackN.v`), in far fewer ops than one update
per member. One optimizer updates every trainable variable by the same rule,
so the results are those of the unstacked module up to float reassociation;
the exception is `adafactor`, which factors the second moments of a stack of
rank-1 variables where it keeps each member's whole. Reading by the same
functions matters too: a variable no train step reads must not be updated
along with one it reads. After the pass, `autodiff{wrt=...}` names stacks,
not members.

A group is cut greedily, in declaration order, into stacks of at most
`max-bytes` stored bytes; a group of one, or a variable larger than half of
`max-bytes`, keeps its own declaration, as do the variables of `_KEEP_ALONE`
(written ones, such as counters, among them).

The stack's initializer, `stack(parts=[[normal, seed, 1, stddev, 0.05], ...])`,
keeps each member's initializer and arguments, so the stack starts from its
members' values bit for bit on every backend; its attribute
`stacks = [@a, @b, ...]` names them. Checkpoints (tools/checkpoint.py, through
`checkpoint_entries`) hold a stack and its optimizer slots as the members' and
their slots' entries, so a checkpoint is the same whether or not the pass ran.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, ClassVar, Hashable, Iterator

from meshir.attributes import Name, SymbolRef
from meshir.diagnostics import MeshirError
from meshir.initializers import STACK
from meshir.ir import Function, Module, Operation, Value, Variable, unused_name
from meshir.types import Dim

from .base import Pass, register_pass

STACKS = "stacks"  # the variable attribute naming a stack's members


def _variable_ops(module: Module) -> Iterator[tuple[Function, Operation, str]]:
    """Every op that names a variable (read, assign, assign_add), with its function and the variable."""
    for function in module.functions.values():
        for op in function.ops:
            symbol = op.opdef.symbol_operand
            if symbol is not None:
                yield function, op, op.attributes[symbol].name


def _named_in_attributes(module: Module) -> set[str]:
    def symbols(value: object) -> Iterator[str]:
        if isinstance(value, SymbolRef):
            yield value.name
        elif isinstance(value, tuple):
            for item in value:
                yield from symbols(item)

    return {name for f in module.functions.values() for value in f.attributes.values() for name in symbols(value)}


# Why a variable keeps its own declaration: each rule gives the variables it keeps alone.
_KEEP_ALONE: dict[str, Callable[[Module], set[str]]] = {
    # A write would have to update one slice of the stack; written state (counters,
    # loss scales) is small and rare, and keeping it alone keeps every write as it was.
    "written": lambda m: {name for _, op, name in _variable_ops(m) if op.opdef.side_effects},
    # A local program reads a variable's slices in its own storage layout.
    "used by a local function": lambda m: {name for f, _, name in _variable_ops(m) if f.is_local},
    # `gradients` (autodiff) and `loss_scale` (mixed-precision) name the variable itself.
    "named by a function attribute": _named_in_attributes,
    # Its checkpoint entries are already its members': a stack is not stacked again.
    "already a stack": lambda m: {name for name, v in m.variables.items() if STACKS in v.attributes},
}


def _stacking_key(variable: Variable, readers: frozenset[str]) -> Hashable:
    """Equal for variables that may share a stack: the optimizer updates both the same
    way only if they have the same type and precisions, are both trainable or both
    not, and are read by the same functions (so a train step reads both or neither)."""
    return (variable.type, variable.trainable, variable.slice_type.dtype, variable.activation_type.dtype, readers)


def _groups(module: Module) -> list[list[Variable]]:
    """The variables that may share a stack, each group in declaration order; groups of two or more."""
    alone = set().union(*(rule(module) for rule in _KEEP_ALONE.values()))
    readers: dict[str, set[str]] = {}
    for function, op, name in _variable_ops(module):
        readers.setdefault(name, set()).add(function.name)
    groups: dict[Hashable, list[Variable]] = {}
    for name, variable in module.variables.items():
        if name not in alone:
            groups.setdefault(_stacking_key(variable, frozenset(readers.get(name, ()))), []).append(variable)
    return [group for group in groups.values() if len(group) > 1]


def _cut(group: list[Variable], max_bytes: int) -> list[list[Variable]]:
    """Consecutive stacks of at most `max_bytes` (the members' stored bytes), each of two or more."""
    per_stack = max_bytes // max(group[0].slice_type.nbytes, 1)
    if per_stack < 2:
        return []
    stacks = [group[start:start + per_stack] for start in range(0, len(group), per_stack)]
    return [stack for stack in stacks if len(stack) > 1]


def _taken_names(module: Module) -> set[str]:
    """Names a new stack may not take: variable names and every dimension name in use."""
    taken = set(module.variables)
    for variable in module.variables.values():
        taken.update(variable.type.names)
    for rules in module.layouts.values():
        taken.update(rules.as_dict())
    for function in module.functions.values():
        for value in function.values():
            taken.update(value.type.names)
        inline = function.attributes.get("layout")
        if not isinstance(inline, SymbolRef) and inline is not None:
            taken.update(inline.as_dict())
    return taken


def _fresh_names(module: Module) -> Iterator[str]:
    """`stack0`, `stack1`, ...: free as a variable name, as a prefix of one (so slots
    `@stackN.m` belong to it alone) and as a dimension name."""
    taken = _taken_names(module)
    prefixes = {name.split(".")[0] for name in module.variables}
    index = 0
    while True:
        name = f"stack{index}"
        if name not in taken and name not in prefixes:
            yield name
        index += 1


def _part(variable: Variable) -> tuple:
    """A member's initializer as a `stack` part: `[initializer, argument, value, ...]`."""
    args = variable.init_args
    return (Name(variable.initializer), *(item for key in sorted(args) for item in (Name(key), args[key])))


def _stacked_variable(name: str, members: list[Variable]) -> Variable:
    """The variable `name` holding `members` along a new leading dimension `name`."""
    first = members[0]
    ttype = first.type.with_dims((Dim(name, len(members)), *first.type.dims))
    attributes = {**first.attributes, STACKS: tuple(SymbolRef(m.name) for m in members)}
    return Variable(name, ttype, STACK, {"parts": tuple(_part(m) for m in members)}, attributes, first.loc)


def _fresh_value_name(taken: set[str], base: str) -> str:
    """`base`, or `base_1`, `base_2`, ...: the first not in `taken`, which it joins."""
    name = unused_name(base, taken)
    taken.add(name)
    return name


def _read_and_unstack(stack: Variable, member_read: Operation, taken: set[str]) -> tuple[Operation, Operation]:
    """A read of `stack` in the dtype `member_read` reads its member in, and its unstack."""
    member_type, dtype = member_read.result.type, member_read.attributes.get("dtype")
    attributes = {"var": SymbolRef(stack.name), **({"dtype": dtype} if dtype is not None else {})}
    stack_dim = stack.type.dims[0]
    read = Operation("read", [], attributes, [member_type.with_dims((stack_dim, *member_type.dims))], member_read.loc,
                     [_fresh_value_name(taken, stack.name)])
    unstack = Operation("unstack", [read.result], {"dim": Name(stack_dim.name)}, [member_type] * stack_dim.size, member_read.loc)
    return read, unstack


def _declare(module: Module, stacks: list[Variable]) -> None:
    """Each stack declared where its first member was, its members no longer."""
    at_first_member = {stack.attributes[STACKS][0].name: stack for stack in stacks}
    members = {ref.name for stack in stacks for ref in stack.attributes[STACKS]}
    variables: dict[str, Variable] = {}
    for name, variable in module.variables.items():
        if name in at_first_member:
            variables[at_first_member[name].name] = at_first_member[name]
        if name not in members:
            variables[name] = variable
    module.variables = variables


def _rewrite_reads(function: Function, stacks: list[Variable]) -> None:
    """Each stack's member reads -> one read of the stack and an unstack at the first
    of them (one pair per dtype read), the old reads' uses and names moved to its results."""
    member_of = {ref.name: (stack, index) for stack in stacks for index, ref in enumerate(stack.attributes[STACKS])}
    unstacks: dict[tuple[str, object], Operation] = {}
    taken = {v.name for v in function.values()}
    replacements: dict[Value, Value] = {}
    ops: list[Operation] = []
    for op in function.ops:
        found = member_of.get(op.attributes["var"].name) if op.name == "read" else None
        if found is None:
            ops.append(op)
            continue
        stack, index = found
        key = (stack.name, op.attributes.get("dtype"))
        if key not in unstacks:
            read, unstacks[key] = _read_and_unstack(stack, op, taken)
            ops += [read, unstacks[key]]
        result = unstacks[key].results[index]
        result.name = result.name or op.result.name
        replacements[op.result] = result
    function.ops = ops
    function.replace_uses(replacements)


def checkpoint_entries(module: Module) -> dict[str, tuple[str, ...]]:
    """For each variable a checkpoint holds as several entries, one per element of its
    leading dimension: the entries' names. A stack's are its members (`stacks`); an
    optimizer slot of a stack (`@stackN.m`, leading with the stack's dimension) is
    its members' slots (`@a.m`, `@b.m`, ...). Every other variable is one entry
    under its own name."""
    stacks = {name: v for name, v in module.variables.items() if STACKS in v.attributes}
    entries: dict[str, tuple[str, ...]] = {}
    for name, variable in module.variables.items():
        for stack_name, stack in stacks.items():
            if (name == stack_name or name.startswith(stack_name + ".")) and variable.type.dims[:1] == stack.type.dims[:1]:
                entries[name] = tuple(ref.name + name[len(stack_name):] for ref in stack.attributes[STACKS])
    held = Counter(entry for name in module.variables for entry in entries.get(name, (name,)))
    twice = sorted(entry for entry, count in held.items() if count > 1)
    if twice:
        raise MeshirError(f"variable @{twice[0]} is both declared and stacked (or stacked twice); a checkpoint could not tell them apart")
    return entries


@register_pass
@dataclass(frozen=True)
class Autostack(Pass):
    name: ClassVar[str] = "autostack"
    max_bytes: int = 64 << 20  # `autostack{max-bytes=...}`: the largest stack, in stored bytes

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max-bytes must be positive, got {self.max_bytes}")

    def run(self, module: Module) -> dict[str, int]:
        before = len(module.variables)
        names = _fresh_names(module)
        stacks = [_stacked_variable(next(names), members) for group in _groups(module) for members in _cut(group, self.max_bytes)]
        _declare(module, stacks)
        for function in module.functions.values():
            _rewrite_reads(function, stacks)
        return {"variables-before": before, "variables-after": len(module.variables), "stacks": len(stacks)}
