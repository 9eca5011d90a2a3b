"""The .mir text format: lark grammar (grammar.lark), parser and source reading.

`parse_module(text)` turns `.mir` text into a verified `Module`;
`read_source(path)` reads a file as a `Source` with UTF-8 checked. The
canonical printer is in the core, `meshir.printer.print_module`.
"""
from .parser import parse_module, read_source

__all__ = ["parse_module", "read_source"]
