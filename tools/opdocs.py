"""Write the op reference (docs/ops.md) from the registry, so it cannot drift.

    python -m meshir.tools.opdocs > docs/ops.md
"""
from __future__ import annotations

import sys

from meshir.attributes import REQUIRED
from meshir.registry import all_ops


def _operands(opdef) -> str:
    lo, hi = opdef.min_operands, opdef.max_operands
    if hi is None:
        return f"{lo} or more"
    return str(lo) if lo == hi else f"{lo} to {hi}"


def _attributes(opdef) -> str:
    parts = []
    for name, spec in opdef.attrs.items():
        default = "" if spec.default is REQUIRED else f" = {_default_text(spec.default)}"
        parts.append(f"`{name}`{default}")
    return ", ".join(parts) or "none"


def _default_text(value) -> str:
    from meshir.printer import format_attribute

    return format_attribute(value) if value is not None else "none"


def render() -> str:
    lines = ["# Op reference", "", "Generated from the op registry by `python -m meshir.tools.opdocs`; do not edit.", ""]
    groups: dict[str, list] = {}
    for opdef in all_ops():
        groups.setdefault(opdef.group, []).append(opdef)
    for group, ops in groups.items():
        lines += [f"## {group}", "", "| op | operands | attributes | meaning |", "|---|---|---|---|"]
        for opdef in ops:
            symbol = f" (`{opdef.name} @{opdef.symbol_operand}, ...`)" if opdef.symbol_operand else ""
            doc = opdef.doc.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{opdef.name}`{symbol} | {_operands(opdef)} | {_attributes(opdef)} | {doc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
