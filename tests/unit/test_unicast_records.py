"""Unicast DNS-SD records and the TSIG key file (profiles/app_config/unicast_dnssd_io.py)."""

import pytest

from profiles.app_config.dnssd_io import PLAIN, TLS, Service
from profiles.app_config.unicast_dnssd_io import read_tsig_key, records


def test_records_for_plain_and_tls_services_with_escaped_instance_names():
    services = [Service("CT.1 A", PLAIN, 104, {"AET": "CT.1 A", "PrimaryDeviceType": "CT"}),
                Service("CT_QR", TLS, 2762, {"AET": "CT_QR"})]
    assert records(services, "hospital.test", "ct01.hospital.test") == [
        ("_dicom._tcp.hospital.test.", "PTR", "CT\\.1\\032A._dicom._tcp.hospital.test."),
        ("CT\\.1\\032A._dicom._tcp.hospital.test.", "SRV", "0 0 104 ct01.hospital.test."),
        ("CT\\.1\\032A._dicom._tcp.hospital.test.", "TXT",
         '"AET=CT.1 A" "PrimaryDeviceType=CT"'),
        ("_dicom-tls._tcp.hospital.test.", "PTR", "CT_QR._dicom-tls._tcp.hospital.test."),
        ("CT_QR._dicom-tls._tcp.hospital.test.", "SRV", "0 0 2762 ct01.hospital.test."),
        ("CT_QR._dicom-tls._tcp.hospital.test.", "TXT", '"AET=CT_QR"')]


def test_a_bind_key_file_is_read_and_a_bad_one_named(tmp_path):
    path = tmp_path / "k.key"
    path.write_text('key "ddns-key" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0";\n};\n')
    key = read_tsig_key(path)
    assert (key.name, key.algorithm, key.secret) == ("ddns-key", "hmac-sha256", "c2VjcmV0")
    path.write_text("secret only\n")
    with pytest.raises(ValueError, match="BIND's format"):
        read_tsig_key(path)
