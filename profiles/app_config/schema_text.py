"""RFC 4512 schema definitions: parse the OpenLDAP include format, emit cn=config LDIF.

The DICOM schema (PS3.15 H.1.3) ships twice in `schema/`: `dicom.schema` for
`include` in slapd.conf and `dicom.ldif` for cn=config (slapadd -n0 or an online
ldapadd). The include file is the source; the LDIF is generated from it by
`python -m profiles.app_config.schema_text` so the two can never disagree (a test
regenerates it and compares).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from profiles.errors import ParseError

SCHEMA_DIR = Path(__file__).with_name("schema")
INCLUDE_FILE = SCHEMA_DIR / "dicom.schema"
LDIF_FILE = SCHEMA_DIR / "dicom.ldif"

# RFC 4512 4.1: keywords followed by one value (or a parenthesised list of them).
_VALUED = frozenset(
    {"NAME", "DESC", "SUP", "EQUALITY", "ORDERING", "SUBSTR", "SYNTAX", "USAGE", "MUST", "MAY"}
)
_FLAGS = frozenset(
    {"SINGLE-VALUE", "COLLECTIVE", "NO-USER-MODIFICATION", "OBSOLETE",
     "STRUCTURAL", "AUXILIARY", "ABSTRACT"}
)
_TOKEN = re.compile(r"\(|\)|\$|'[^']*'|[^\s()$']+")


@dataclass(frozen=True, slots=True)
class Definition:
    """One attributetype or objectclass: its OID and its (keyword, value) terms in order.

    A value is a string for single-valued keywords, a tuple for lists (MUST/MAY with
    parentheses), None for flags such as SINGLE-VALUE.
    """

    kind: str
    oid: str
    terms: tuple[tuple[str, str | tuple[str, ...] | None], ...]

    @property
    def name(self) -> str:
        return str(dict(self.terms)["NAME"])

    def term(self, keyword: str) -> str | tuple[str, ...] | None:
        return dict(self.terms).get(keyword)

    def render(self, indent: str = "  ") -> str:
        """The definition as `( oid NAME '...' ... )`, one term a line after the first."""
        lines = [f"( {self.oid}"]
        for keyword, value in self.terms:
            if value is None:
                lines.append(f"{indent}{keyword}")
            elif isinstance(value, tuple):
                lines.append(f"{indent}{keyword} ( {' $ '.join(value)} )")
            elif keyword in ("NAME", "DESC"):
                lines.append(f"{indent}{keyword} '{value}'")
            else:
                lines.append(f"{indent}{keyword} {value}")
        lines[-1] += " )"
        return "\n".join(lines)


def tokenize(text: str) -> list[str]:
    """Tokens of definition text; quoted strings keep their quotes, inner white space folded."""
    tokens = []
    for tok in _TOKEN.findall(text):
        if tok.startswith("'"):
            tok = "'" + " ".join(tok[1:-1].split()) + "'"
        tokens.append(tok)
    return tokens


def parse_definition(kind: str, tokens: list[str], pos: int) -> tuple[Definition, int]:
    """Parse `( oid terms... )` starting at tokens[pos] == '('; return it and the next index."""

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ParseError(f"{kind}: unexpected end of text", offset=pos)
        tok = tokens[pos]
        pos += 1
        return tok

    if take() != "(":
        raise ParseError(f"{kind}: expected '('", offset=pos - 1)
    oid = take()
    if not re.fullmatch(r"\d+(\.\d+)+", oid):
        raise ParseError(f"{kind}: bad OID {oid!r}", offset=pos - 1)
    terms: list[tuple[str, str | tuple[str, ...] | None]] = []
    while True:
        keyword = take()
        if keyword == ")":
            break
        if keyword in _FLAGS:
            terms.append((keyword, None))
        elif keyword in _VALUED:
            value = take()
            if value == "(":
                items = []
                while (item := take()) != ")":
                    if item != "$":
                        items.append(item.strip("'"))
                terms.append((keyword, tuple(items)))
            else:
                terms.append((keyword, value.strip("'")))
        else:
            raise ParseError(f"{kind} {oid}: unknown keyword {keyword!r}", offset=pos - 1)
    return Definition(kind, oid, tuple(terms)), pos


def parse_schema(text: str) -> list[Definition]:
    """Parse an OpenLDAP include-format schema (comments are lines starting with '#')."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    tokens = tokenize(body)
    definitions = []
    pos = 0
    while pos < len(tokens):
        kind = tokens[pos].lower()
        if kind not in ("attributetype", "objectclass"):
            raise ParseError(f"expected attributetype or objectclass, got {tokens[pos]!r}",
                             offset=pos)
        definition, pos = parse_definition(kind, tokens, pos + 1)
        definitions.append(definition)
    return definitions


def to_ldif(definitions: list[Definition], cn: str = "dicom") -> str:
    """The cn=config entry (olcSchemaConfig) holding these definitions, RFC 2849 folded."""
    out = [
        "# Generated from dicom.schema by `python -m profiles.app_config.schema_text`.",
        "# DICOM PS3.15 H.1.3 Application Configuration schema for OpenLDAP cn=config.",
        f"dn: cn={cn},cn=schema,cn=config",
        "objectClass: olcSchemaConfig",
        f"cn: {cn}",
    ]
    for definition in definitions:
        attr = "olcAttributeTypes" if definition.kind == "attributetype" else "olcObjectClasses"
        first, *rest = definition.render(indent="  ").splitlines()
        out.append(f"{attr}: {first}")
        out.extend(rest)  # each starts with two spaces: RFC 2849 continuation keeps one
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    definitions = parse_schema(INCLUDE_FILE.read_text(encoding="utf-8"))
    LDIF_FILE.write_text(to_ldif(definitions), encoding="utf-8")
    print(f"wrote {LDIF_FILE} ({len(definitions)} definitions)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
