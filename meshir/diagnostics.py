"""Source locations and user-facing errors.

Every error a user can cause is a `MeshirError` carrying a `Location` when one
is known; tools render it as `file:line:col: error: message`, the source line
and a caret, and never show a Python traceback for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Source:
    """A named text, split into lines lazily for diagnostics."""

    name: str
    text: str
    _lines: list[str] | None = field(default=None, repr=False)

    def line(self, number: int) -> str:
        if self._lines is None:
            self._lines = self.text.split("\n")
        if 1 <= number <= len(self._lines):
            return self._lines[number - 1].rstrip("\r")
        return ""


@dataclass(frozen=True, eq=False)
class Location:
    """A 1-based line and column in a `Source`."""

    source: Source
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.column}"

    def offset(self, lines: int) -> Location:
        return Location(self.source, self.line + lines, 1)


class MeshirError(Exception):
    """A user error: bad input, a bad flag, an ill-typed program."""

    def __init__(self, message: str, loc: Location | None = None, note: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.note = note

    def render(self) -> str:
        """The diagnostic as a user sees it: position, message, source line and caret."""
        if self.loc is None:
            text = f"error: {self.message}"
        else:
            text = f"{self.loc}: error: {self.message}"
            source_line = self.loc.source.line(self.loc.line)
            if source_line:
                caret_pad = "".join("\t" if ch == "\t" else " " for ch in source_line[: self.loc.column - 1])
                text += f"\n{source_line}\n{caret_pad}^"
        if self.note:
            text += f"\nnote: {self.note}"
        return text

    def __str__(self) -> str:
        return self.render()


class FlagError(MeshirError):
    """A bad command-line flag or flag value; the message names the flag."""


class RuntimeFailure(MeshirError):
    """A failure while running a program that verified: tools exit 1, not 2."""

