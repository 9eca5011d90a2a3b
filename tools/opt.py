"""meshir-opt: parse, verify, run a pass pipeline and print `.mir`."""
from __future__ import annotations

import argparse
import io
import re
import sys
from dataclasses import dataclass

from meshir.diagnostics import MeshirError, Source

from .common import EXIT_OK, EXIT_RUNTIME, apply_overrides, atomic_write, check_auto_layout, read_input, run_main

SPLIT_MARKER = re.compile(r"^// -----\s*$", re.MULTILINE)
EXPECTATION = re.compile(r"//\s*expected-error(?:@([+-]\d+))?\s*\{\{(.*?)\}\}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshir-opt",
        description="Parse and verify a .mir module, run passes over it, and print the result.",
    )
    parser.add_argument("input", help="the .mir file ('-' for standard input)")
    parser.add_argument("-o", "--output", help="write the result here (atomically) instead of standard output")
    parser.add_argument("--passes", default="", help="pass pipeline, e.g. 'canonicalize,cse,dce'")
    parser.add_argument("--mesh", help="override the mesh: 'rows:2,cols:4' or 'rows:2;cols:4'")
    parser.add_argument("--layout", help="override the layout: 'batch:rows,hidden:cols', 'seq:(rows,cols)', or 'auto' "
                                         "(with the auto-layout pass in --passes)")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the module after every pass (stderr)")
    parser.add_argument("--print-ir-after", action="append", default=[], metavar="PASS", help="print the module after PASS (stderr)")
    parser.add_argument("--time-passes", action="store_true", help="report the time of each pass (stderr)")
    parser.add_argument("--pass-statistics", action="store_true", help="report ops, collectives and bytes per pass (stderr)")
    parser.add_argument("--split-input-file", action="store_true", help="treat '// -----' lines as separators of independent modules")
    parser.add_argument("--verify-diagnostics", action="store_true", help="check errors against '// expected-error@+N {{...}}' comments")
    return parser


@dataclass
class Chunk:
    text: str
    line_offset: int


def split_chunks(text: str, split: bool) -> list[Chunk]:
    if not split:
        return [Chunk(text, 0)]
    chunks, start = [], 0
    for match in SPLIT_MARKER.finditer(text):
        chunks.append(Chunk(text[start:match.start()], text.count("\n", 0, start)))
        start = match.end() + 1
    chunks.append(Chunk(text[start:], text.count("\n", 0, start)))
    return chunks


def process(chunk: Chunk, source: Source, args: argparse.Namespace, log: io.TextIOBase) -> str:
    from meshir.frontends.text import parse_module
    from meshir.passes.pipeline import PassManager, parse_pipeline
    from meshir.printer import print_module

    module = parse_module(chunk.text, source.name, line_offset=chunk.line_offset, source=source)
    apply_overrides(module, args.mesh, args.layout)
    check_auto_layout(args.layout, args.passes)
    manager = PassManager(
        parse_pipeline(args.passes),
        print_ir_after_all=args.print_ir_after_all,
        print_ir_after=set(args.print_ir_after),
        time_passes=args.time_passes,
        statistics=args.pass_statistics,
        out=log,
    )
    manager.run(module)
    return print_module(module)


def verify_diagnostics(chunks: list[Chunk], source: Source, args: argparse.Namespace) -> int:
    """Each chunk's `expected-error` comments must match the error it produces, by line
    and by message substring; a chunk without expectations must succeed."""
    failures = []
    for chunk in chunks:
        expected = []
        for index, line in enumerate(chunk.text.split("\n")):
            for match in EXPECTATION.finditer(line):
                target = chunk.line_offset + index + 1 + int(match.group(1) or 0)
                expected.append((target, match.group(2)))
        try:
            process(chunk, source, args, io.StringIO())
            produced = None
        except MeshirError as exc:
            produced = exc
        if produced is None:
            failures += [f"{source.name}:{line}: expected error '{text}' was not produced" for line, text in expected]
            continue
        line = produced.loc.line if produced.loc else None
        matched = [e for e in expected if e[0] == line and e[1] in produced.message]
        if not matched:
            failures.append(f"unexpected error:\n{produced.render()}")
        failures += [f"{source.name}:{ln}: expected error '{text}' was not produced" for ln, text in expected if (ln, text) not in matched]
    for failure in failures:
        print(failure, file=sys.stderr)
    return EXIT_RUNTIME if failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        source = read_input(args.input)
        chunks = split_chunks(source.text, args.split_input_file)
        if args.verify_diagnostics:
            return verify_diagnostics(chunks, source, args)
        printed = [process(chunk, source, args, sys.stderr) for chunk in chunks]
        text = "// -----\n".join(printed)
        if args.output:
            atomic_write(args.output, text)
        else:
            sys.stdout.write(text)
        return EXIT_OK

    return run_main("meshir-opt", body)


if __name__ == "__main__":
    sys.exit(main())
