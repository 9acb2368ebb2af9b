"""Server choice, UTC offset and the clock guards (PS3.15 G.1.1, G.1.4)."""

from __future__ import annotations

import datetime as dt
import shutil
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.time_sync.sources import (
    choose_servers,
    clock_guards,
    posix_tz_offset,
    utc_offset,
)

JULY, JANUARY = 1_782_864_000.0, 1_768_435_200.0  # 2026-07-01, 2026-01-15 (UTC)


@pytest.mark.parametrize("heard,dhcp,manual,expected", [
    (["192.0.2.20"], ["192.0.2.11"], ["ntp.x"], ("autodiscovery", ["192.0.2.20"])),
    ([], ["192.0.2.11"], ["ntp.x"], ("dhcp", ["192.0.2.11"])),
    ([], [], ["ntp.x"], ("manual", ["ntp.x"])),
    ([], [], [], ("internal", [])),
])
def test_server_sources_in_g111_order(heard, dhcp, manual, expected):
    assert choose_servers(heard, dhcp, manual) == expected


def test_utc_offset_prefers_101_then_100_then_2_then_preset(tmp_path):
    zones = tmp_path / "zoneinfo"
    (zones / "Europe").mkdir(parents=True)
    shutil.copy("/usr/share/zoneinfo/Europe/Berlin", zones / "Europe" / "Berlin")
    assert utc_offset("Europe/Berlin", "EST5", 60, 0, JULY, zones) == (
        7200, "Europe/Berlin", "dhcp-tz-name")
    # A name the local database lacks, or a path trick, falls through to option 100.
    for name in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime"):
        assert utc_offset(name, "EST5", 60, 0, JULY, zones) == (-18000, "EST5",
                                                                 "dhcp-posix-tz")
    assert utc_offset(None, "garbage", 3600, 0, JULY, zones) == (3600, None,
                                                                 "dhcp-time-offset")
    assert utc_offset(None, None, None, -7200, JULY, zones) == (-7200, None, "preset")


@pytest.mark.parametrize("tz,when,expected", [
    ("CET-1CEST,M3.5.0,M10.5.0/3", JULY, 7200),
    ("CET-1CEST,M3.5.0,M10.5.0/3", JANUARY, 3600),
    ("EST5EDT,M3.2.0,M11.1.0", JULY, -14400),
    ("<+0530>-5:30", JULY, 19800),
    ("AEST-10AEDT,M10.1.0,M4.1.0/3", JANUARY, 39600),
    ("AEST-10AEDT,M10.1.0,M4.1.0/3", JULY, 36000),
    ("UTC0", JULY, 0),
])
def test_posix_tz_strings(tz, when, expected):
    assert posix_tz_offset(tz, when) == expected


@settings(max_examples=200, deadline=None)
@given(st.floats(1_600_000_000, 2_050_000_000))
def test_posix_rules_agree_with_the_tz_database(when):
    moment = dt.datetime.fromtimestamp(when, dt.UTC)
    for tz, name in [("CET-1CEST,M3.5.0,M10.5.0/3", "Europe/Berlin"),
                     ("EST5EDT,M3.2.0,M11.1.0", "America/New_York"),
                     ("AEST-10AEDT,M10.1.0,M4.1.0/3", "Australia/Sydney")]:
        expected = moment.astimezone(zoneinfo.ZoneInfo(name)).utcoffset().total_seconds()
        assert posix_tz_offset(tz, when) == expected, (tz, moment)


def fake_proc(tmp_path, comms: dict[int, str], same_ns: bool | None):
    proc = tmp_path / "proc"
    for pid, comm in comms.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / "1" / "ns").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "ns").mkdir(parents=True)
    if same_ns is not None:
        (proc / "1" / "ns" / "net").write_text("a")
        if same_ns:
            (proc / "self" / "ns" / "net").hardlink_to(proc / "1" / "ns" / "net")
        else:
            (proc / "self" / "ns" / "net").write_text("b")
    return proc


def test_clock_guards(tmp_path):
    assert clock_guards(fake_proc(tmp_path / "a", {1: "systemd", 40: "sshd"}, True)) == []
    assert clock_guards(fake_proc(tmp_path / "b", {1: "init", 77: "chronyd"}, True)) == [
        "other-ntp-client: chronyd (pid 77)"]
    assert clock_guards(fake_proc(tmp_path / "c", {1: "init"}, False)) == [
        "network-namespace: the clock is the host's"]
    # PID 1's namespace unreadable: ours is compared with the initial one's fixed inode
    # (a fake file is never that inode), and nothing readable at all means "initial".
    assert clock_guards(fake_proc(tmp_path / "d", {1: "init"}, None)) == []
    proc = fake_proc(tmp_path / "e", {1: "init"}, False)
    (proc / "1" / "ns" / "net").unlink()
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "osrelease").write_text("6.18.44-fc-v1252\n")
    assert clock_guards(proc) == ["network-namespace: the clock is the host's"]
    # A kernel from before the fixed inode (Debian 12's 6.1, as the VM runs it): the
    # service user cannot read PID 1's namespace and cannot tell, so no guard (found on a
    # real machine: the agent refused to set the clock under its own unit).
    (proc / "sys" / "kernel" / "osrelease").write_text("6.1.0-50-amd64\n")
    assert clock_guards(proc) == []


def test_no_cap_sys_time_is_a_guard(tmp_path):
    proc = fake_proc(tmp_path / "f", {1: "systemd"}, True)
    (proc / "self" / "status").write_text("Name:\tdicom-agent\nCapEff:\t0000000000003000\n")
    assert clock_guards(proc) == ["no CAP_SYS_TIME (the unit's sntp drop-in grants it)"]
    (proc / "self" / "status").write_text("CapEff:\t0000000002003000\n")  # bit 25 set
    assert clock_guards(proc) == []


def test_guards_see_the_lab_from_here():
    # This test process runs in the machine's own namespace: no namespace guard.
    assert not any(r.startswith("network-namespace") for r in clock_guards())


def test_the_offset_bound_is_the_posix_tz_parsers_own():
    # sources keeps its own copy so that importing it does not import the parser.
    from profiles import posix_tz
    from profiles.time_sync import sources

    assert sources.MAX_OFFSET == posix_tz.MAX_OFFSET


def test_the_manual_servers_are_a_backup_while_every_discovered_server_is_silent():
    """G.1.1.1: manual configuration "shall be provided as a backup"."""
    from profiles.time_sync.sources import ManualBackup

    b = ManualBackup(["192.0.2.99"])
    dhcp = ["192.0.2.11", "192.0.2.12"]
    assert b.servers("dhcp", dhcp, ["192.0.2.99"]) == dhcp  # not while they answer
    assert not b.after("dhcp", dhcp, {"192.0.2.12"})
    assert b.after("dhcp", dhcp, set())  # a round where none answered: backup on
    assert b.servers("dhcp", dhcp, ["192.0.2.99"]) == [*dhcp, "192.0.2.99"]
    assert not b.after("dhcp", dhcp, {"192.0.2.99"})  # the manual one alone: still on
    assert b.after("dhcp", dhcp, {"192.0.2.11", "192.0.2.99"})  # one is back: off
    assert b.servers("dhcp", dhcp, ["192.0.2.99"]) == dhcp
    # The manual servers in force themselves, nothing configured, no servers: no backup.
    assert not b.after("manual", ["192.0.2.99"], set()) and not b.active
    assert not ManualBackup([]).after("dhcp", dhcp, set())
    assert not b.after("dhcp", [], set()) and not b.active
