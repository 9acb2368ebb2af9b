"""Which zoneinfo zone makes the device's local time what DHCP says (PS3.15 G.1.1.4: the
client "shall use this offset for converting between UTC and local time"). Pure over the
zoneinfo directory's files; applying the zone is the driver's.

The value in force is G.1.1.4's (sources.utc_offset_why: 101, else 100, else 2), and:
- option 101 (a tz database name) is that zone;
- option 100 (a POSIX TZ rule) is a zone of the database that follows exactly that rule
  (the POSIX string at the end of its TZif v2+ file); Region/City names before the
  legacy ones (CET, EST5EDT), then alphabetical — zones with one rule keep the same time;
- option 2 (seconds east of UTC) is `Etc/GMT-N` for N hours east (the tz database's
  POSIX sign), `Etc/UTC` for 0, when it is a whole number of hours;
- else nothing applies, and the reason says which value could not be taken and why.
"""

from __future__ import annotations

from pathlib import Path

from profiles.time_sync.sources import TZ_NAME, ZONEINFO

NOT_ZONES = {"posix", "right", "SystemV", "Etc/localtime", "localtime", "posixrules",
             "Factory"}


def footer(data: bytes) -> str | None:
    """A TZif v2+ file's POSIX TZ footer (RFC 8536 3.3: between the last two newlines),
    or None for anything else."""
    if not data.startswith(b"TZif") or data[4:5] not in (b"2", b"3", b"4") \
            or not data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n", 0, len(data) - 1)
    if start < 0:
        return None
    try:
        return data[start + 1:-1].decode("ascii")
    except UnicodeDecodeError:
        return None


def zone_names(zoneinfo_dir: Path = ZONEINFO) -> list[str]:
    """The zones of a tz database directory (TZif files), by name."""
    out = []
    for path in zoneinfo_dir.rglob("*"):
        name = path.relative_to(zoneinfo_dir).as_posix()
        if name.split("/")[0] in NOT_ZONES or name in NOT_ZONES or not path.is_file() \
                or path.is_symlink() or not TZ_NAME.fullmatch(name):
            continue
        with path.open("rb") as fh:
            if fh.read(4) == b"TZif":
                out.append(name)
    return sorted(out)


def zone_with_rule(rule: str, zoneinfo_dir: Path = ZONEINFO) -> str | None:
    """A zone whose current rule is exactly `rule` (option 100), or None."""
    found = [name for name in zone_names(zoneinfo_dir)
             if footer((zoneinfo_dir / name).read_bytes()) == rule]
    return min(found, key=lambda n: ("/" not in n, n.startswith("Etc/"), n), default=None)


def etc_zone(offset: int) -> str | None:
    """Option 2 as a zone: whole hours only, within the tz database's Etc zones."""
    if offset % 3600 or not -12 * 3600 <= offset <= 14 * 3600:
        return None
    hours = offset // 3600
    return "Etc/UTC" if hours == 0 else f"Etc/GMT{'-' if hours > 0 else '+'}{abs(hours)}"


def zone_for(source: str, tz: str | None, offset: int,
             zoneinfo_dir: Path = ZONEINFO) -> tuple[str | None, str]:
    """(the zone that makes local time what the lease says, how it was chosen) — or
    (None, why the value in force cannot be applied). `source`, `tz` and `offset` are
    G.1.1.4's value in force as sources.utc_offset_why chose it (option 101 already
    checked against the database, option 100 already evaluated), so the zone never
    disagrees with the UTC offset the agent reports."""
    if source == "dhcp-tz-name" and tz:
        return tz, "option 101"
    if source == "dhcp-posix-tz" and tz:
        zone = zone_with_rule(tz, zoneinfo_dir)
        if zone is not None:
            return zone, f"option 100: {zone} follows {tz[:64]!r}"
        return None, f"option 100 {tz[:64]!r}: no zone here follows that rule"
    if source == "dhcp-time-offset":
        zone = etc_zone(offset)
        if zone is not None:
            return zone, f"option 2: {offset} s"
        return None, f"option 2 {offset} s: not a whole number of hours"
    return None, "the lease gives no time zone (options 101, 100, 2)"
