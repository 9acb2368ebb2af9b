"""Read the DICOM schema out of the printed PS3.15-2007 H.1.3 text, page-break damage and all.

The damage (lab-notes): code-fence markers in the middle of definitions, continuation
lines and DESC strings wrapped onto column 0, a stray line `Hierarchy` between the
comments, and the missing `)` that should close dicomUniqueAETitlesRegistryRoot. This
reader tolerates exactly that: each definition runs from its keyword to the next
keyword, comment and fence lines are dropped, trailing stray tokens are ignored and an
unclosed definition is closed.
"""

from __future__ import annotations

import re
from pathlib import Path

from profiles.app_config.schema_text import Definition, parse_definition, tokenize

PRINTED = Path(__file__).parent / "data" / "ps3.15-2007-h.1.3-printed.txt"
_KEYWORD = re.compile(r"^\s*(attributetype|objectclass)\b", re.MULTILINE)


def printed_definitions() -> list[Definition]:
    text = "\n".join(
        line for line in PRINTED.read_text(encoding="utf-8").splitlines()
        if not line.strip().startswith(("```", "#"))
    )
    starts = [m for m in _KEYWORD.finditer(text)]
    definitions = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        tokens = tokenize(text[match.end():end])
        depth = 0
        for n, tok in enumerate(tokens):
            depth += {"(": 1, ")": -1}.get(tok, 0)
            if depth == 0:
                tokens = tokens[: n + 1]
                break
        else:
            tokens = tokens + [")"] * depth  # the printed 4.3 lacks its closing ')'
        definition, _ = parse_definition(match.group(1), tokens, 0)
        definitions.append(definition)
    return definitions
