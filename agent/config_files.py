"""Which configuration files are read, in what order, and how they merge — the drop-in
convention of systemd, sysctl.d and chrony's `confdir`, so that a vendor's package ships
its device's AEs without touching the file the site edits.

Without `--config`: every `/usr/lib/dicom-agent/agent.toml.d/*.toml` (the vendor's
defaults), then `/etc/dicom-agent/agent.toml`, then every `/etc/dicom-agent/agent.toml.d/
*.toml` (the site's), each directory in name order; a file in `/etc/...d/` masks the one of
the same name in `/usr/lib/...d/`. With `--config FILE`: FILE, then `FILE.d/*.toml` when
that directory exists — never the system directories.

Merging, file after file: tables merge key by key; a later scalar or array replaces the
earlier one; `[[device.connection]]` entries merge by `name` and `[[device.ae]]` entries by
`key` (by `title`, else `title_template`, when there is no `key`): a later entry with the
same identity merges into the earlier one, a new one is added after. Every value remembers
the file (and line) it came from: errors name it (`FILE[:LINE]: key.path: reason`) and
`check-config --show` prints it.

Each file is untrusted bytes: a UTF-8 byte-order mark, another encoding, a TOML syntax
error, nesting too deep or a number too large for TOML's integers is a ConfigError naming
the file, never a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiles.errors import ConfigError

VENDOR_DIR = Path("/usr/lib/dicom-agent/agent.toml.d")
MAIN = Path("/etc/dicom-agent/agent.toml")
SITE_DIR = Path("/etc/dicom-agent/agent.toml.d")
MAX_FILE = 1 << 20  # bytes: a configuration is a few KiB
# Arrays of tables that merge entry by entry, and what identifies an entry.
IDENTITY = {"device.connection": ("name",), "device.ae": ("key", "title", "title_template")}


@dataclass(frozen=True, slots=True)
class Where:
    """The file a value came from, and its line when known."""

    file: Path
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else str(self.file)


def files(config: Path | None, root: Path = Path("/")) -> list[Path]:
    """The files read, in order. `root` prefixes the system paths (tests, images)."""
    if config is not None:
        drop = config.with_name(config.name + ".d")
        return [config, *sorted(drop.glob("*.toml"))] if drop.is_dir() else [config]

    def inside(path: Path) -> Path:
        return root / path.relative_to("/")

    site = sorted(inside(SITE_DIR).glob("*.toml")) if inside(SITE_DIR).is_dir() else []
    masked = {p.name for p in site}
    vendor = [p for p in sorted(inside(VENDOR_DIR).glob("*.toml")) if p.name not in masked] \
        if inside(VENDOR_DIR).is_dir() else []
    return [*vendor, inside(MAIN), *site]


# -- reading one file -----------------------------------------------------------------------

def read(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(its TOML data, the line of each key path); ConfigError naming the file."""
    import tomllib  # only with a file: `dhcp --interface` has none

    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_FILE:
        raise ConfigError([(str(path), f"larger than {MAX_FILE} bytes: not a configuration")])
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ConfigError([(f"{path}:1", "starts with a UTF-8 byte-order mark (TOML has "
                                         "none): save the file without it")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([(f"{path}:{line}", f"not UTF-8 (byte {exc.start}): TOML files "
                                              "are UTF-8")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"at line (\d+)", str(exc))
        raise ConfigError([(f"{path}:{where.group(1)}" if where else str(path),
                            f"TOML syntax: {exc}")]) from None
    except RecursionError:
        raise ConfigError([(str(path), "nested too deeply")]) from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise ConfigError([(str(path), f"not a configuration: {str(exc)[:120]}")]) from None
    return data, key_lines(text)


_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


def key_lines(text: str) -> dict[str, int]:
    """The line of each table header and key, by the path _Table names it
    (`network.interface`, `device.ae[1]`, `device.ae[1].title`). Headers and plain
    `key =` lines are enough for a configuration; anything else is simply not found."""
    lines: dict[str, int] = {}
    counters: dict[str, int] = {}  # indexed array path -> entries so far
    current: dict[str, int] = {}  # plain array path -> the index of its latest entry
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            parts = [p.strip().strip("\"'") for p in header.group(2).split(".")]
            indexed, plain = "", ""
            for i, part in enumerate(parts):
                plain = f"{plain}.{part}" if plain else part
                indexed = f"{indexed}.{part}" if indexed else part
                last = i == len(parts) - 1
                if last and header.group(1) == "[[":
                    n = counters.get(indexed, 0)
                    counters[indexed] = n + 1
                    current[plain] = n
                    indexed = f"{indexed}[{n}]"
                elif plain in current:
                    indexed = f"{indexed}[{current[plain]}]"
            table = indexed
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key and not line.lstrip().startswith("#"):
            name = key.group(1).strip("\"'")
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


# -- merging --------------------------------------------------------------------------------

def _plain(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _identity(plain: str, entry: dict) -> tuple[str, Any] | None:
    for field in IDENTITY[plain]:
        if isinstance(entry.get(field), str | int):
            return field, entry[field]
    return None


def _tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class Merged:
    """The merged data and where each value (and table) came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[str, Where] = {}

    def add(self, data: dict[str, Any], path: Path, lines: dict[str, int]) -> None:
        self._into(self.data, data, path, lines, "", "")

    def _forget(self, prefix: str) -> None:
        for key in [k for k in self.origin if k == prefix or k.startswith((prefix + ".",
                                                                         prefix + "["))]:
            del self.origin[key]

    def _into(self, dst: dict, src: dict, path: Path, lines: dict[str, int], merged: str,
              local: str) -> None:
        for key, value in src.items():
            mk, fk = _join(merged, key), _join(local, key)
            where = Where(path, lines.get(fk))
            if isinstance(value, dict):
                if not isinstance(dst.get(key), dict):
                    self._forget(mk)
                    dst[key] = {}
                    self.origin[mk] = where
                self._into(dst[key], value, path, lines, mk, fk)
            elif _tables(value) and _plain(mk) in IDENTITY and _tables(dst.get(key)):
                for i, entry in enumerate(value):
                    ident = _identity(_plain(mk), entry)
                    same = [n for n, old in enumerate(dst[key])
                            if ident is not None and _identity(_plain(mk), old) == ident]
                    if same:
                        n = same[0]
                    else:
                        n = len(dst[key])
                        dst[key].append({})
                        self.origin[f"{mk}[{n}]"] = Where(path, lines.get(f"{fk}[{i}]"))
                    self._into(dst[key][n], entry, path, lines, f"{mk}[{n}]", f"{fk}[{i}]")
            elif _tables(value):
                self._forget(mk)
                dst[key] = []
                self.origin[mk] = where
                for i, entry in enumerate(value):
                    dst[key].append({})
                    self.origin[f"{mk}[{i}]"] = Where(path, lines.get(f"{fk}[{i}]"))
                    self._into(dst[key][i], entry, path, lines, f"{mk}[{i}]", f"{fk}[{i}]")
            else:
                self._forget(mk)
                dst[key] = value
                self.origin[mk] = where

    def where(self, key: str, fallback: Path) -> Where:
        """Where the value at `key` came from — or the nearest table above it that came
        from a file (a missing key: the table that lacks it) — else `fallback`."""
        path = key
        while True:
            if path in self.origin:
                return self.origin[path]
            shorter = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", path)
            if shorter in (path, ""):
                return Where(fallback)
            path = shorter


def load(paths: list[Path], required: Path | None = None) -> tuple[Merged, list[Path]]:
    """The merged data of `paths`; a missing file is skipped unless it is `required`.
    ConfigError, naming the file, for the first file that cannot be read."""
    merged = Merged()
    read_files = []
    for path in paths:
        if path != required and not path.exists():
            continue
        data, lines = read(path)
        try:
            merged.add(data, path, lines)
        except RecursionError:
            raise ConfigError([(str(path), "nested too deeply")]) from None
        read_files.append(path)
    return merged, read_files


def attributed(exc: ConfigError, merged: Merged, fallback: Path) -> ConfigError:
    """The same errors, each naming the file (and line) its value came from."""
    return ConfigError([(f"{merged.where(key, fallback)}: {key}", reason)
                        for key, reason in exc.errors])


# -- check-config --show --------------------------------------------------------------------

def render(merged: Merged) -> str:
    """The merged configuration as TOML, each value followed by the file it came from."""
    out: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} = {scalar(v)}" for k, v in value.items()) + "}"
        return str(value) if not hasattr(value, "isoformat") else value.isoformat()

    def table(data: dict, path: str, header: str | None) -> None:
        plain = {k: v for k, v in data.items() if not isinstance(v, dict) and not _tables(v)}
        if header is not None:
            out.extend(["", f"{header}  # {merged.where(path, Path('?'))}"])
        for key, value in plain.items():
            out.append(f"{key} = {scalar(value)}  # {merged.where(_join(path, key), Path('?'))}")
        for key, value in data.items():
            if isinstance(value, dict):
                table(value, _join(path, key), f"[{_plain(_join(path, key))}]")
            elif _tables(value):
                for i, entry in enumerate(value):
                    table(entry, f"{_join(path, key)}[{i}]", f"[[{_plain(_join(path, key))}]]")

    table(merged.data, "", None)
    return "\n".join(out).lstrip("\n") + "\n"
