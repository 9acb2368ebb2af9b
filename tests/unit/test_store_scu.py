"""The example application's choice of connection (examples/store_scu.py): TLS where the
archive offers it and a CA is given, plain only where the archive offers no TLS or the
operator allows it; an AE the directory calls not installed is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agent.client import Peer

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("store_scu", REPO / "examples" / "store_scu.py")
store_scu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store_scu)

PLAIN = {"hostname": "pacs1.hospital.test", "port": 11112, "tls_cipher_suites": []}
TLS = {"hostname": "pacs1.hospital.test", "port": 2762,
       "tls_cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]}


def peer(*connections: dict, installed: bool = True) -> Peer:
    return Peer.from_answer({"aet": "ARCHIVE", "source": "directory", "found": True,
                             "installed": installed, "connections": list(connections)})


def test_tls_when_offered_and_a_ca_is_given():
    conn, tls = store_scu.choose(peer(PLAIN, TLS), "/site-ca.pem", allow_plain=False)
    assert (conn.port, tls) == (2762, True)


def test_plain_only_when_there_is_no_tls_or_it_is_allowed():
    assert store_scu.choose(peer(PLAIN), None, False)[0].port == 11112
    with pytest.raises(store_scu.Refused, match="give --ca-file"):
        store_scu.choose(peer(PLAIN, TLS), None, False)
    assert store_scu.choose(peer(PLAIN, TLS), None, True) == (
        peer(PLAIN, TLS).connections[0], False)
    with pytest.raises(store_scu.Refused, match="accepts TLS only"):
        store_scu.choose(peer(TLS), None, True)


def test_a_peer_not_installed_is_refused():
    with pytest.raises(store_scu.Refused, match="not installed"):
        store_scu.choose(peer(PLAIN, installed=False), "/site-ca.pem", False)
    not_there = {**PLAIN, "installed": False}
    with pytest.raises(store_scu.Refused, match="no installed connection"):
        store_scu.choose(peer(not_there), None, False)
