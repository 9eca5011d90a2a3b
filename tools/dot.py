"""meshir-dot: draw a `.mir` module with Graphviz.

Ops are boxes labelled with their results and types, arguments ellipses, state
ops cylinders, collectives orange hexagons with their mesh axes and the bytes
each device sends; each function is a cluster. `--after PASS` draws the module
after that pass of the pipeline (`--after spmd`: the local program, every value
with its per-device type and layout). `--collapse` draws the first of a model's
repeated layers and folds the others into one node. `--mesh-view VALUE` draws
the device mesh instead, as a grid of the slice of VALUE that each device holds.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

from meshir.diagnostics import FlagError
from meshir.ir import Function, Module, Operation, Value
from meshir.mesh import LayoutRules, Mesh, ValueLayout
from meshir.types import Dim

from .common import EXIT_OK, atomic_write, check_auto_layout, load_module, run_main

FORMATS = (".svg", ".png", ".dot")
DEFAULT_PIPELINE = "layout,spmd"
STATE_OPS = frozenset({"read", "assign", "assign_add"})
PARTIAL_SUM_READERS = frozenset({"all_reduce", "reduce_scatter"})
# A layer is the variables named `<letters><number>.<rest>` (`@l0.wq`, `@block12.w1`)
# and the values whose names hold that token (`%l0_xn`, `%d_l0_xn`, `%grad_l0.wq`).
LAYER_VARIABLE = re.compile(r"^([A-Za-z_]*[A-Za-z])(\d+)\.")
STYLE = {
    "argument": {"shape": "ellipse", "style": "filled", "fillcolor": "#dbe9f6"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffffff"},
    "state": {"shape": "cylinder", "style": "filled", "fillcolor": "#fff1c9"},
    "collective": {"shape": "hexagon", "style": "filled,bold", "fillcolor": "#f4a261", "color": "#b5541b"},
    "return": {"shape": "box", "style": "bold"},
    "folded": {"shape": "box3d", "style": "filled", "fillcolor": "#e3e3e3"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshir-dot", description="Draw a .mir module (or its device mesh) with Graphviz.")
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("-o", "--output", required=True, help="OUT.svg, OUT.png (both need Graphviz's dot) or OUT.dot")
    parser.add_argument("--passes", help=f"pass pipeline to run first (default with --after: '{DEFAULT_PIPELINE}')")
    parser.add_argument("--after", metavar="PASS", help="draw the module after this pass of the pipeline, e.g. spmd")
    parser.add_argument("--entry", help="draw only this function, e.g. @loss (default: every function)")
    parser.add_argument("--mesh", help="override the mesh: 'rows:2,cols:4' or 'rows:2;cols:4'")
    parser.add_argument("--layout", help="override the layout: 'batch:rows,hidden:cols', 'seq:(rows,cols)', or 'auto' "
                                         "(with the auto-layout pass in --passes)")
    parser.add_argument("--collapse", action="store_true", help="draw the first of each run of repeated layers, fold the rest")
    parser.add_argument("--mesh-view", metavar="VALUE", help="draw the device mesh: which slice of VALUE each device holds")
    return parser


# --- running the pipeline ----------------------------------------------------


def pipeline_until(passes: str | None, after: str | None) -> str:
    """The pipeline text to run: `passes` (default: none, or the default pipeline
    with --after) up to and including the first pass named `after`."""
    text = passes if passes is not None else (DEFAULT_PIPELINE if after else "")
    if after is None:
        return text
    from meshir.passes.pipeline import parse_pipeline, split_top_level

    names = [p.name for p in parse_pipeline(text)]
    if after not in names:
        raise FlagError(f"--after: pass '{after}' is not in the pipeline '{text}' (give the pipeline with --passes)")
    pieces = [piece.strip() for _, piece in split_top_level(text, ",") if piece.strip()]
    return ",".join(pieces[:names.index(after) + 1])


def global_sizes(module: Module) -> dict[str, set[int]]:
    """Every whole size each dimension name has in the module: from its variables,
    its global functions' values and its local functions' arguments."""
    sizes: dict[str, set[int]] = {}

    def add(dims) -> None:
        for dim in dims:
            sizes.setdefault(dim.name, set()).add(dim.size)

    for variable in module.variables.values():
        add(variable.type.dims)
    for function in module.functions.values():
        mesh, rules = module.mesh_of(function), module.layout_of(function) or LayoutRules(())
        if not function.is_local:
            for value in function.values():
                add(value.type.dims)
        elif mesh is not None:
            for arg in function.args:
                layout = rules.layout_of(arg.type)
                add(Dim(d.name, d.size * layout.split_count(mesh, i)) for i, d in enumerate(arg.type.dims))
    return sizes


# --- layouts of local values -------------------------------------------------


@dataclass(frozen=True)
class LocalLayout:
    """How a local value relates to its global value: the axes splitting each
    dimension, and the axes over which it is still a partial sum."""

    layout: ValueLayout
    partial: tuple[str, ...] = ()

    def describe(self, names: tuple[str, ...]) -> str:
        split = ", ".join(f"{n}: {axes[0] if len(axes) == 1 else '(' + ', '.join(axes) + ')'}"
                          for n, axes in zip(names, self.layout.axes) if axes)
        parts = [f"layout {{{split}}}"] if split else []
        parts += [f"partial sum over [{', '.join(self.partial)}]"] if self.partial else []
        return ", ".join(parts) or "replicated"


def _axes_for_factor(candidates: tuple[str, ...], mesh: Mesh, factor: int, used: set[str]) -> tuple[str, ...] | None:
    """Mesh axes, preferring the layout rule's, whose sizes multiply to `factor`."""
    if factor == 1:
        return ()
    ordered = [a for a in candidates if a not in used] + [a for a in mesh.axis_names if a not in used and a not in candidates]
    chosen, product = [], 1
    for axis in ordered:
        size = mesh.axis_size(axis)
        if size > 1 and factor % (product * size) == 0:
            chosen.append(axis)
            product *= size
        if product == factor:
            return tuple(chosen)
    return None


def local_layout(value: Value, rules: LayoutRules, mesh: Mesh, sizes: dict[str, set[int]],
                 users: dict[Value, list[Operation]]) -> LocalLayout:
    """The layout a local value's per-device sizes imply: each dimension is split
    by the axes (the layout rule's first) whose sizes divide its whole size into
    the local one. A value that a sum-collective reads is a partial sum over its axes."""
    per_dim, used = [], set()
    for dim in value.type.dims:
        axes: tuple[str, ...] = ()
        for whole in sorted(sizes.get(dim.name, {dim.size}), key=lambda s: s != dim.size):
            if dim.size and whole % dim.size == 0:
                found = _axes_for_factor(rules.axes_for(dim.name), mesh, whole // dim.size, used)
                if found is not None:
                    axes = found
                    break
        used.update(axes)
        per_dim.append(axes)
    partial: tuple[str, ...] = ()
    for user in users.get(value, []):
        if user.name in PARTIAL_SUM_READERS and user.attr("reduce") == "sum":
            partial = tuple(user.attr("axes"))
    return LocalLayout(ValueLayout(tuple(per_dim)), partial)


# --- layers ------------------------------------------------------------------


def layers_of(module: Module, function: Function) -> dict[Operation, tuple[str, int]]:
    """Each op in a repeated layer -> (layer family, layer number): by its variable
    (state ops), by a layer token in a result's name, or, for an op whose results
    are unnamed, by its first operand's layer. Families of one layer do not count."""
    numbers: dict[str, set[int]] = {}
    for name in module.variables:
        match = LAYER_VARIABLE.match(name)
        if match:
            numbers.setdefault(match.group(1), set()).add(int(match.group(2)))
    families = [f for f, found in numbers.items() if len(found) > 1]
    if not families:
        return {}
    token = re.compile(r"(?:^|[_.])(" + "|".join(map(re.escape, families)) + r")(\d+)(?=[_.]|$)")
    layer: dict[Operation, tuple[str, int]] = {}
    value_layer: dict[Value, tuple[str, int]] = {}
    for op in function.ops:
        names = [op.attr("var").name] if op.name in STATE_OPS else [r.name for r in op.results if r.name]
        match = next((m for m in (token.search(n) for n in names) if m), None)
        if match:
            found = (match.group(1), int(match.group(2)))
        else:  # a named op outside every layer stays outside; an unnamed one joins its operand's
            found = None if names else next((value_layer[v] for v in op.operands if v in value_layer), None)
        if found is not None:
            layer[op] = found
            value_layer.update({r: found for r in op.results})
    return layer


# --- drawing a module --------------------------------------------------------


@dataclass
class FunctionDrawing:
    """The nodes and edges of one function, before they go into a cluster."""

    prefix: str
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    node_layer: dict[str, tuple[str, int]] = field(default_factory=dict)


def _value_lines(value: Value, describe) -> list[str]:
    lines = [f"%{value.name}: {value.type}" if value.name else str(value.type)]
    detail = describe(value)
    return lines + [detail] if detail else lines


def _op_label(op: Operation, describe, mesh: Mesh | None) -> tuple[str, str]:
    """The style kind and label of an op's node."""
    from meshir.passes.base import COLLECTIVE_BYTES, collective_axes
    from meshir.passes.estimate import collective_bytes_per_axis, format_bytes

    head = op.name
    if op.name in STATE_OPS:
        head = f"{op.name} @{op.attr('var').name}"
    lines = [head] + [line for r in op.results for line in _value_lines(r, describe)]
    if op.name in COLLECTIVE_BYTES and op.name != "all_slice" and mesh is not None:
        how = f" ({op.attributes['reduce']})" if "reduce" in op.attributes else ""
        sent = sum(collective_bytes_per_axis(op, mesh).values())
        lines[0] = f"{op.name}{how} over [{', '.join(collective_axes(op))}]"
        lines.append(f"sends {format_bytes(round(sent))} per device")
        return "collective", "\n".join(lines)
    return ("state" if op.name in STATE_OPS else "op"), "\n".join(lines)


def draw_function(module: Module, function: Function, prefix: str, sizes: dict[str, set[int]]) -> FunctionDrawing:
    mesh = module.mesh_of(function)
    drawing = FunctionDrawing(prefix)
    users = function.users()
    if function.is_local and mesh is not None:
        rules = module.layout_of(function) or LayoutRules(())
        describe = lambda v: local_layout(v, rules, mesh, sizes, users).describe(v.type.names)  # noqa: E731
    else:
        describe = lambda v: ""  # noqa: E731  (global values: the type says it all)
    source: dict[Value, str] = {}
    for index, arg in enumerate(function.args):
        node = f"{prefix}_arg{index}"
        drawing.nodes[node] = {**STYLE["argument"], "label": "\n".join(_value_lines(arg, describe))}
        source[arg] = node
    layers = layers_of(module, function)
    for index, op in enumerate(function.ops):
        node = f"{prefix}_op{index}"
        kind, label = _op_label(op, describe, mesh)
        drawing.nodes[node] = {**STYLE[kind], "label": label}
        if op in layers:
            drawing.node_layer[node] = layers[op]
        drawing.edges += [(source[v], node) for v in op.operands if v in source]
        source.update({r: node for r in op.results})
    if function.returns:
        node = f"{prefix}_return"
        drawing.nodes[node] = {**STYLE["return"], "label": "return"}
        drawing.edges += [(source[v], node) for v in function.returns if v in source]
    return drawing


def _function_title(module: Module, function: Function) -> str:
    mesh = module.mesh_of(function)
    if function.is_local and mesh is not None:
        return f"func @{function.name}: local program, per device of @{mesh.name} {mesh}"
    where = f" on @{mesh.name} {mesh}" if mesh is not None else ""
    return f"func @{function.name}: global program{where}"


@dataclass
class Folding:
    """What --collapse does to one function's drawing: the first layer of each
    family is drawn in a cluster of its own, every later layer as one node."""

    drawn_as: dict[str, str] = field(default_factory=dict)  # folded node -> the node that stands for it
    first_layer: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # family -> number, nodes
    folded_nodes: dict[str, dict[str, str]] = field(default_factory=dict)


def fold_layers(drawing: FunctionDrawing) -> Folding:
    numbers: dict[str, list[int]] = {}
    for family, number in sorted(set(drawing.node_layer.values())):
        numbers.setdefault(family, []).append(number)
    folding = Folding()
    for node, (family, number) in drawing.node_layer.items():
        first, *rest = numbers[family]
        if number == first:
            folding.first_layer.setdefault(family, (first, []))[1].append(node)
            continue
        folded = f"{drawing.prefix}_folded_{family}"
        folding.drawn_as[node] = folded
        ops = sum(1 for f, n in drawing.node_layer.values() if f == family and n != first)
        span = f"{family}{rest[0]}" + (f" ... {family}{rest[-1]}" if len(rest) > 1 else "")
        more = f"{len(rest)} more layer{'s' if len(rest) > 1 else ''} like {family}{first}"
        folding.folded_nodes[folded] = {**STYLE["folded"], "label": f"{span}\n{more}\n({ops} ops folded)"}
    return folding


def draw_module(module: Module, functions: list[Function], collapse: bool, sizes: dict[str, set[int]]):
    import pydot

    graph = pydot.Dot("meshir", graph_type="digraph", rankdir="TB", fontname="Helvetica", compound="true")
    graph.set_node_defaults(fontname="Helvetica", fontsize="10")
    for findex, function in enumerate(functions):
        drawing = draw_function(module, function, f"f{findex}", sizes)
        cluster = pydot.Cluster(f"f{findex}", label=_function_title(module, function), fontsize="12", style="rounded")
        folding = fold_layers(drawing) if collapse else Folding()
        home = {node: cluster for node in drawing.nodes}
        for family, (number, nodes) in folding.first_layer.items():
            layer = pydot.Cluster(f"f{findex}_layer_{family}", style="dashed", label=f"layer {family}{number}")
            home.update({node: layer for node in nodes})
            cluster.add_subgraph(layer)
        for node, attributes in {**drawing.nodes, **folding.folded_nodes}.items():
            if node not in folding.drawn_as:
                home.get(node, cluster).add_node(pydot.Node(node, **attributes))
        graph.add_subgraph(cluster)
        seen = set()
        for tail, head in drawing.edges:
            edge = (folding.drawn_as.get(tail, tail), folding.drawn_as.get(head, head))
            if edge[0] != edge[1] and edge not in seen:
                seen.add(edge)
                graph.add_edge(pydot.Edge(*edge))
    return graph


# --- the mesh view -----------------------------------------------------------


def _find_value(module: Module, functions: list[Function], name: str) -> tuple[Function, Value]:
    wanted = name.lstrip("%")
    for function in functions:
        for value in function.values():
            if value.name == wanted:
                return function, value
    known = sorted({v.name for f in functions for v in f.values() if v.name})
    shown = ", ".join("%" + n for n in known[:12]) + (", ..." if len(known) > 12 else "")
    raise FlagError(f"--mesh-view: no value %{wanted} in the drawn functions (values: {shown or 'none'})")


def draw_mesh_view(module: Module, functions: list[Function], name: str, sizes: dict[str, set[int]]):
    """The mesh as a grid (first axis down, the others across): each cell is one
    device, with the slice of the value it holds along every dimension."""
    import pydot

    function, value = _find_value(module, functions, name)
    mesh = module.mesh_of(function)
    if mesh is None:
        raise FlagError(f"--mesh-view: func @{function.name} has no mesh (give one with --mesh)")
    rules = module.layout_of(function) or LayoutRules(())
    if function.is_local:
        placement = local_layout(value, rules, mesh, sizes, function.users())
        whole = [d.size * placement.layout.split_count(mesh, i) for i, d in enumerate(value.type.dims)]
    else:
        from meshir.passes.layout import value_layouts

        placement = LocalLayout(value_layouts(module, function)[value])
        whole = list(value.type.shape)
    layout, names = placement.layout, value.type.names
    global_text = f"{value.type.dtype}[{', '.join(f'{n}={s}' for n, s in zip(names, whole))}]"
    columns = mesh.size // mesh.shape[0]
    rows = []
    for row in range(mesh.shape[0]):
        cells = []
        for device in range(row * columns, (row + 1) * columns):
            coords = " ".join(f"{a}={i}" for a, i in mesh.coords(device).items())
            lines = [f"<B>device {device}</B>", html.escape(coords)]
            for index, (dim, size) in enumerate(zip(names, whole)):
                axes = layout.axes[index]
                block = size // layout.split_count(mesh, index)
                start = mesh.index_in_group(device, axes) * block if axes else 0
                lines.append(html.escape(f"{dim}[{start}:{start + block}]"))
            if placement.partial:
                lines.append("partial sum")
            cells.append(f"<TD>{'<BR/>'.join(lines)}</TD>")
        rows.append(f"<TR>{''.join(cells)}</TR>")
    title = html.escape(f"%{value.name}: {global_text} on @{mesh.name} {mesh}, {placement.describe(names)}")
    table = (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="6">'
             f'<TR><TD COLSPAN="{columns}" BGCOLOR="#dbe9f6">{title}</TD></TR>{"".join(rows)}</TABLE>>')
    graph = pydot.Dot("mesh", graph_type="digraph")
    graph.add_node(pydot.Node("mesh", shape="plaintext", fontname="Helvetica", fontsize="10", label=table))
    return graph


# --- output ------------------------------------------------------------------


def render(graph, suffix: str) -> str | bytes:
    if suffix == ".dot":
        return graph.to_string()
    if shutil.which("dot") is None:
        raise FlagError(f"-o: writing {suffix} needs Graphviz's `dot` program, which is not on PATH "
                        "(Debian: apt-get install graphviz); -o OUT.dot works without it")
    return graph.create(prog="dot", format=suffix[1:])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from meshir.passes.pipeline import PassManager, parse_pipeline

        suffix = os.path.splitext(args.output)[1]
        if suffix not in FORMATS:
            raise FlagError(f"-o: unknown output kind '{suffix or args.output}' (expected {', '.join(FORMATS)})")
        module = load_module(args.input, args.mesh, args.layout)
        functions = [module.function(args.entry)] if args.entry else list(module.functions.values())
        sizes = global_sizes(module)
        pipeline = pipeline_until(args.passes, args.after)
        check_auto_layout(args.layout, pipeline)
        PassManager(parse_pipeline(pipeline)).run(module)
        functions = [module.functions[f.name] for f in functions]
        if args.mesh_view:
            graph = draw_mesh_view(module, functions, args.mesh_view, sizes)
        else:
            graph = draw_module(module, functions, args.collapse, sizes)
        atomic_write(args.output, render(graph, suffix))
        return EXIT_OK

    return run_main("meshir-dot", body)


if __name__ == "__main__":
    sys.exit(main())
