"""Pipeline text and the pass manager.

A pipeline is `canonicalize,cse,fuse-collectives{max-bytes=33554432}`: pass
names separated by commas, each with optional `{option=value,...}`. Option
values are read by the type of the pass field they set; a value may hold
commas inside quotes or brackets (`layout{rules={batch: rows, hidden: cols}}`).
"""
from __future__ import annotations

import dataclasses
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Literal, TextIO

from meshir.diagnostics import FlagError, MeshirError
from meshir.ir import Module
from meshir.verifier import verify_module

from .base import Pass, Statistics, available_passes, module_statistics

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _flag_error(flag: str, text: str, position: int, message: str) -> FlagError:
    """The message, then the pipeline text with a caret under `position`."""
    return FlagError(f"{flag}: {message}\n  {text}\n  {' ' * position}^")


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def pass_options(cls: type[Pass]) -> dict[str, dataclasses.Field]:
    """A pass's options by their pipeline spelling (`max-bytes`)."""
    return {option_name(f.name): f for f in dataclasses.fields(cls) if f.init}


# --- option values, read by the field's annotation ---------------------------


class _BadValue(Exception):
    """An option value that does not fit its field; the message says what was expected."""


def _parse_int(text: str) -> int:
    for base in (10, 0):  # decimal first so `010` is ten; then 0x.., 0b..
        try:
            return int(text, base)
        except ValueError:
            continue
    raise _BadValue("expected an integer")


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _BadValue("expected a number") from None


def _parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise _BadValue("expected true or false")
    return text == "true"


def _parse_str(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


_SCALAR_PARSERS: dict[Any, Callable[[str], Any]] = {int: _parse_int, float: _parse_float, bool: _parse_bool, str: _parse_str}


def split_top_level(text: str, separators: str) -> list[tuple[int, str]]:
    """Pieces of `text` between separators outside quotes and brackets, with their offsets."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in separators and depth == 0:
            pieces.append((start, text[start:i]))
            start = i + 1
    pieces.append((start, text[start:]))
    return pieces


def _value_parser(annotation: Any) -> Callable[[str], Any]:
    """A function reading option text as a value of type `annotation`."""
    if annotation in _SCALAR_PARSERS:
        return _SCALAR_PARSERS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        choices = {str(a): a for a in args}

        def parse_choice(text: str) -> Any:
            if text not in choices:
                raise _BadValue("expected one of " + ", ".join(choices))
            return choices[text]

        return parse_choice
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _value_parser(next(a for a in args if a is not type(None)))
        return lambda text: None if text == "none" else inner(text)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_parser(_value_parser(args[0]))
    raise TypeError(f"pass option type {annotation!r} is not supported")


def _tuple_parser(element: Callable[[str], Any]) -> Callable[[str], tuple]:
    """`[a, b]`, `(a, b)` or a single bare element."""

    def parse(text: str) -> tuple:
        if text[:1] in "([" and _CLOSING[text[0]] == text[-1:]:
            inner = text[1:-1].strip()
            return tuple(element(piece.strip()) for _, piece in split_top_level(inner, ",")) if inner else ()
        return (element(text),)

    return parse


# --- pipeline text -----------------------------------------------------------


class _PipelineParser:
    def __init__(self, text: str, flag: str):
        self.text = text
        self.flag = flag
        self.pos = 0
        self.passes = available_passes()

    def error(self, position: int, message: str) -> FlagError:
        return _flag_error(self.flag, self.text, position, message)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def read_name(self) -> tuple[int, str]:
        self.skip_spaces()
        start = self.pos
        while self.peek() and self.peek() in _NAME_CHARS:
            self.pos += 1
        return start, self.text[start:self.pos]

    def parse(self) -> list[Pass]:
        self.skip_spaces()
        if not self.peek():
            return []
        pipeline = [self.parse_pass()]
        while True:
            self.skip_spaces()
            ch = self.peek()
            if not ch:
                return pipeline
            if ch == "}":
                raise self.error(self.pos, "unbalanced braces: '}' has no matching '{'")
            if ch != ",":
                raise self.error(self.pos, f"expected ',' between passes, found '{ch}'")
            self.pos += 1
            pipeline.append(self.parse_pass())

    def parse_pass(self) -> Pass:
        start, name = self.read_name()
        if not name:
            found = f", found '{self.peek()}'" if self.peek() not in ("", ",") else ""
            raise self.error(start, f"empty pass name{found}")
        cls = self.passes.get(name)
        if cls is None:
            raise self.error(start, f"unknown pass '{name}' (passes: {', '.join(self.passes)})")
        self.skip_spaces()
        options = self.parse_options(name, cls) if self.peek() == "{" else {}
        missing = [o for o, f in pass_options(cls).items() if _is_required(f) and f.name not in options]
        if missing:
            raise self.error(start, f"pass '{name}' needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        try:
            return cls(**options)
        except (MeshirError, ValueError) as exc:
            raise self.error(start, f"pass '{name}': {getattr(exc, 'message', exc)}") from None

    def parse_options(self, pass_name: str, cls: type[Pass]) -> dict[str, Any]:
        open_brace = self.pos
        close = self.find_closing_brace(open_brace)
        known = pass_options(cls)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        body = self.text[open_brace + 1:close]
        if body.strip():
            for offset, item in split_top_level(body, ","):
                at = open_brace + 1 + offset
                key, value, key_at, value_at = self.split_option(item, at)
                spec = known.get(key)
                if spec is None:
                    listed = ", ".join(known) or "none"
                    raise self.error(key_at, f"unknown option '{key}' of pass '{pass_name}' (options: {listed})")
                if spec.name in values:
                    raise self.error(key_at, f"option '{key}' of pass '{pass_name}' given twice")
                try:
                    values[spec.name] = _value_parser(hints[spec.name])(value)
                except _BadValue as exc:
                    raise self.error(value_at, f"bad value '{value}' for option '{key}' of pass '{pass_name}': {exc}") from None
        self.pos = close + 1
        return values

    def split_option(self, item: str, at: int) -> tuple[str, str, int, int]:
        """`key=value` -> key, value and the text positions of each."""
        stripped = item.lstrip()
        key_at = at + len(item) - len(stripped)
        if not stripped.strip():
            raise self.error(key_at, "empty option")
        key, equals, value = stripped.partition("=")
        key = key.rstrip()
        if not key:
            raise self.error(key_at, "empty option name")
        if not equals:
            raise self.error(key_at, f"option '{key}' needs a value: write {key}=VALUE")
        value_at = key_at + len(stripped) - len(value) + (len(value) - len(value.lstrip()))
        if not value.strip():
            raise self.error(value_at, f"option '{key}' has no value")
        return key, value.strip(), key_at, value_at

    def find_closing_brace(self, open_brace: int) -> int:
        depth, quote = 0, None
        for i in range(open_brace, len(self.text)):
            ch = self.text[i]
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return i
        raise self.error(open_brace, "unbalanced braces: '{' is never closed")


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def parse_pipeline(text: str, flag: str = "--passes") -> list[Pass]:
    """The passes a pipeline names, in order; FlagError pointing into `text` otherwise."""
    return _PipelineParser(text, flag).parse()


# --- running -----------------------------------------------------------------


class PassFailure(Exception):
    """A pass left the module invalid: a bug in meshir, not in the user's program."""

    def __init__(self, pass_name: str, error: MeshirError):
        super().__init__(f"internal error: pass '{pass_name}' produced invalid IR: {error.render()}")
        self.pass_name = pass_name
        self.error = error


@dataclass
class PassRecord:
    """One pass as run: wall seconds (verifier excluded) and statistics, when asked for."""

    name: str
    seconds: float
    verify_seconds: float
    before: Statistics | None = None
    after: Statistics | None = None
    counters: dict[str, int] = field(default_factory=dict)


class PassManager:
    """Run passes in order, verifying after each, with optional IR dumps, timings and statistics.

    Dumps and reports go to `out` (standard error unless given)."""

    def __init__(
        self,
        passes: Collection[Pass],
        print_ir_after_all: bool = False,
        print_ir_after: Collection[str] = frozenset(),
        time_passes: bool = False,
        statistics: bool = False,
        out: TextIO | None = None,
    ):
        unknown = sorted(set(print_ir_after) - set(available_passes()))
        if unknown:
            raise FlagError(f"--print-ir-after: unknown pass '{unknown[0]}' (passes: {', '.join(available_passes())})")
        self.passes = list(passes)
        self.print_ir_after_all = print_ir_after_all
        self.print_ir_after = frozenset(print_ir_after)
        self.time_passes = time_passes
        self.statistics = statistics
        self.out = out
        self.records: list[PassRecord] = []

    def run(self, module: Module) -> None:
        """Run the pipeline on `module` in place. The input must verify (a MeshirError
        if not: the user's fault); a pass that breaks it raises PassFailure."""
        verify_module(module)
        self.records = []
        stats = module_statistics(module) if self.statistics else None
        for p in self.passes:
            start = time.perf_counter()
            counters = p.run(module)
            ran = time.perf_counter()
            try:
                verify_module(module)
            except MeshirError as exc:
                raise PassFailure(p.name, exc) from exc
            verified = time.perf_counter()
            record = PassRecord(p.name, ran - start, verified - ran, counters=dict(counters or {}))
            if self.statistics:
                record.before, stats = stats, module_statistics(module)
                record.after = stats
            self.records.append(record)
            if self.print_ir_after_all or p.name in self.print_ir_after:
                self._dump(p.name, module)
        if self.time_passes:
            self._write(timing_report(self.records))
        if self.statistics:
            self._write(statistics_report(self.records))

    def _write(self, text: str) -> None:
        stream = self.out if self.out is not None else sys.stderr
        stream.write(text)
        stream.flush()

    def _dump(self, pass_name: str, module: Module) -> None:
        from meshir.printer import print_module

        text = print_module(module)
        self._write(f"// -----// IR Dump After {pass_name} //----- //\n{text}{'' if text.endswith(chr(10)) else chr(10)}\n")


def timing_report(records: list[PassRecord]) -> str:
    """MLIR's `--time-passes` table: wall seconds and share of the total per pass, then the verifier."""
    rows = [(r.name, r.seconds) for r in records]
    rows.append(("verifier", sum(r.verify_seconds for r in records)))
    total = sum(seconds for _, seconds in rows)
    rule = "===" + "-" * 73 + "==="
    lines = [
        rule,
        "Execution time report".center(len(rule)).rstrip(),
        rule,
        f"  Total Execution Time: {total:.4f} seconds",
        "",
        "  ----Wall Time----  ----Name----",
    ]
    for name, seconds in [*rows, ("Total", total)]:
        share = 100.0 * seconds / total if total > 0 else 0.0
        lines.append(f"  {seconds:8.4f} ({share:5.1f}%)  {name}")
    return "\n".join(lines) + "\n"


def statistics_report(records: list[PassRecord]) -> str:
    """One line per pass: ops, each collective kind and bytes per mesh axis, before -> after."""
    lines = ["===- Pass statistics -==="]
    for r in records:
        before, after = r.before or Statistics(), r.after or Statistics()
        parts = [f"ops {before.ops} -> {after.ops}"]
        for kind in sorted(set(before.collectives) | set(after.collectives)):
            parts.append(f"{kind} {before.collectives[kind]} -> {after.collectives[kind]}")
        for axis in sorted(set(before.bytes_per_axis) | set(after.bytes_per_axis)):
            parts.append(f"bytes[{axis}] {before.bytes_per_axis[axis]} -> {after.bytes_per_axis[axis]}")
        parts.extend(f"{name} {count}" for name, count in sorted(r.counters.items()))
        lines.append(f"{r.name}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"
