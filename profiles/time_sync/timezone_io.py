"""The local time zone applied (PS3.15 G.1.1.4), in the agent's state directory:
- `localtime`, a symbolic link to the zone's file in the tz database, replaced
  atomically (a new link renamed over the old one: a reader sees the old zone or the new
  one, never none) — what the C library reads;
- `timezone`, the zone's name and a newline, 0644, replaced the same way — Debian's
  /etc/timezone, which Java reads before /etc/localtime.

The system's /etc/localtime (and /etc/timezone where the image has one) link to these
(the package's tmpfiles.d lines, made at install), so the agent changes the device's
local time without write access to /etc and without timedated or polkit. `timedatectl`
shows no zone name for a link that does not point into /usr/share/zoneinfo itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from profiles.time_sync.timezone import ZONEINFO


def current(directory: Path, zoneinfo_dir: Path = ZONEINFO) -> str | None:
    """The zone `localtime` names, or None (no link, or not into the tz database)."""
    try:
        target = Path(os.readlink(directory / "localtime"))
    except OSError:
        return None
    return target.relative_to(zoneinfo_dir).as_posix() \
        if target.is_relative_to(zoneinfo_dir) else None


def apply(directory: Path, zone: str, zoneinfo_dir: Path = ZONEINFO) -> bool:
    """Both files made to name `zone` (a name zone_for chose: inside the database); True
    when the zone changed. OSError when the directory refuses."""
    name = directory / "timezone"
    try:
        named = name.read_text()
    except (OSError, UnicodeDecodeError):
        named = None
    if current(directory, zoneinfo_dir) == zone and named == f"{zone}\n":
        return False
    fresh = directory / ".timezone.new"
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)  # readable by every program, whatever the umask
        os.write(fd, f"{zone}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(fresh, name)
    link = directory / ".localtime.new"
    link.unlink(missing_ok=True)
    link.symlink_to(zoneinfo_dir / zone)
    os.replace(link, directory / "localtime")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the renames survive a power cut
    finally:
        os.close(fd)
    return True
