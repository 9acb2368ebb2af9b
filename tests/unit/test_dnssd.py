"""Which DNS-SD services a device advertises (PS3.15 H.2), and how names are probed."""

import asyncio
import itertools
import socket
from pathlib import Path

import pytest

from agent.config import load_config
from profiles.app_config.dnssd_io import PLAIN, TLS, probe, services

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
    from profiles.app_config.dnssd_io import Advertiser

    adv = Advertiser("ct01")
    adv.seen["WS07"] = {"aet": "WS07", "tls": True, "port": 2762, "hostname": "ws.local",
                        "addresses": ["192.0.2.150"], "txt": {"AET": "WS07"}}
    assert adv.lookup("WS07") == {
        "v": 1, "aet": "WS07", "found": True, "stale": False, "source": "dnssd",
        "device": None, "installed": True,
        "connections": [{"hostname": "192.0.2.150", "port": 2762,
                         "tls_cipher_suites": ["(TLS)"], "addresses": ["192.0.2.150"]}]}
    assert adv.lookup("NOPE") is None


class FakeZeroconf:
    """What probe() uses of zeroconf: a cache another host's answer lands in, a wait that
    an answer cuts short, and the probes it sends (each with the test clock's time)."""

    def __init__(self, taken: set[str] = frozenset()):
        self.taken = set(taken)  # names some other host answers for
        self.sent: list[tuple[float, str]] = []
        self.cache = self
        self.answered = asyncio.Event()
        self.clock = 0.0  # the test's own clock: seconds, advanced only by sleeping

    async def async_wait_for_start(self) -> None:
        pass

    def current_entry_with_name_and_alias(self, type_: str, name: str) -> bool:
        return any(name == f"{t}.{type_}" for t in self.taken) and \
            any(n == name for _, n in self.sent)  # answered once probed

    def now(self) -> float:
        return self.clock

    async def sleep(self, seconds: float) -> None:
        self.clock += seconds
        await asyncio.sleep(0)

    async def async_wait(self, ms: float) -> None:
        await self.sleep(ms / 1000)

    def get_all_by_details(self, name: str, type_: int, class_: int) -> list:
        return []  # no SRV for the name in the cache: the PTR above says it

    def async_send(self, name: str) -> None:
        self.sent.append((self.clock, name))


class Info:
    def __init__(self, instance: str, port: int = 104):
        self.type = PLAIN
        self.name = f"{instance}.{PLAIN}"
        self.priority = self.weight = 0
        self.port, self.server = port, "ct01.local."
        self.text = f"\x0cAET={instance}".encode()


def name_of(info) -> str:  # the probe "packet" the fake records
    return info.name


def test_probing_keeps_rfc_6762_timing_and_renames_a_name_someone_answers_for():
    async def main(zc, info):
        start = zc.now()
        await probe(zc, info, zc.now, zc.sleep, packet=name_of)
        return start, zc.now()

    zc, info = FakeZeroconf(), Info("CT01_STORE")
    start, end = asyncio.run(main(zc, info))
    times = [t for t, _ in zc.sent]
    assert [n for _, n in zc.sent] == [info.name] * 3 and info.name.startswith("CT01_STORE.")
    gaps = [b - a for a, b in itertools.pairwise([start, *times, end])]
    # RFC 6762 8.1: a random 0-250 ms, probes 250 ms apart, 250 ms more for an answer
    # (lower bounds: never sooner; zeroconf's own check spaced them 500 ms apart)
    assert 0 <= gaps[0] <= 0.25 and all(g == pytest.approx(0.25) for g in gaps[1:]), gaps

    zc, info = FakeZeroconf(taken={"CT01_STORE"}), Info("CT01_STORE")
    asyncio.run(main(zc, info))
    names = [n for _, n in zc.sent]
    assert names[0] == f"CT01_STORE.{PLAIN}" and names.count(f"CT01_STORE-2.{PLAIN}") == 3
    assert info.name == f"CT01_STORE-2.{PLAIN}"  # probed afresh under the new name


def test_a_simultaneous_probe_with_later_data_defers_this_one_by_a_second():
    """RFC 6762 8.2: a rival's probe for the same name proposing lexicographically later
    records (here: a higher port) wins; this host probes again one second later and, the
    winner answering by then, renames. A rival with earlier data loses to us: counted,
    nothing deferred."""
    from profiles.app_config.dnssd_io import proposal

    async def main(zc, info, rival_port):
        rival = proposal(Info("CT01_STORE", rival_port))
        heard = []

        def rivals(name):
            if heard and rival_port > info.port and zc.clock >= heard[0] + 0.6:
                zc.taken.add("CT01_STORE")  # the winner, done probing, answers for it
            if len([1 for _, n in zc.sent if n == name]) == 1 and not heard:
                heard.append(zc.clock)  # the rival's probe arrives after our first
                return [rival]
            return []

        counts = {}
        await probe(zc, info, zc.now, zc.sleep, rivals=rivals, counts=counts, packet=name_of)
        return counts

    zc, info = FakeZeroconf(), Info("CT01_STORE", 104)
    counts = asyncio.run(main(zc, info, 11112))
    assert counts == {"probe-tiebreaks-lost": 1, "renamed": 1}
    first = [t for t, n in zc.sent if n == f"CT01_STORE.{PLAIN}"]
    renamed = [t for t, n in zc.sent if n == f"CT01_STORE-2.{PLAIN}"]
    # Deferred a second, by then the winner answers for it: renamed, probed afresh.
    assert len(first) == 1 and renamed[0] - first[0] >= 1.0 - 1e-9
    assert len(renamed) == 3 and info.name == f"CT01_STORE-2.{PLAIN}"

    zc, info = FakeZeroconf(), Info("CT01_STORE", 11112)
    counts = asyncio.run(main(zc, info, 104))
    assert counts == {"probe-tiebreaks-won": 1}
    assert [n for _, n in zc.sent] == [f"CT01_STORE.{PLAIN}"] * 3  # kept its name


def test_a_probe_packet_proposes_srv_and_txt_and_reads_back_as_the_tie_break_sees_it():
    from zeroconf import ServiceInfo

    from profiles.app_config.dnssd_io import probe_packet, probed, proposal

    info = ServiceInfo(PLAIN, f"CT01_STORE.{PLAIN}", port=104, properties={"AET": "CT01_STORE"},
                       server="ct01.local.", addresses=[socket.inet_aton("192.0.2.5")])
    [data] = probe_packet(info).packets()
    heard = probed(data, ("192.0.2.5", 5353))
    assert list(heard) == [f"ct01_store.{PLAIN}"]
    assert sorted(heard[f"ct01_store.{PLAIN}"]) == sorted(proposal(info))
    assert probed(b"\x00" * 12, ("192.0.2.5", 5353)) == {}  # no question, no authority
