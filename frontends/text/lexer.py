"""A fast contextual lexer for the .mir grammar, and syntax-error messages.

lark's own lexers cost several microseconds a token; this one folds
whitespace and comments into one regex call, tracks lines by counting the
newlines it skips (no token spans a line), and, like lark's contextual lexer,
only tries the terminals the parser's current state accepts. The terminal
patterns themselves come from grammar.lark.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Collection, Iterator

from lark.lexer import Lexer, LexerState, PatternStr, Token

from meshir.diagnostics import Location, MeshirError, Source

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class LexInput:
    """One parse's input: a slice of a source text, and the last two tokens
    handed to the parser (for the 'after ...' part of syntax errors)."""

    __slots__ = ("source", "start", "end", "last", "before_last")

    def __init__(self, source: Source, start: int, end: int):
        self.source = source
        self.start = start
        self.end = end
        self.last: Token | None = None
        self.before_last: Token | None = None


class _Scanner:
    """The terminals one parser state accepts, as one alternation regex, and
    the keywords it accepts (matched as IDENT, then renamed)."""

    __slots__ = ("match", "keywords")

    def __init__(self, match: Callable[..., re.Match | None], keywords: dict[str, str]):
        self.match = match
        self.keywords = keywords


class ContextualLexer(Lexer):
    """lark custom-lexer interface 2: `lex(lexer_state, parser_state)`."""

    __future_interface__ = 2

    def __init__(self, lexer_conf) -> None:
        ignore = set(lexer_conf.ignore)
        terminals = sorted(
            lexer_conf.terminals,
            key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name),
        )
        self._skip = re.compile("(?:" + "|".join(t.pattern.to_regexp() for t in terminals if t.name in ignore) + ")*")
        # Keywords match IDENT; like lark, they are recognised after an IDENT match.
        self.keywords = {
            t.pattern.value: t.name
            for t in terminals
            if isinstance(t.pattern, PatternStr) and _IDENT.match(t.pattern.value)
        }
        self.literals = {t.name: t.pattern.value for t in terminals if isinstance(t.pattern, PatternStr)}
        self._terminals = [t for t in terminals if t.name not in ignore and t.name not in self.keywords.values()]
        for t in self._terminals:
            if re.compile(t.pattern.to_regexp()).groups:
                raise ValueError(f"terminal {t.name} has a capturing group; use (?:...)")
        self._by_accepts: dict[frozenset[str], _Scanner] = {}
        self._by_state: dict[int, _Scanner] = {}
        self._everything = self._scanner(frozenset(t.name for t in terminals) | {"IDENT"})

    def _scanner(self, accepts: frozenset[str]) -> _Scanner:
        scanner = self._by_accepts.get(accepts)
        if scanner is None:
            keywords = {word: name for word, name in self.keywords.items() if name in accepts}
            wanted = accepts | {"IDENT"} if keywords else accepts
            parts = [f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in self._terminals if t.name in wanted]
            pattern = re.compile("|".join(parts)) if parts else re.compile(r"(?!)")
            scanner = _Scanner(pattern.match, keywords)
            self._by_accepts[accepts] = scanner
        return scanner

    def _scanner_for_state(self, states: dict[int, dict[str, Any]], state: int) -> _Scanner:
        scanner = self._scanner(frozenset(name for name in states[state] if name.isupper()))
        self._by_state[state] = scanner
        return scanner

    def lex(self, lexer_state: LexerState, parser_state) -> Iterator[Token]:
        source_input: LexInput = lexer_state.text
        text = source_input.source.text
        pos, end = source_input.start, source_input.end
        line = text.count("\n", 0, pos) + 1
        line_start = text.rfind("\n", 0, pos) + 1
        skip = self._skip.match
        by_state = self._by_state
        states = parser_state.parse_conf.states
        state_stack = parser_state.state_stack
        new_str = str.__new__
        while True:
            skipped_from = pos
            pos = skip(text, pos, end).end()
            newlines = text.count("\n", skipped_from, pos)
            if newlines:
                line += newlines
                line_start = text.rfind("\n", skipped_from, pos) + 1
            if pos >= end:
                return
            state = state_stack[-1]
            scanner = by_state.get(state) or self._scanner_for_state(states, state)
            match = scanner.match(text, pos, end)
            if match is None:
                # Not valid here: lex it as anything so the parser reports what it expected.
                match = self._everything.match(text, pos, end)
                if match is None:
                    loc = Location(source_input.source, line, pos - line_start + 1)
                    found = repr(text[pos])
                    raise MeshirError(
                        f"expected {describe_expected(self, states[state].keys())}"
                        f"{_after(source_input.last, states[state].keys())}, found {found}",
                        loc,
                    )
                scanner = self._everything
            kind = match.lastgroup
            value = match.group()
            if kind == "IDENT" and scanner.keywords:
                kind = scanner.keywords.get(value, kind)
            # Token(...) goes through two Python-level constructors; this is the same, inline.
            token = new_str(Token, value)
            token.type, token.value, token.start_pos, token.line, token.column = kind, value, pos, line, pos - line_start + 1
            token.end_line = token.end_column = token.end_pos = None
            source_input.before_last = source_input.last
            source_input.last = token
            yield token
            pos = match.end()


# Terminals a message names by what they are, not by their spelling.
_DESCRIBED = {
    "VALUE": "a value like %x",
    "SYMBOL": "a symbol like @name",
    "IDENT": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a quoted string",
}
# When the first terminal is expected, it and the others listed read as one thing.
_GROUPS = (
    ("TYPE", {"TYPE", "IDENT"}, "a type like f32[batch=8]"),
    ("FLOAT", {"INT", "FLOAT", "STRING", "IDENT", "SYMBOL", "LSQB", "LBRACE"}, "an attribute value"),
    ("OP_LINE", {"OP_LINE", "VALUE", "IDENT"}, "an op"),
)
_ORDER = [",", ")", "]", "}", ">", "=", ":", "->", "(", "[", "{", "<", "mesh", "layout", "var", "func", "attributes"]


def describe_expected(lexer: ContextualLexer, expected: Collection[str]) -> str:
    """Words for what the parser would take, as in `',' or ')'`, from terminal names."""
    names = {n for n in expected if n.isupper() and n != "$END"}
    phrases: list[tuple[int, str]] = []
    for trigger, members, phrase in _GROUPS:
        if trigger in names:
            names -= members
            phrases.append((35, phrase))
    for name in names:
        if name in lexer.literals and name not in _DESCRIBED:
            literal = lexer.literals[name]
            phrases.append((_ORDER.index(literal) if literal in _ORDER else 40, f"'{literal}'"))
        else:
            phrases.append((60, _DESCRIBED.get(name, name)))
    if not phrases:
        return "the end of the input"
    words = [p for _, p in sorted(phrases)]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _after(previous: Token | None, expected: Collection[str]) -> str:
    if previous is None:
        return ""
    kind = previous.type
    if kind == "VALUE" and "RPAR" in expected and "COMMA" in expected:
        return " after an operand"
    coarse = {"TYPE": "a type", "OP_LINE": "an op"}
    if kind in coarse:
        return f" after {coarse[kind]}"
    return f" after {_found(previous)}"


def _found(token: Token) -> str:
    if token.type == "$END":
        return "the end of the input"
    text = str(token)
    return f"'{text}'" if len(text) <= 40 else f"'{text[:37]}...'"


def syntax_error(lexer: ContextualLexer, token: Token, expected: Collection[str], source_input: LexInput) -> MeshirError:
    """The MeshirError for the parser refusing `token` (lark's UnexpectedToken)."""
    source = source_input.source
    if token.type == "$END":  # empty input is a module, so some token came before; point just after it
        previous = source_input.last
        loc = Location(source, previous.line, previous.column + len(previous))
    else:
        previous = source_input.before_last
        loc = Location(source, token.line, token.column)
    return MeshirError(f"expected {describe_expected(lexer, expected)}{_after(previous, expected)}, found {_found(token)}", loc)

