"""The pipeline text parser, the pass registry and the pass manager."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from meshir.diagnostics import FlagError, MeshirError
from meshir.frontends.builder import ModuleBuilder, f32
from meshir.ir import Module
from meshir.passes import base
from meshir.passes.base import Pass, available_passes, module_statistics, register_pass
from meshir.passes.canonicalize import Canonicalize
from meshir.passes.cse import CommonSubexpressionElimination
from meshir.passes.dce import DeadCodeElimination
from meshir.passes.pipeline import PassFailure, PassManager, parse_pipeline


@dataclass(frozen=True)
class Fuse(Pass):
    name: ClassVar[str] = "fuse-test"
    max_bytes: int = 32 << 20
    ratio: float = 0.5
    enabled: bool = True
    label: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    axes: tuple[str, ...] = ()
    limit: int | None = None

    def run(self, module: Module) -> None:
        pass


@dataclass(frozen=True)
class NeedsKind(Pass):
    name: ClassVar[str] = "needs-kind"
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adam"):
            raise MeshirError(f"kind must be sgd or adam, not {self.kind}")

    def run(self, module: Module) -> None:
        pass


@pytest.fixture
def test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the option-rich test passes for one test only."""
    monkeypatch.setitem(base._PASSES, Fuse.name, Fuse)
    monkeypatch.setitem(base._PASSES, NeedsKind.name, NeedsKind)


def flag_error(text: str) -> str:
    with pytest.raises(FlagError) as info:
        parse_pipeline(text)
    return info.value.message


def caret_column(message: str) -> int:
    """Offset of the caret under the pipeline text in a rendered FlagError."""
    text_line, caret_line = message.split("\n")[1:3]
    assert text_line.startswith("  ") and caret_line.startswith("  ")
    return caret_line.index("^") - 2


# --- registry -----------------------------------------------------------------


def test_the_three_cleanup_passes_are_registered_by_name() -> None:
    passes = available_passes()
    assert passes["canonicalize"] is Canonicalize
    assert passes["cse"] is CommonSubexpressionElimination
    assert passes["dce"] is DeadCodeElimination


def test_registering_a_second_class_under_a_taken_name_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_PASSES", dict(base._PASSES))

    @dataclass(frozen=True)
    class OtherCse(Pass):
        name: ClassVar[str] = "cse"

    with pytest.raises(ValueError, match="registered twice"):
        register_pass(OtherCse)


def test_a_pass_without_a_name_cannot_register() -> None:
    class Nameless(Pass):
        pass

    with pytest.raises(ValueError, match="name"):
        register_pass(Nameless)


# --- parsing ------------------------------------------------------------------


def test_pipeline_lists_passes_in_order() -> None:
    assert parse_pipeline("canonicalize,cse,dce") == [Canonicalize(), CommonSubexpressionElimination(), DeadCodeElimination()]


def test_spaces_around_names_and_commas_are_allowed() -> None:
    assert parse_pipeline("  dce , cse ") == [DeadCodeElimination(), CommonSubexpressionElimination()]


def test_empty_pipeline_has_no_passes() -> None:
    assert parse_pipeline("") == []
    assert parse_pipeline("   ") == []


def test_a_pass_may_repeat() -> None:
    assert [p.name for p in parse_pipeline("cse,dce,cse")] == ["cse", "dce", "cse"]


def test_options_are_read_by_field_type(test_passes: None) -> None:
    (p,) = parse_pipeline("fuse-test{max-bytes=33554432, ratio=1e-3,enabled=false,label=hello,mode=slow}")
    assert p == Fuse(max_bytes=33554432, ratio=0.001, enabled=False, label="hello", mode="slow")
    assert isinstance(p.max_bytes, int) and isinstance(p.ratio, float)


def test_unset_options_keep_their_defaults(test_passes: None) -> None:
    (p,) = parse_pipeline("fuse-test{ratio=2}")
    assert p == Fuse(ratio=2.0)
    assert parse_pipeline("fuse-test{}") == [Fuse()]
    assert parse_pipeline("fuse-test") == [Fuse()]


def test_integer_options_accept_hex_and_underscores(test_passes: None) -> None:
    assert parse_pipeline("fuse-test{max-bytes=0x100}")[0].max_bytes == 256
    assert parse_pipeline("fuse-test{max-bytes=1_000}")[0].max_bytes == 1000
    assert parse_pipeline("fuse-test{max-bytes=-3}")[0].max_bytes == -3


def test_string_options_may_be_quoted_and_hold_commas_and_braces(test_passes: None) -> None:
    assert parse_pipeline("fuse-test{label=\"a,b}\"}")[0].label == "a,b}"
    (p,) = parse_pipeline("fuse-test{label={batch: rows, hidden: cols},ratio=3}")
    assert p.label == "{batch: rows, hidden: cols}" and p.ratio == 3.0


def test_tuple_options_take_a_bracketed_list_or_one_element(test_passes: None) -> None:
    assert parse_pipeline("fuse-test{axes=[rows, cols]}")[0].axes == ("rows", "cols")
    assert parse_pipeline("fuse-test{axes=(rows)}")[0].axes == ("rows",)
    assert parse_pipeline("fuse-test{axes=rows}")[0].axes == ("rows",)
    assert parse_pipeline("fuse-test{axes=[]}")[0].axes == ()


def test_optional_options_accept_none(test_passes: None) -> None:
    assert parse_pipeline("fuse-test{limit=7}")[0].limit == 7
    assert parse_pipeline("fuse-test{limit=none}")[0].limit is None


def test_pipeline_of_passes_with_and_without_options(test_passes: None) -> None:
    passes = parse_pipeline("cse,fuse-test{max-bytes=8},needs-kind{kind=adam},dce")
    assert passes == [CommonSubexpressionElimination(), Fuse(max_bytes=8), NeedsKind("adam"), DeadCodeElimination()]


# --- errors -------------------------------------------------------------------


def test_unknown_pass_is_named_with_the_known_ones_and_a_caret() -> None:
    message = flag_error("canonicalize,csee")
    listed = message.split("\n")[0]
    assert listed == f"--passes: unknown pass 'csee' (passes: {', '.join(available_passes())})"
    assert {"canonicalize", "cse", "dce"} <= set(listed.split("(passes: ")[1].rstrip(")").split(", "))
    assert message.split("\n")[1:] == ["  canonicalize,csee", "               ^"]


def test_flag_errors_are_user_errors() -> None:
    with pytest.raises(MeshirError):
        parse_pipeline("nope")
    assert issubclass(FlagError, MeshirError)


def test_the_flag_name_can_be_chosen() -> None:
    with pytest.raises(FlagError) as info:
        parse_pipeline("x", flag="--pipeline")
    assert info.value.message.startswith("--pipeline: unknown pass 'x'")


def test_unknown_option_lists_the_pass_options(test_passes: None) -> None:
    message = flag_error("fuse-test{max_bytes=4}")
    assert message.startswith("--passes: unknown option 'max_bytes' of pass 'fuse-test' (options: max-bytes, ratio, enabled, label, mode, axes, limit)")
    assert caret_column(message) == len("fuse-test{")


def test_options_of_a_pass_without_any() -> None:
    assert "unknown option 'x' of pass 'cse' (options: none)" in flag_error("cse{x=1}")


@pytest.mark.parametrize(
    ("text", "expected", "column"),
    [
        ("fuse-test{max-bytes=lots}", "bad value 'lots' for option 'max-bytes' of pass 'fuse-test': expected an integer", 20),
        ("fuse-test{max-bytes=1.5}", "expected an integer", 20),
        ("fuse-test{ratio=half}", "expected a number", 16),
        ("fuse-test{enabled=yes}", "expected true or false", 18),
        ("fuse-test{enabled=True}", "expected true or false", 18),
        ("fuse-test{mode=medium}", "expected one of fast, slow", 15),
        ("fuse-test{limit=lots}", "bad value 'lots' for option 'limit' of pass 'fuse-test': expected an integer", 16),
        ("fuse-test{ratio=1, max-bytes = many}", "bad value 'many'", 31),
    ],
)
def test_bad_values_say_what_was_expected(test_passes: None, text: str, expected: str, column: int) -> None:
    message = flag_error(text)
    assert expected in message
    assert caret_column(message) == column


def test_bad_tuple_element_is_reported(test_passes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True)
    class Sizes(Pass):
        name: ClassVar[str] = "sizes"
        sizes: tuple[int, ...] = ()

    monkeypatch.setitem(base._PASSES, "sizes", Sizes)
    assert parse_pipeline("sizes{sizes=[1, 2]}")[0].sizes == (1, 2)
    assert "expected an integer" in flag_error("sizes{sizes=[1, two]}")


@pytest.mark.parametrize(
    ("text", "expected", "column"),
    [
        ("cse,,dce", "empty pass name", 4),
        (",cse", "empty pass name", 0),
        ("cse,", "empty pass name", 4),
        ("{a=1}", "empty pass name, found '{'", 0),
        ("cse{", "unbalanced braces: '{' is never closed", 3),
        ("fuse-test{label={a}", "unbalanced braces: '{' is never closed", 9),
        ("cse}", "unbalanced braces: '}' has no matching '{'", 3),
        ("cse dce", "expected ',' between passes, found 'd'", 4),
        ("fuse-test{ratio=1,ratio=2}", "option 'ratio' of pass 'fuse-test' given twice", 18),
        ("fuse-test{ratio}", "option 'ratio' needs a value: write ratio=VALUE", 10),
        ("fuse-test{ratio=}", "option 'ratio' has no value", 16),
        ("fuse-test{ratio=1,}", "empty option", 18),
        ("fuse-test{=1}", "empty option name", 10),
        ("needs-kind", "pass 'needs-kind' needs option kind", 0),
        ("cse,needs-kind{kind=rmsprop}", "pass 'needs-kind': kind must be sgd or adam, not rmsprop", 4),
    ],
)
def test_malformed_pipelines_point_at_the_problem(test_passes: None, text: str, expected: str, column: int) -> None:
    message = flag_error(text)
    assert message.startswith("--passes: " + expected)
    assert message.split("\n")[1] == "  " + text
    assert caret_column(message) == column


# --- the pass manager ---------------------------------------------------------


def small_module() -> Module:
    mb = ModuleBuilder()
    with mb.function("f", x=f32(batch=4)) as f:
        x = f.arg("x")
        a = f.exp(x, name="a")
        f.exp(x, name="b")
        f.neg(f.neg(a))
        f.ret(f.add(a, f.exp(x), name="c"))
    return mb.build()


@dataclass(frozen=True)
class Record(Pass):
    """Appends its tag to a shared log when run."""

    name: ClassVar[str] = "record"
    tag: str = ""
    log: ClassVar[list[str]] = []

    def run(self, module: Module) -> None:
        self.log.append(self.tag)


@dataclass(frozen=True)
class Breaker(Pass):
    """Returns a value that no op defines: invalid IR."""

    name: ClassVar[str] = "breaker"

    def run(self, module: Module) -> None:
        function = module.function("f")
        function.ops = function.ops[1:]


@pytest.fixture
def manager_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base._PASSES, Record.name, Record)
    monkeypatch.setitem(base._PASSES, Breaker.name, Breaker)
    monkeypatch.setattr(Record, "log", [])


def test_manager_runs_passes_in_order(manager_passes: None) -> None:
    PassManager(parse_pipeline("record{tag=one},record{tag=two},record{tag=three}")).run(small_module())
    assert Record.log == ["one", "two", "three"]


def test_manager_runs_the_cleanup_passes() -> None:
    module = small_module()
    PassManager(parse_pipeline("cse,canonicalize")).run(module)
    # b and the neg pair are dead, the second exp merges with a: exp, add remain.
    assert [op.name for op in module.function("f").ops] == ["exp", "add"]


def test_a_pass_that_breaks_the_ir_is_an_internal_error_naming_it(manager_passes: None) -> None:
    with pytest.raises(PassFailure) as info:
        PassManager(parse_pipeline("record,breaker,record")).run(small_module())
    assert not isinstance(info.value, MeshirError)
    assert info.value.pass_name == "breaker"
    assert "internal error: pass 'breaker' produced invalid IR" in str(info.value)
    assert "used before it is defined" in str(info.value)
    assert Record.log == [""]


def test_an_invalid_input_is_a_user_error_before_any_pass(manager_passes: None) -> None:
    module = small_module()
    Breaker().run(module)
    with pytest.raises(MeshirError, match="used before it is defined"):
        PassManager(parse_pipeline("record")).run(module)
    assert Record.log == []


def test_print_ir_after_names_must_be_passes() -> None:
    with pytest.raises(FlagError, match="--print-ir-after: unknown pass 'csee'"):
        PassManager([], print_ir_after={"csee"})


def test_time_passes_reports_each_pass_and_the_total() -> None:
    out = io.StringIO()
    manager = PassManager(parse_pipeline("cse,dce,cse"), time_passes=True, out=out)
    manager.run(small_module())
    report = out.getvalue()
    assert "Execution time report" in report
    total = float(re.search(r"Total Execution Time: ([0-9.]+) seconds", report).group(1))
    rows = re.findall(r"^\s+([0-9.]+) \(\s*([0-9.]+)%\)  (\S+)$", report, re.MULTILINE)
    assert [name for _, _, name in rows] == ["cse", "dce", "cse", "verifier", "Total"]
    assert rows[-1][1] == "100.0"
    assert sum(float(s) for s, _, name in rows[:-1]) == pytest.approx(total, abs=5e-4 * len(rows))
    assert [r.name for r in manager.records] == ["cse", "dce", "cse"]
    assert all(r.seconds >= 0 and r.verify_seconds >= 0 for r in manager.records)


def test_nothing_is_printed_unless_asked() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("cse,dce"), out=out).run(small_module())
    assert out.getvalue() == ""


def test_pass_statistics_give_op_counts_before_and_after_each_pass() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("cse,dce"), statistics=True, out=out).run(small_module())
    # 6 ops: exp a, exp b, neg, neg, exp, add; cse merges exp b and the last exp into a.
    assert out.getvalue().splitlines() == [
        "===- Pass statistics -===",
        "cse: ops 6 -> 4",
        "dce: ops 4 -> 2",
    ]


def test_module_statistics_counts_ops_in_every_function() -> None:
    mb = ModuleBuilder()
    with mb.function("f", x=f32(n=2)) as f:
        f.ret(f.exp(f.exp(f.arg("x"))))
    with mb.function("g", x=f32(n=2)) as g:
        g.ret(g.neg(g.arg("x")))
    stats = module_statistics(mb.build())
    assert stats.ops == 3
    assert not stats.collectives and not stats.bytes_per_axis


def local_module_with_collectives() -> Module:
    mb = ModuleBuilder()
    mb.mesh("m", rows=2, cols=2)
    with mb.function("local", x=f32(n=8), y=f32(a=4, b=4), spmd="m") as f:
        x, y = f.arg("x"), f.arg("y")
        f.all_reduce(x, axes=["rows", "cols"], reduce="sum")
        f.all_gather(x, dim="n", axes=["rows"])
        f.reduce_scatter(x, dim="n", axes=["cols"], reduce="sum")
        f.all_to_all(y, split_dim="a", concat_dim="b", axes=["cols"])
        f.collective_permute(x, axis="cols", shift=1)
        f.all_slice(x, dim="n", axes=["rows"])
        f.axis_index(axis="rows")
        f.ret(x)
    return mb.build()


def test_module_statistics_count_collectives_and_bytes_per_axis() -> None:
    stats = module_statistics(local_module_with_collectives())
    assert stats.ops == 7
    assert dict(stats.collectives) == {
        "all_reduce": 1, "all_gather": 1, "reduce_scatter": 1, "all_to_all": 1, "collective_permute": 1, "all_slice": 1,
    }
    # f32[n=8] is 32 bytes, f32[a=4, b=4] 64; all_gather over rows=2 sends its 64-byte result.
    assert dict(stats.bytes_per_axis) == {
        "rows": 32 + 64 + 0,  # all_reduce, all_gather, all_slice
        "cols": 32 + 32 + 64 + 32,  # all_reduce, reduce_scatter, all_to_all, collective_permute
    }


def test_pass_statistics_report_collectives_and_bytes() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("dce"), statistics=True, out=out).run(local_module_with_collectives())
    # Every collective's result is unused, so dce removes all seven ops.
    assert out.getvalue().splitlines()[1] == (
        "dce: ops 7 -> 0, all_gather 1 -> 0, all_reduce 1 -> 0, all_slice 1 -> 0, all_to_all 1 -> 0, "
        "collective_permute 1 -> 0, reduce_scatter 1 -> 0, bytes[cols] 160 -> 0, bytes[rows] 96 -> 0"
    )


def test_print_ir_after_dumps_the_module_after_the_named_pass_only() -> None:
    out = io.StringIO()
    module = small_module()
    PassManager(parse_pipeline("cse,dce"), print_ir_after={"cse"}, out=out).run(module)
    header, *body = out.getvalue().split("\n")
    assert header == "// -----// IR Dump After cse //----- //"
    dumped = "\n".join(body)
    # After cse four ops remain (dce has not run yet); after dce only two.
    assert dumped.count(" = ") == 4 and "IR Dump After dce" not in dumped
    assert len(module.function("f").ops) == 2


def test_print_ir_after_all_dumps_after_every_pass() -> None:
    out = io.StringIO()
    PassManager(parse_pipeline("cse,dce,canonicalize"), print_ir_after_all=True, out=out).run(small_module())
    headers = [line for line in out.getvalue().splitlines() if line.startswith("// -----// IR Dump After")]
    assert headers == [f"// -----// IR Dump After {name} //----- //" for name in ("cse", "dce", "canonicalize")]
    assert out.getvalue().count("func @f(%x: f32[batch=4]) -> f32[batch=4]") == 3
