"""The .mir text format: lark grammar, parser and printer."""
