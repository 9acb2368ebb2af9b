"""Which zone makes the device's local time what DHCP says (profiles/time_sync/timezone.py,
G.1.1.4): option 101 by name, option 100 by the rule at the end of a zone's TZif file,
option 2 as an Etc zone when it is whole hours; else the reason nothing applies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agent.config import TimeSettings
from profiles.time_sync import timezone as tz
from profiles.time_sync import timezone_io
from profiles.time_sync.sources import utc_offset_why

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


def test_the_value_in_force_chooses_the_zone(tmp_path):
    """The zone follows G.1.1.4's value in force as utc_offset_why chose it — option 101
    (checked against the database there), else 100, else 2 — so it never disagrees with
    the UTC offset reported: option 100 given and evaluated is never replaced by option
    2's zone."""
    root = database(tmp_path)
    now = 1.8e9
    for lease, zone in (
            (("Europe/Paris", "EST5EDT,M3.2.0,M11.1.0", 0), "Europe/Paris"),
            (("Mars/Base", "<+0545>-5:45", None), "Asia/Kathmandu"),  # 101 passed over
            (("zone1970.tab", None, 7200), "Etc/GMT-2"),
            ((None, "XYZ-3", 7200), None),  # 100 in force, no zone follows it
            ((None, None, None), None)):
        offset, shown, source, _ = utc_offset_why(*lease, 0, now, root)
        assert tz.zone_for(source, shown, offset, root)[0] == zone, lease


def test_option_100_by_the_rule_a_zone_follows_region_names_first(tmp_path):
    root = database(tmp_path)
    zone, why = tz.zone_for("dhcp-posix-tz", "CET-1CEST,M3.5.0,M10.5.0/3", 3600, root)
    assert zone == "Europe/Berlin"  # not CET (legacy), not posix/ (not a zone here)
    assert why == "option 100: Europe/Berlin follows 'CET-1CEST,M3.5.0,M10.5.0/3'"
    assert tz.zone_for("dhcp-posix-tz", "XYZ-3", 10800, root) == (
        None, "option 100 'XYZ-3': no zone here follows that rule")


def test_option_2_in_whole_hours_only_with_the_posix_sign():
    assert tz.etc_zone(3600) == "Etc/GMT-1" and tz.etc_zone(-5 * 3600) == "Etc/GMT+5"
    assert tz.etc_zone(0) == "Etc/UTC" and tz.etc_zone(14 * 3600) == "Etc/GMT-14"
    assert tz.etc_zone(5 * 3600 + 1800) is None and tz.etc_zone(15 * 3600) is None


def test_nothing_applicable_says_which_value_and_why(tmp_path):
    root = database(tmp_path)
    assert tz.zone_for("dhcp-time-offset", None, 19800, root) == (
        None, "option 2 19800 s: not a whole number of hours")
    assert tz.zone_for("dhcp-time-offset", None, 3600, root) == ("Etc/GMT-1", "option 2: 3600 s")
    assert tz.zone_for("preset", None, 3600, root) == (
        None, "the lease gives no time zone (options 101, 100, 2)")


def test_the_link_is_replaced_atomically_and_names_its_zone(tmp_path):
    """timezone_io: <state_dir>/localtime links to the zone, <state_dir>/timezone names it
    (0644 whatever the umask: Java reads it); an unchanged zone is not rewritten; a new
    one replaces both by renames (no moment without them), and what the C library reads
    through the link is that zone's file."""
    state = tmp_path / "state"
    state.mkdir()
    link = state / "localtime"
    assert timezone_io.current(state) is None
    old = os.umask(0o077)
    try:
        assert timezone_io.apply(state, "Europe/Berlin") is True
    finally:
        os.umask(old)
    assert os.readlink(link) == str(SYSTEM / "Europe/Berlin")
    assert timezone_io.current(state) == "Europe/Berlin"
    assert (state / "timezone").read_text() == "Europe/Berlin\n"
    assert (state / "timezone").stat().st_mode & 0o777 == 0o644
    inode = link.lstat().st_ino
    assert timezone_io.apply(state, "Europe/Berlin") is False
    assert link.lstat().st_ino == inode  # not rewritten
    (state / "timezone").write_text("Etc/UTC\n")  # one of the two out of step: both again
    assert timezone_io.apply(state, "Europe/Berlin") is True
    assert timezone_io.apply(state, "Etc/GMT+5") is True
    assert timezone_io.current(state) == "Etc/GMT+5"
    assert sorted(p.name for p in state.iterdir()) == ["localtime", "timezone"]
    date = subprocess.run(["date", "+%z"], env={"TZ": f":{link}"}, capture_output=True,
                          text=True, check=True)
    assert date.stdout.strip() == "-0500"


def test_a_link_out_of_the_database_names_no_zone(tmp_path):
    (tmp_path / "localtime").symlink_to(tmp_path / "elsewhere")
    assert timezone_io.current(tmp_path) is None
    assert timezone_io.apply(tmp_path, "Etc/UTC") is True  # and replaced
    assert timezone_io.current(tmp_path) == "Etc/UTC"


def test_set_timezone_defaults_to_the_modes_that_set_the_clock():
    assert TimeSettings(mode="sntp").applies_timezone
    assert TimeSettings(mode="chrony").applies_timezone
    assert not TimeSettings(mode="observe").applies_timezone
    assert TimeSettings(mode="observe", set_timezone=True).applies_timezone
    assert not TimeSettings(mode="sntp", set_timezone=False).applies_timezone
