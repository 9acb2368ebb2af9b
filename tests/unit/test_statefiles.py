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
