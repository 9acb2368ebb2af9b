"""POSIX TZ strings (IEEE 1003.1 8.3, RFC 4833 option 100): validated and evaluated.

    std offset [dst [offset] [,start[/time],end[/time]]]     e.g. CET-1CEST,M3.5.0,M10.5.0/3

One implementation for the DHCP boundary (profiles.network_address.options refuses a
string `parse` refuses) and the time profile (`offset_at`). Limits: offsets 0-24 h
(minutes and seconds 0-59), and the resulting UTC offset less than a day; rules in the
Mm.w.d form only, month 1-12, week 1-5, day 0-6, transition time up to 167 h (RFC 8536
3.3.1). Anything else raises ValueError with the reason.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

MAX_OFFSET = 86399  # s: a UTC offset is less than a day (datetime.timezone's own bound)

_NAME = r"(?:<[A-Za-z0-9+-]{3,}>|[A-Za-z]{3,})"
_OFFSET = r"[+-]?\d{1,2}(?::\d{2}){0,2}"
_RULE = r"M\d{1,2}\.\d\.\d(?:/[+-]?\d{1,3}(?::\d{2}){0,2})?"
_POSIX = re.compile(rf"({_NAME})({_OFFSET})(?:({_NAME})({_OFFSET})?(?:,({_RULE}),({_RULE}))?)?")


@dataclass(frozen=True)
class Rule:
    """A DST transition rule: M<month>.<week>.<weekday>/<time>."""

    month: int
    week: int
    weekday: int
    at: int  # seconds after local midnight

    def moment(self, year: int, offset_before: int) -> float:
        """Unix time of this transition in `year`, local time read with offset_before."""
        first = dt.date(year, self.month, 1)
        day = 1 + (self.weekday - (first.weekday() + 1) % 7) % 7 + 7 * (self.week - 1)
        last = (dt.date(year + self.month // 12, self.month % 12 + 1, 1)
                - dt.timedelta(days=1)).day
        while day > last:  # week 5 means the last such weekday
            day -= 7
        local = dt.datetime(year, self.month, day, tzinfo=dt.UTC).timestamp() + self.at
        return local - offset_before


@dataclass(frozen=True)
class PosixTz:
    """A parsed POSIX TZ string."""

    std: int  # seconds east of UTC
    dst: int | None
    start: Rule | None
    end: Rule | None

    def offset_at(self, now: float) -> int:
        """Seconds east of UTC at `now`."""
        if self.dst is None or self.start is None or self.end is None:
            return self.std  # no rule given: the zone's rules are unknown, standard time
        year = dt.datetime.fromtimestamp(now, dt.UTC).year
        begins, ends = self.start.moment(year, self.std), self.end.moment(year, self.dst)
        inside = begins <= now < ends if begins < ends else not ends <= now < begins
        return self.dst if inside else self.std


def _seconds(text: str, max_hours: int = 24) -> int:
    sign = -1 if text.startswith("-") else 1
    parts = [int(p) for p in text.lstrip("+-").split(":")] + [0, 0]
    if parts[0] > max_hours or parts[1] > 59 or parts[2] > 59:
        raise ValueError(f"{text!r} is out of range (hours 0-{max_hours}, minutes and "
                         "seconds 0-59)")
    return sign * (parts[0] * 3600 + parts[1] * 60 + parts[2])


def _east(text: str) -> int:
    offset = -_seconds(text)  # POSIX offsets are west of UTC
    if abs(offset) > MAX_OFFSET:
        raise ValueError(f"an offset of {offset} s is not within a day of UTC")
    return offset


def _rule(text: str) -> Rule:
    date, _, at = text[1:].partition("/")
    month, week, weekday = (int(x) for x in date.split("."))
    if not (1 <= month <= 12 and 1 <= week <= 5 and 0 <= weekday <= 6):
        raise ValueError(f"rule {text!r}: month 1-12, week 1-5 and day 0-6")
    return Rule(month, week, weekday, _seconds(at, max_hours=167) if at else 7200)


def parse(tz: str) -> PosixTz:
    m = _POSIX.fullmatch(tz)
    if m is None:
        raise ValueError("not a POSIX TZ string (std offset[dst[offset][,Mm.w.d,Mm.w.d]])")
    _, std_off, dst, dst_off, start, end = m.groups()
    std = _east(std_off)
    if not dst:
        return PosixTz(std, None, None, None)
    daylight = _east(dst_off) if dst_off else std + 3600
    if abs(daylight) > MAX_OFFSET:
        raise ValueError(f"an offset of {daylight} s is not within a day of UTC")
    return PosixTz(std, daylight, _rule(start) if start else None,
                   _rule(end) if end else None)


def offset_at(tz: str, now: float) -> int:
    """Seconds east of UTC at `now`; ValueError when `tz` is refused by parse()."""
    return parse(tz).offset_at(now)
