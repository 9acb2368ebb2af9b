"""Which NTP servers, which UTC offset, and whether the clock may be touched (PS3.15 G.1.1).

Pure decisions over what DHCP, the configuration and the machine say:

- `choose_servers`: autodiscovery (NTP broadcasts heard), else DHCP option 42, else the
  manual servers, else the internal clock (G.1.1.1-5); the source is always named.
  `ManualBackup`: the manual servers also as G.1.1.1's backup, while every server of
  the higher source is silent.
- `utc_offset`: option 101 (a tz database name the local database has), else option 100
  (a POSIX TZ string), else option 2, else the preset (G.1.1.4-5). The system clock
  stays UTC either way (G.1.1.6): this is only reported.
- `clock_guards`: reasons not to adjust the clock — another NTP client is running (G.1.4:
  NTP and SNTP together are "not recommended"), or this is not PID 1's network
  namespace, whose clock is the host's.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from profiles.procfs_io import processes

ZONEINFO = Path("/usr/share/zoneinfo")
OTHER_NTP_CLIENTS = ("chronyd", "ntpd", "systemd-timesyncd", "openntpd")
PROC_NET_INIT_INO = 0xEFFFFFF9  # include/linux/proc_ns.h: init_net's namespace inode
FIXED_NET_INO_SINCE = (6, 18)  # the kernel that gave init_net that fixed inode
TZ_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")


def choose_servers(heard: list[str], dhcp: tuple[str, ...] | list[str],
                   manual: tuple[str, ...] | list[str]) -> tuple[str, list[str]]:
    if heard:
        return "autodiscovery", list(heard)
    if dhcp:
        return "dhcp", list(dhcp)
    if manual:
        return "manual", list(manual)
    return "internal", []


class ManualBackup:
    """G.1.1.1: manual configuration "shall be provided as a backup". While the servers
    of a higher source (autodiscovery, option 42) are in use and none of them answered a
    round, the manual servers are asked too; once one of those answers again they are
    dropped. Sans-IO: `after` takes each round's outcome, `servers` says what to ask."""

    def __init__(self, manual: list[str] | tuple[str, ...]):
        self.manual = list(manual)
        self.active = False

    def applies(self, source: str) -> bool:
        return bool(self.manual) and source in ("autodiscovery", "dhcp")

    def servers(self, source: str, primary: list[str], manual: list[str]) -> list[str]:
        """What to ask: the primary servers, with `manual` (resolved) while active."""
        if not (self.active and self.applies(source)):
            return list(primary)
        return list(primary) + [m for m in manual if m not in primary]

    def after(self, source: str, primary: list[str], answered: set[str]) -> bool:
        """A round's outcome (the addresses that answered it); True when the set of
        servers to ask changes."""
        before = self.active
        if not self.applies(source) or not primary:
            self.active = False
        else:
            self.active = not (answered & set(primary))
        return self.active != before


MAX_OFFSET = 86399  # s: less than a day, as profiles.posix_tz.MAX_OFFSET


def utc_offset(tz_name: str | None, tz_posix: str | None, time_offset: int | None,
               preset: int, now: float, zoneinfo_dir: Path = ZONEINFO
               ) -> tuple[int, str | None, str]:
    """(seconds east of UTC now, the tz shown, which source) by G.1.1.4's order."""
    offset, tz, source, _ = utc_offset_why(tz_name, tz_posix, time_offset, preset, now,
                                           zoneinfo_dir)
    return offset, tz, source


def utc_offset_why(tz_name: str | None, tz_posix: str | None, time_offset: int | None,
                   preset: int, now: float, zoneinfo_dir: Path = ZONEINFO
                   ) -> tuple[int, str | None, str, str | None]:
    """utc_offset(), plus why a value the server sent was passed over (None when none
    was): a value that cannot be evaluated falls through to the next source, never
    raises (PS3.15 G.1.1.4-5)."""
    reasons = []
    if tz_name:
        if TZ_NAME.fullmatch(tz_name) and ".." not in tz_name:
            path = zoneinfo_dir / tz_name
            if path.is_file() and path.resolve().is_relative_to(zoneinfo_dir.resolve()):
                import zoneinfo  # only for option 101: it reads sysconfig at import

                try:
                    with path.open("rb") as fh:
                        zone = zoneinfo.ZoneInfo.from_file(fh, key=tz_name)
                    offset = dt.datetime.fromtimestamp(now, dt.UTC).astimezone(
                        zone).utcoffset()
                    return int(offset.total_seconds()), tz_name, "dhcp-tz-name", None
                except (ValueError, OSError, OverflowError):
                    pass
        reasons.append(f"option 101 {tz_name[:64]!r}: not in the tz database here")
    if tz_posix:
        try:
            offset = posix_tz_offset(tz_posix, now, strict=True)
        except ValueError as exc:
            offset = None
            reasons.append(f"option 100 {tz_posix[:64]!r}: {exc}")
        if offset is not None:
            return offset, tz_posix, "dhcp-posix-tz", _why(reasons)
    if time_offset is not None:
        if abs(time_offset) <= MAX_OFFSET:
            return time_offset, None, "dhcp-time-offset", _why(reasons)
        reasons.append(f"option 2 {time_offset}: not within a day of UTC")
    return preset, None, "preset", _why(reasons)


def _why(reasons: list[str]) -> str | None:
    return "; ".join(reasons) or None


def lease_zone(lease) -> tuple[str | None, str | None, int | None]:
    """What a lease says of local time: options 101, 100 and 2 — option 2 as the server
    sent it (a lease's time_offset may be Table F.1-2's default, the preset, standing in
    for an absent or rejected option)."""
    if lease is None:
        return None, None, None
    sent = 2 in lease.options and 2 not in lease.rejected
    return lease.tz_name, lease.tz_posix, lease.time_offset if sent else None


def offset_and_control(lease, preset: int, mode: str, now: float) -> dict:
    """The status `time` fields every mode shares: the UTC offset (G.1.1.4-5) from the
    lease or the preset (with the reason a server's value was passed over), the local
    time, and whether the clock may be adjusted."""
    offset, tz, source, why = utc_offset_why(*lease_zone(lease), preset, now)
    if lease is not None:  # what the DHCP boundary refused already, with its reason
        refused = [n for n in lease.notes if n.startswith(("option 101:", "option 100:",
                                                            "option 2:"))]
        why = "; ".join(filter(None, [*refused, why])) or None
    guards = clock_guards()
    local = dt.datetime.fromtimestamp(now, dt.timezone(dt.timedelta(seconds=offset)))
    return {"utc_offset_s": offset, "tz": tz, "utc_offset_source": source,
            "utc_offset_reason": why, "local_time": local.isoformat(timespec="seconds"),
            "clock_control": {"allowed": mode == "sntp" and not guards, "guards": guards}}


def posix_tz_offset(tz: str, now: float, strict: bool = False) -> int | None:
    """Seconds east of UTC at `now` under a POSIX TZ string; None when it does not parse
    or cannot be evaluated (with `strict`, a ValueError says why)."""
    from profiles import posix_tz  # only for option 100: its rules cost ~3 ms to import

    try:
        return posix_tz.offset_at(tz, now)
    except ValueError:
        if strict:
            raise
        return None


CAP_SYS_TIME = 25  # linux/capability.h


def has_sys_time(proc: Path = Path("/proc")) -> bool:
    """Whether this process may set the clock (CapEff in /proc/self/status); True when
    that cannot be read (then the actuator's own error says so)."""
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_TIME & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


def clock_guards(proc: Path = Path("/proc")) -> list[str]:
    """Reasons the clock must be left alone; empty when it may be adjusted."""
    reasons = []
    for pid, comm in processes(proc):
        if comm in OTHER_NTP_CLIENTS:
            reasons.append(f"other-ntp-client: {comm} (pid {pid})")
            break
    if not has_sys_time(proc):
        reasons.append("no CAP_SYS_TIME (the unit's sntp drop-in grants it)")
    try:
        ours = os.stat(proc / "self" / "ns" / "net").st_ino
    except OSError:
        return reasons  # cannot tell: running as a service in the initial namespace
    try:
        initial = os.stat(proc / "1" / "ns" / "net").st_ino
    except OSError:
        # PID 1's namespace is not readable (the service's own user; a sandbox). Since
        # Linux 6.18 the initial network namespace has a fixed inode number: compare with
        # that. Before, it was numbered like any other, and there is no telling (as a
        # service, the agent runs in PID 1's).
        if ours == PROC_NET_INIT_INO or kernel_release(proc) < FIXED_NET_INO_SINCE:
            return reasons
        initial = PROC_NET_INIT_INO
    if ours != initial:
        reasons.append("network-namespace: the clock is the host's")
    return reasons


def kernel_release(proc: Path = Path("/proc")) -> tuple[int, int]:
    """The running kernel's (major, minor), (0, 0) when unreadable."""
    try:
        release = (proc / "sys" / "kernel" / "osrelease").read_text()
        major, minor = release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except (OSError, ValueError):
        return (0, 0)
