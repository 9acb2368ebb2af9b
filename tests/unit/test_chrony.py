"""chronyd's files and reports (profiles/time_sync/chrony_io.py) and the NTS check."""

import asyncio

from profiles.time_sync import chrony_io, nts_io


def test_the_sources_file_marks_nts_servers_only():
    text = chrony_io.sources_text(["192.0.2.11", "192.0.2.12"], {"192.0.2.11"})
    assert text.splitlines()[1:] == ["server 192.0.2.11 iburst nts",
                                     "server 192.0.2.12 iburst"]


def test_authdata_tells_nts_with_cookies_from_plain_ntp():
    csv = ("192.0.2.11,NTS,1,15,256,33,1,0,8,100\n"
           "192.0.2.12,-,0,0,0,4294967295,0,0,0,0\n"
           "garbage,line\n")
    assert chrony_io.parse_authdata(csv) == {
        "192.0.2.11": {"mode": "NTS", "ke_attempts": 1, "naks": 0, "cookies": 8},
        "192.0.2.12": {"mode": "-", "ke_attempts": 0, "naks": 0, "cookies": 0}}


def test_a_server_without_nts_ke_is_named_with_its_reason():
    # Nothing listens on this loopback port: refused at once, said so.
    problem = asyncio.run(nts_io.certificate_problem("127.0.0.1", None, port=9, timeout=2))
    assert problem is not None and problem.startswith("no NTS-KE service on port 9")


def test_the_manual_servers_back_up_the_discovered_ones_which_chronyd_prefers():
    text = chrony_io.sources_text(["192.0.2.11"], backup=["192.0.2.99", "192.0.2.11"])
    assert [x for x in text.splitlines() if not x.startswith("#")] == [
        "server 192.0.2.11 iburst prefer", "server 192.0.2.99 iburst"]
    assert "prefer" not in chrony_io.sources_text(["192.0.2.11"])
