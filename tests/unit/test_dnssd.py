"""Which DNS-SD services a device advertises (PS3.15 H.2)."""

from pathlib import Path

from agent.config import load_config
from profiles.app_config.dnssd import PLAIN, TLS, services

EXAMPLES = Path(__file__).resolve().parents[2] / "agent" / "examples"


def test_one_service_per_acceptor_ae_per_listening_connection():
    device = load_config(EXAMPLES / "archive.toml").device
    got = [(s.name, s.type, s.port, s.txt) for s in services(device, ["ARCHIVE2_STORE",
                                                                       "ARCHIVE2_QR"])]
    txt = {"PrimaryDeviceType": "ARCHIVE"}
    assert got == [
        ("ARCHIVE2_STORE._dicom._tcp.local.", PLAIN, 11112, {"AET": "ARCHIVE2_STORE", **txt}),
        ("ARCHIVE2_STORE._dicom-tls._tcp.local.", TLS, 2762, {"AET": "ARCHIVE2_STORE", **txt}),
        ("ARCHIVE2_QR._dicom-tls._tcp.local.", TLS, 2762, {"AET": "ARCHIVE2_QR", **txt})]


def test_an_initiator_only_device_advertises_nothing():
    device = load_config(EXAMPLES / "ct.toml").device
    assert services(device, ["CT01_SCU"]) == []


def test_a_template_title_is_advertised_as_registered():
    device = load_config(EXAMPLES / "workstation.toml").device
    (svc,) = services(device, ["WS07"])
    assert svc.name == "WS07._dicom._tcp.local." and svc.txt == {
        "AET": "WS07", "PrimaryDeviceType": "WSD"}


def test_what_was_browsed_answers_a_lookup_the_directory_could_not():
    from profiles.app_config.dnssd import Advertiser

    adv = Advertiser("ct01")
    adv.seen["WS07"] = {"aet": "WS07", "tls": True, "port": 2762, "hostname": "ws.local",
                        "addresses": ["192.0.2.150"], "txt": {"AET": "WS07"}}
    assert adv.lookup("WS07") == {
        "v": 1, "aet": "WS07", "found": True, "stale": False, "source": "dnssd",
        "device": None, "installed": True,
        "connections": [{"hostname": "192.0.2.150", "port": 2762,
                         "tls_cipher_suites": ["(TLS)"], "addresses": ["192.0.2.150"]}]}
    assert adv.lookup("NOPE") is None
