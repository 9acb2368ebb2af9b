"""State that must survive a crash or a reboot, written atomically.

Write to a temporary file in the same directory, fsync it, rename it over the old one,
fsync the directory: a crash at any instant leaves the old file or the new one, never a
torn one (ARCHITECTURE "Persistence"). A file that does not parse — or parses to the
wrong shape, as its reader's `check` says — is reported as None and kept for a person to
look at, renamed with a `.damaged` suffix: the agent starts clean, never crashes on it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode(), mode)


MAX_STATE_FILE = 1 << 20  # bytes: no state file of ours comes near it


def read_json(path: Path, check: Callable[[Any], Any] | None = None) -> Any | None:
    """The parsed file (through `check`, which returns what to use or raises ValueError
    for a wrong shape), or None when it is missing or damaged (damage is set aside)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_STATE_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a directory in its place, no permission...
        set_aside(path, str(exc))
        return None
    try:
        if len(raw) > MAX_STATE_FILE:
            raise ValueError(f"over {MAX_STATE_FILE} bytes")
        value = json.loads(raw)
        return check(value) if check is not None else value
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError, KeyError) as exc:
        set_aside(path, f"{type(exc).__name__}: {exc}"[:200])
        return None


def set_aside(path: Path, reason: str) -> None:
    aside = path.with_name(path.name + ".damaged")
    log.warning("%s is damaged (%s); moved to %s", path, reason, aside)
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.warning("%s could not be moved aside: %s", path, exc)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
