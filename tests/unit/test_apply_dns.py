"""DNS applied to the device's resolver (F.1.3.4), and time following each lease
(G.1.1 order, UTC offset and its DST transitions)."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import time

from agent.adapters.timekeeping import Timekeeping, next_offset_change
from agent.config import TimeSettings
from profiles import statefile_io
from profiles.network_address import resolvconf_io
from profiles.network_address.lease import Lease
from profiles.network_address.resolvconf_io import DnsApplier


def applier(tmp_path, mode="auto") -> DnsApplier:
    etc = tmp_path / "etc-resolv.conf"
    etc.write_text("nameserver 10.9.9.9  # the image's own\n")
    a = DnsApplier(mode, "eth0", tmp_path / "run" / "resolv.conf", etc=etc)
    a.how = "etc"  # neither systemd-resolved nor resolvconf: the file itself
    return a


def test_auto_writes_the_system_file_and_puts_it_back_when_the_lease_goes(tmp_path):
    a = applier(tmp_path)
    a.apply(("192.0.2.1", "192.0.2.2"), ["hospital.test"])
    text = a.etc.read_text()
    assert "nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch hospital.test" in text
    assert a.record.read_text() == text  # the agent's record says the same
    a.withdraw()
    assert a.etc.read_text() == "nameserver 10.9.9.9  # the image's own\n"
    assert "nameserver" not in a.record.read_text()


def test_a_bind_mounted_file_is_written_in_place(tmp_path, monkeypatch):
    a = applier(tmp_path)
    inode = a.etc.stat().st_ino
    real = statefile_io.atomic_write

    def busy(path, data, mode=0o644):
        if path == a.etc:  # rename over a bind mount: EBUSY
            raise OSError(errno.EBUSY, "Device or resource busy")
        real(path, data, mode)

    monkeypatch.setattr(resolvconf_io.statefile_io, "atomic_write", busy)
    a.apply(("192.0.2.1",), [])
    assert a.etc.stat().st_ino == inode and "nameserver 192.0.2.1" in a.etc.read_text()


def test_file_and_none_leave_the_system_alone(tmp_path):
    for mode in ("file", "none"):
        a = applier(tmp_path, mode)
        a.apply(("192.0.2.1",), [])
        assert "10.9.9.9" in a.etc.read_text()
        assert "192.0.2.1" in a.record.read_text()


def lease(**kw) -> Lease:
    return Lease("192.0.2.57", 24, "192.0.2.255", "192.0.2.1", 3600, 1800.0, 3150.0,
                 1.0, time.time(), **kw)


def test_g111_order_is_evaluated_at_every_lease_event():
    keeper = Timekeeping(TimeSettings(servers=("192.0.2.13",)), "observe", "eth0")
    assert asyncio.run(keeper.follow(lease(ntp=("192.0.2.11",)), None)) == ["192.0.2.11"]
    assert keeper.report["source"] == "dhcp"
    # A rebind without option 42: the manual servers, never nothing.
    assert asyncio.run(keeper.follow(lease(), None)) == ["192.0.2.13"]
    assert keeper.report["source"] == "manual"
    keeper.heard = ["192.0.2.20"]  # autodiscovery heard a server: it comes first
    assert asyncio.run(keeper.follow(lease(ntp=("192.0.2.11",)), None)) == ["192.0.2.20"]
    assert keeper.report["source"] == "autodiscovery"
    bare = Timekeeping(TimeSettings(), "observe", "eth0")
    assert asyncio.run(bare.follow(None, None)) == [] and bare.report["source"] == "internal"


def test_the_offset_follows_the_lease_and_its_dst_rule():
    keeper = Timekeeping(TimeSettings(utc_offset=-18000), "observe", "eth0")
    assert keeper.refresh_offset(lease(time_offset=3600, options={2: b"\0\0\x0e\x10"}))
    assert keeper.report["utc_offset_s"] == 3600
    assert not keeper.refresh_offset(lease(time_offset=3600, options={2: b"\0\0\x0e\x10"}))
    assert keeper.refresh_offset(None) and keeper.report["utc_offset_s"] == -18000
    # The next transition of a rule, computed to the second.
    july = dt.datetime(2026, 7, 1, tzinfo=dt.UTC).timestamp()
    when = next_offset_change(lease(tz_posix="CET-1CEST,M3.5.0,M10.5.0/3"), july)
    assert dt.datetime.fromtimestamp(when, dt.UTC) == dt.datetime(2026, 10, 25, 1, 0,
                                                                    tzinfo=dt.UTC)
    assert next_offset_change(lease(time_offset=3600), july) is None
