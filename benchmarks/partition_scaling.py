"""How the `spmd` pass's time grows with the mesh (no execution).

    python benchmarks/partition_scaling.py

Partitions a ~1k-op model (a stack of transformer-style layers) for meshes of
8, 64, 512 and 4096 devices under the same layout rules, and prints the time
of `layout,spmd` for each and its ratio to the 8-device time. Partitioning
works on named axes, never on device lists, so the ratio should stay near 1.
"""
from __future__ import annotations

import statistics
import time

from meshir.frontends.text import parse_module
from meshir.passes.pipeline import PassManager, parse_pipeline

MESHES = {8: (2, 4), 64: (8, 8), 512: (16, 32), 4096: (64, 64)}


def model_text(layers: int, rows: int, cols: int) -> str:
    lines = [f"mesh @m = <rows={rows}, cols={cols}>", ""]
    for i in range(layers):
        lines.append(f"var @w{i}_in : f32[model=1024, hidden=4096] = zeros")
        lines.append(f"var @w{i}_out : f32[hidden=4096, model=1024] = zeros")
    lines.append("")
    lines.append("func @stack(%x: f32[batch=4096, seq=128, model=1024]) -> f32[]")
    lines.append("    attributes {mesh = @m, layout = {batch: rows, hidden: cols}} {")
    current = "%x"
    for i in range(layers):
        lines += [
            f"  %win{i} = read @w{i}_in",
            f"  %up{i} = einsum({current}, %win{i}) {{output = [batch, seq, hidden]}}",
            f"  %act{i} = gelu(%up{i})",
            f"  %wout{i} = read @w{i}_out",
            f"  %down{i} = einsum(%act{i}, %wout{i}) {{output = [batch, seq, model]}}",
            f"  %res{i} = add({current}, %down{i})",
            f"  %mean{i} = reduce_mean(%res{i}) {{dims = [model]}}",
            f"  %cent{i} = sub(%res{i}, %mean{i})",
            f"  %sq{i} = square(%cent{i})",
            f"  %var{i} = reduce_mean(%sq{i}) {{dims = [model]}}",
            f"  %inv{i} = rsqrt(%var{i})",
            f"  %y{i} = mul(%cent{i}, %inv{i})",
        ]
        current = f"%y{i}"
    lines += [f"  %loss = reduce_mean({current}) {{dims = [batch, seq, model]}}", "  return %loss", "}", ""]
    return "\n".join(lines)


def time_partition(text: str, repeats: int = 5) -> float:
    times = []
    pipeline = parse_pipeline("layout,spmd")
    for _ in range(repeats):
        module = parse_module(text)
        start = time.perf_counter()
        PassManager(pipeline).run(module)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    layers = 84  # 12 ops a layer: ~1k ops
    base = None
    for devices, (rows, cols) in MESHES.items():
        seconds = time_partition(model_text(layers, rows, cols))
        base = base or seconds
        print(f"{devices:5d} devices ({rows}x{cols}): {layers * 12 + 1} ops partitioned in {seconds * 1000:7.1f} ms  ratio {seconds / base:.2f}")


if __name__ == "__main__":
    main()
