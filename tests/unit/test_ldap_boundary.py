"""The LDAP boundary: what a server answers is checked for presence and type before use;
an odd value is an OddEntry (a DirectoryError) naming the entry (issue 10)."""

from __future__ import annotations

import pytest

from profiles.app_config.ldap_io import (
    DirectoryError,
    OddEntry,
    _boolean,
    _many,
    _one,
    _port,
    _title,
)

DN = "dicomAETitle=X,dicomDeviceName=D,cn=Devices,cn=DICOM Configuration,dc=x"


@pytest.mark.parametrize("entry,check", [
    ({}, lambda e: _one(e, "cn")),                                   # cn missing
    ({"cn": []}, lambda e: _one(e, "cn")),
    ({"dicomaetitle": ["A\x00B"]}, _title),                        # NUL
    ({"dicomaetitle": ["X" * 17]}, _title),                         # too long
    ({"dicomaetitle": ["A\\B"]}, _title),                           # backslash
    ({"dicomaetitle": ["   "]}, _title),                            # only spaces
    ({"dicomport": ["99999"]}, _port), ({"dicomport": ["-1"]}, _port),
    ({"dicomport": ["104x"]}, _port),
    ({"dicominstalled": ["YES"]}, lambda e: _boolean(e, "dicomInstalled")),
    ({"dicomhostname": [b"\xff\xfe"]}, lambda e: _one(e, "dicomHostname")),  # not UTF-8
    ({"dicomhostname": ["h" * 2000]}, lambda e: _one(e, "dicomHostname")),
    ({"dicomtlsciphersuite": ["ok", "bad\n"]}, lambda e: _many(e, "dicomTLSCipherSuite")),
])
def test_an_odd_value_names_its_entry(entry, check):
    with pytest.raises(OddEntry) as caught:
        check({"dn": DN, **entry})
    assert DN in str(caught.value) and isinstance(caught.value, DirectoryError)


def test_good_values_pass():
    entry = {"dn": DN, "dicomaetitle": ["CT,+*()=#;1"], "dicomport": ["11112"],
             "dicominstalled": ["false"], "cn": "dicom"}
    assert _title(entry) == "CT,+*()=#;1" and _port(entry) == 11112
    assert _boolean(entry, "dicomInstalled") is False and _one(entry, "cn") == "dicom"
    assert _port({"dn": DN}) is None and _boolean({"dn": DN}, "dicomInstalled") is None
