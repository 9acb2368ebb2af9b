"""Which zone makes the device's local time what DHCP says (profiles/time_sync/timezone.py,
G.1.1.4): option 101 by name, option 100 by the rule at the end of a zone's TZif file,
option 2 as an Etc zone when it is whole hours; else the reason nothing applies."""

from __future__ import annotations

import shutil
from pathlib import Path

from profiles.time_sync import timezone as tz

SYSTEM = Path("/usr/share/zoneinfo")


def database(tmp_path: Path) -> Path:
    """A small tz database made of this machine's files (tzdata), and odd entries."""
    root = tmp_path / "zoneinfo"
    for name in ("Europe/Berlin", "Europe/Paris", "America/New_York", "CET", "Etc/GMT-1",
                 "Asia/Kathmandu", "Etc/UTC"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SYSTEM / name, root / name)
    (root / "zone1970.tab").write_text("# not a zone\n")
    (root / "posix").mkdir()
    shutil.copy(SYSTEM / "Europe/Berlin", root / "posix" / "Berlin")  # a duplicate tree
    (root / "Old").mkdir()
    (root / "Old" / "V1").write_bytes(b"TZif\x00" + b"\x00" * 40)  # version 1: no footer
    return root


def test_a_tzif_footer_is_the_rule_between_the_last_two_newlines():
    assert tz.footer(b"TZif2" + b"\x00" * 50 + b"\nCET-1CEST,M3.5.0,M10.5.0/3\n") == \
        "CET-1CEST,M3.5.0,M10.5.0/3"
    assert tz.footer((SYSTEM / "Asia/Kathmandu").read_bytes()) == "<+0545>-5:45"
    assert tz.footer(b"TZif\x00" + b"\x00" * 40) is None  # version 1
    assert tz.footer(b"not a zone\n") is None and tz.footer(b"TZif2\x00\x00") is None


def test_option_101_by_name_when_the_database_has_it(tmp_path):
    root = database(tmp_path)
    assert tz.zone_for("Europe/Paris", "EST5EDT,M3.2.0,M11.1.0", 0, root) == (
        "Europe/Paris", "option 101")
    for odd in ("Mars/Base", "../etc/passwd", "posix/Berlin", "Europe/Paris/x", "zone1970.tab"):
        zone, why = tz.zone_for(odd, None, None, root)
        assert zone is None and why.startswith("option 101"), (odd, why)


def test_option_100_by_the_rule_a_zone_follows_region_names_first(tmp_path):
    root = database(tmp_path)
    zone, why = tz.zone_for(None, "CET-1CEST,M3.5.0,M10.5.0/3", None, root)
    assert zone == "Europe/Berlin"  # not CET (legacy), not posix/ (not a zone here)
    assert why == "option 100: Europe/Berlin follows 'CET-1CEST,M3.5.0,M10.5.0/3'"
    assert tz.zone_for("Nowhere/City", "<+0545>-5:45", None, root)[0] == "Asia/Kathmandu"
    zone, why = tz.zone_for(None, "XYZ-3", 7200, root)  # no zone follows it: option 2
    assert zone == "Etc/GMT-2" and why == "option 2: 7200 s"


def test_option_2_in_whole_hours_only_with_the_posix_sign():
    assert tz.etc_zone(3600) == "Etc/GMT-1" and tz.etc_zone(-5 * 3600) == "Etc/GMT+5"
    assert tz.etc_zone(0) == "Etc/UTC" and tz.etc_zone(14 * 3600) == "Etc/GMT-14"
    assert tz.etc_zone(5 * 3600 + 1800) is None and tz.etc_zone(15 * 3600) is None


def test_nothing_applicable_says_which_value_and_why(tmp_path):
    root = database(tmp_path)
    zone, why = tz.zone_for("Mars/Base", "XYZ-3", 19800, root)
    assert zone is None
    assert why == ("option 101 'Mars/Base': not in the tz database here; option 100 'XYZ-3': "
                   "no zone here follows that rule; option 2 19800 s: not a whole number of "
                   "hours")
    assert tz.zone_for(None, None, None, root) == (
        None, "the lease gives no time zone (options 101, 100, 2)")
