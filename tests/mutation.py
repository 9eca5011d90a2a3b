"""Seeded text mutations of `.mir` sources, shared by the fuzz test and benchmark."""
from __future__ import annotations

import random
import re

SNIPPETS = ["(", ")", "{", "}", "[", "]", ",", "=", ":", "%", "@", "<", ">", "->", "0", "-1", "999999999999",
            "1e400", "nan", "f32", "bool", "%x", "@m", "batch", "dims", "\"s\"", "//", "\n", " ", "\t", "é", "\x00"]
TOKEN = re.compile(r"%[\w.]+|@[\w.]+|\w+|[^\s\w]")


def mutate(text: str, rng: random.Random) -> str:
    """One to three random edits: character noise, token swaps, number and name changes,
    line deletion or duplication."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(7)
        if not text:
            return rng.choice(SNIPPETS)
        pos = rng.randrange(len(text))
        if kind == 0:
            text = text[:pos] + text[pos + 1:]
        elif kind == 1:
            text = text[:pos] + rng.choice(SNIPPETS) + text[pos:]
        elif kind in (2, 3):
            tokens = list(TOKEN.finditer(text))
            if len(tokens) < 2:
                continue
            a, b = rng.sample(tokens, 2)
            replacement = b.group() if kind == 2 else rng.choice(SNIPPETS)
            text = text[:a.start()] + replacement + text[a.end():]
        elif kind == 4:
            numbers = list(re.finditer(r"\d+", text))
            if numbers:
                n = rng.choice(numbers)
                text = text[:n.start()] + str(rng.choice([0, 1, 3, 7, 64, 10**6])) + text[n.end():]
        else:
            lines = text.split("\n")
            index = rng.randrange(len(lines))
            if kind == 5:
                del lines[index]
            else:
                lines.insert(index, lines[rng.randrange(len(lines))])
            text = "\n".join(lines)
    return text
