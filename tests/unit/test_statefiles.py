"""State files are inputs too: garbage, and valid JSON of the wrong shape, are set aside
as `.damaged` and the reader starts clean (issue 10)."""

from __future__ import annotations

import json

import pytest

from profiles import statefile_io
from profiles.app_config.cache_io import LookupCache
from profiles.app_config.records_io import read_directory_record
from profiles.network_address.dhcp_io import Paths, load_saved_lease

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("content", [
    "", "{", "\x00\xff", DEEP, "[]", '{"lease": []}', '{"lease": {"options": []}}',
    '{"boot_id": 5, "lease": {}}', '"text"', "1e999",
])
def test_a_lease_file_of_any_wrong_shape_is_a_clean_start(tmp_path, content):
    paths = Paths(tmp_path, tmp_path, "eth0")
    paths.lease_file.write_text(content)
    assert load_saved_lease(paths) == (None, False)
    assert not paths.lease_file.exists()
    assert (tmp_path / "lease-eth0.json.damaged").read_text() == content


@pytest.mark.parametrize("record", [
    [], {"titles": "CT01"}, {"titles": [1]}, {"titles": ["CT\\01"]}, {"titles": [""]},
    {"server": 5}, {"device_dn": ["x"]}, {"titles": ["X" * 17]},
])
def test_a_directory_record_of_the_wrong_shape_is_a_clean_start(tmp_path, record):
    (tmp_path / "directory.json").write_text(json.dumps(record))
    assert read_directory_record(tmp_path) == {}
    assert (tmp_path / "directory.json.damaged").exists()


def test_a_good_directory_record_is_read(tmp_path):
    record = {"server": "ldap://x", "base_dn": "cn=DICOM Configuration,dc=x",
              "device_dn": "dicomDeviceName=CT01,cn=Devices,cn=DICOM Configuration,dc=x",
              "titles": ["CT01_SCU", "CT,+*()=#;1"]}
    statefile_io.write_json(tmp_path / "directory.json", record)
    assert read_directory_record(tmp_path) == record


@pytest.mark.parametrize("record", [
    {"answer": []}, {"answer": {"aet": "ARCHIVE", "found": True}},
    {"answer": {"aet": "ARCHIVE", "found": True, "connections": [{"hostname": 1}]}},
    {"answer": {"aet": "OTHER", "found": True, "connections": []}},  # another title's
])
def test_a_cached_answer_of_the_wrong_shape_is_not_served(tmp_path, record):
    cache = LookupCache(tmp_path)
    path = cache._path("ARCHIVE")
    path.write_text(json.dumps({"fetched_at": 1.0, **record}))
    assert cache.get("ARCHIVE") is None


def test_an_oversized_or_unreadable_file_is_set_aside(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (statefile_io.MAX_STATE_FILE + 1) + b"{}")
    assert statefile_io.read_json(big) is None and (tmp_path / "big.json.damaged").exists()
    (tmp_path / "dir.json").mkdir()
    assert statefile_io.read_json(tmp_path / "dir.json") is None


class Refusing:
    """A filesystem that refuses writes (ENOSPC when full, EROFS when read-only) until
    `recover()`: the temporary file is made and its write fails, as on a full tmpfs."""

    def __init__(self, monkeypatch, code: int):
        import errno
        import os
        self.code, self.errno, self.real = code, errno, os.fdopen
        self.refusing = True
        monkeypatch.setattr(statefile_io.os, "fdopen", self.fdopen)

    def fdopen(self, fd, mode="r", *args, **kwargs):
        fh = self.real(fd, mode, *args, **kwargs)
        if self.refusing:
            def write(data):
                raise OSError(self.code, "No space left on device")
            fh.write = write
        return fh

    def recover(self) -> None:
        self.refusing = False


@pytest.fixture
def clean_unsaved(monkeypatch):
    monkeypatch.setattr(statefile_io, "_unsaved", {})
    monkeypatch.setattr(statefile_io, "counters", {"save-failures": 0, "saved-later": 0})


@pytest.mark.parametrize("code", [28, 30])  # ENOSPC, EROFS
def test_a_refused_save_keeps_the_old_file_whole_and_is_saved_when_space_returns(
        tmp_path, monkeypatch, clean_unsaved, code):
    path = tmp_path / "lease-eth0.json"
    assert statefile_io.save_json(path, {"lease": 1})
    disk = Refusing(monkeypatch, code)
    assert statefile_io.save_json(path, {"lease": 2}) is False
    assert statefile_io.save_json(path, {"lease": 3}) is False  # the newest is kept
    assert json.loads(path.read_text()) == {"lease": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["lease-eth0.json"]  # no temp left
    assert statefile_io.unsaved() == [path] and statefile_io.counters["save-failures"] == 2
    assert statefile_io.retry_unsaved() == [path]  # still refused
    disk.recover()
    assert statefile_io.retry_unsaved() == []
    assert json.loads(path.read_text()) == {"lease": 3}
    assert statefile_io.counters["saved-later"] == 1
    # A file removed while unsaved is not written back later.
    disk.refusing = True
    statefile_io.save_json(path, {"lease": 4})
    statefile_io.remove(path)
    disk.recover()
    assert statefile_io.retry_unsaved() == [] and not path.exists()


def test_machine_specific_ids_are_stable_per_purpose_and_need_a_machine_id(tmp_path):
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    one = statefile_io.machine_specific("dicom-agent device-id", machine)
    assert one == statefile_io.machine_specific("dicom-agent device-id", machine)
    assert len(one) == 16
    assert one != statefile_io.machine_specific("dicom-agent dhcp client-id", machine)
    assert bytes.fromhex("0123456789abcdef0123456789abcdef") not in one  # not revealed
    for content in ("", "uninitialized\n", "0" * 32 + "\n", "0123"):
        machine.write_text(content)
        assert statefile_io.machine_specific("x", machine) is None
    assert statefile_io.machine_specific("x", tmp_path / "absent") is None


def test_identifiers_that_cannot_be_saved_come_from_the_machine_id(
        tmp_path, monkeypatch, clean_unsaved):
    import random

    from profiles.app_config import records_io
    from profiles.network_address import dhcp_io
    from profiles.network_address.dhcp_client import generate_client_id

    machine = tmp_path / "machine-id"
    machine.write_text("00112233445566778899aabbccddeeff\n")
    real = statefile_io.machine_specific
    monkeypatch.setattr(statefile_io, "machine_specific",
                        lambda purpose: real(purpose, machine))
    state = tmp_path / "state"
    Refusing(monkeypatch, 28)
    paths = Paths(state, tmp_path, "eth0")
    ids = {dhcp_io.load_or_make_client_id(
        paths, lambda uuid: generate_client_id("eth0", random.Random(), uuid))
        for _ in range(3)}
    (client_id,) = ids  # every start agrees, though random ids were tried
    assert client_id[7:] == real("dicom-agent dhcp client-id", machine)
    devices = {records_io.load_or_make_device_id(state) for _ in range(3)}
    assert devices == {real("dicom-agent device-id", machine).hex()}
    assert sorted(p.name for p in statefile_io.unsaved()) == ["client-id", "device-id"]
