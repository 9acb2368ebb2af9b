"""State that must survive a crash or a reboot, written atomically.

Write to a temporary file in the same directory, fsync it, rename it over the old one,
fsync the directory: a crash at any instant leaves the old file or the new one, never a
torn one (ARCHITECTURE "Persistence"). A file that does not parse — or parses to the
wrong shape, as its reader's `check` says — is reported as None and kept for a person to
look at, renamed with a `.damaged` suffix: the agent starts clean, never crashes on it.

A state directory that cannot be written — full, read-only, failing — is never a reason to
be off the network. `save()` is the tolerant write: a file that cannot be saved is kept in
memory (what the agent uses is unchanged), logged once, counted, listed by `unsaved()` (the
daemon's `state-not-saved`), and written by `retry_unsaved()` when the filesystem takes it
again. A failed write leaves the old file whole and no temporary file behind. An
identifier that must agree across restarts but cannot be saved is derived from
/etc/machine-id by an application-specific hash (`machine_specific`), as systemd derives
its per-application IDs, so the next start derives the same one.
"""

from __future__ import annotations

import hashlib
import hmac
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


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    atomic_write(path, _json(value), mode)


# -- writes that may fail without harm ---------------------------------------------------

_unsaved: dict[Path, tuple[bytes, int]] = {}  # path -> (what it should hold, its mode)
counters = {"save-failures": 0, "saved-later": 0}


def save(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """atomic_write, or — when the filesystem refuses (full, read-only, I/O error) — keep
    `data` for retry_unsaved(), log once per file, count it; False then. A later save of
    the same file replaces what was kept."""
    try:
        atomic_write(path, data, mode)
    except OSError as exc:
        counters["save-failures"] += 1
        if path not in _unsaved:
            log.warning("%s could not be saved (%s): kept in memory, saved when the "
                        "filesystem takes it", path, exc.strerror or exc)
        _unsaved[path] = (data, mode)
        return False
    if _unsaved.pop(path, None) is not None:
        log.info("%s saved", path)
    return True


def save_json(path: Path, value: Any, mode: int = 0o644) -> bool:
    return save(path, _json(value), mode)


def remove(path: Path) -> bool:
    """Delete a state file that is no longer true (a lost lease); a filesystem that
    refuses is logged, not raised (the file's own checks make it harmless: an expired
    lease is not used). Nothing is retried for it any more."""
    _unsaved.pop(path, None)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s could not be removed: %s", path, exc.strerror or exc)
        return False
    return True


def unsaved() -> list[Path]:
    return sorted(_unsaved)


def retry_unsaved() -> list[Path]:
    """Try every file still unsaved again; returns those that still are."""
    for path, (data, mode) in list(_unsaved.items()):
        try:
            atomic_write(path, data, mode)
        except OSError:
            continue
        if _unsaved.get(path, (None,))[0] is data:
            del _unsaved[path]
        counters["saved-later"] += 1
        log.info("%s saved (it could not be earlier)", path)
    return unsaved()


def save_identifier(path: Path, make: Callable[[bytes | None], str], purpose: str) -> str:
    """A new identifier for `path`: `make(None)` (random), saved. When the filesystem
    refuses it, `make(seed)` with the machine-specific seed of `purpose` instead — kept
    for retry_unsaved() — so that every start agrees until it can be saved."""
    value = make(None)
    if not save(path, (value + "\n").encode()):
        seed = machine_specific(purpose)
        if seed is not None:
            value = make(seed)
            save(path, (value + "\n").encode())
    return value


def machine_specific(app: str, machine_id: Path = Path("/etc/machine-id")) -> bytes | None:
    """16 bytes derived from this machine's ID for one application purpose (HMAC-SHA256
    keyed by the machine ID, as sd_id128_get_machine_app_specific): stable across
    restarts and reinstalls, different per purpose, revealing nothing of the machine ID.
    None when the machine has no usable ID."""
    try:
        raw = machine_id.read_text().strip()
        key = bytes.fromhex(raw)
    except (OSError, ValueError):
        return None
    if len(key) != 16 or not any(key):
        return None
    return hmac.new(key, app.encode(), hashlib.sha256).digest()[:16]


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
