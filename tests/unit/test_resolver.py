"""The F.1.1 resolver with a fake transport: search list, TTL cache, purge, failover.
The fake server is dnspython: it decodes the resolver's queries and encodes the answers
(compressed, as servers send them), so the codec is checked against another one."""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from profiles.network_address.resolver_io import ResolveError, Resolver, SrvRecord

ZONE = {
    ("ldap.hospital.test.", "A"): (60, ["192.0.2.1"]),
    ("_ldap._tcp.hospital.test.", "SRV"): (30, ["0 100 389 ldap.hospital.test.",
                                                "10 100 389 ldap-backup.hospital.test."]),
    ("alias.hospital.test.", "CNAME"): (60, ["ldap.hospital.test."]),
}


class FakeDns:
    def __init__(self, dead: tuple[str, ...] = ()):
        self.asked: list[tuple[str, str, str]] = []
        self.dead = dead

    async def __call__(self, wire: bytes, server: str) -> bytes:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        qname, qtype = q.name.to_text(), dns.rdatatype.to_text(q.rdtype)
        self.asked.append((server, qname, qtype))
        if server in self.dead:
            raise TimeoutError()
        response = dns.message.make_response(query)
        for (name, rtype), (ttl, values) in ZONE.items():
            if name == qname and rtype in (qtype, "CNAME"):
                response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rtype, values))
                if rtype == "CNAME":
                    target = values[0]
                    ttl2, vals2 = ZONE[(target, qtype)]
                    response.answer.append(
                        dns.rrset.from_text_list(target, ttl2, "IN", qtype, vals2))
        if not response.answer:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "hospital.test.", 300, "IN", "SOA", "dhcp.hospital.test. h.hospital.test. "
                "1 3600 600 86400 20"))
        return response.to_wire()


def run(coro):
    return asyncio.run(coro)


def resolver(fake: FakeDns, clock: list[float], servers=("192.0.2.1",)) -> Resolver:
    return Resolver(servers, ("hospital.test",), transport=fake, clock=lambda: clock[0])


def test_search_list_expands_bare_names_and_ttl_is_honoured():
    fake, now = FakeDns(), [0.0]
    r = resolver(fake, now)
    assert run(r.addresses("ldap")) == ["192.0.2.1"]
    assert fake.asked == [("192.0.2.1", "ldap.hospital.test.", "A")]
    now[0] = 59.0
    run(r.addresses("ldap"))
    assert len(fake.asked) == 1  # cached
    now[0] = 60.5
    run(r.addresses("ldap"))
    assert len(fake.asked) == 2  # TTL ran out


def test_dotted_names_are_tried_as_they_are_first():
    r = Resolver(("192.0.2.1",), ("hospital.test",))
    assert r.candidates("ldap.hospital.test") == ["ldap.hospital.test.",
                                                  "ldap.hospital.test.hospital.test."]
    assert r.candidates("ldap") == ["ldap.hospital.test.", "ldap."]
    assert r.candidates("x.") == ["x."]


def test_srv_records_and_cname_following():
    fake, now = FakeDns(), [0.0]
    r = resolver(fake, now)
    # dnspython shuffles an RRset's records on the wire, as servers may
    assert sorted(run(r.srv("_ldap._tcp.hospital.test")), key=lambda s: s.priority) == [
        SrvRecord(0, 100, 389, "ldap.hospital.test"),
        SrvRecord(10, 100, 389, "ldap-backup.hospital.test")]
    assert run(r.addresses("alias.hospital.test")) == ["192.0.2.1"]


def test_negative_answers_are_cached_for_the_soa_minimum():
    fake, now = FakeDns(), [0.0]
    r = resolver(fake, now)
    with pytest.raises(ResolveError):
        run(r.addresses("nothere.hospital.test."))
    with pytest.raises(ResolveError, match="cached"):
        run(r.addresses("nothere.hospital.test."))
    assert len(fake.asked) == 1
    now[0] = 21
    with pytest.raises(ResolveError):
        run(r.addresses("nothere.hospital.test."))
    assert len(fake.asked) == 2


def test_a_new_lease_purges_the_cache():
    fake, now = FakeDns(), [0.0]
    r = resolver(fake, now)
    run(r.addresses("ldap"))
    r.configure(("192.0.2.1",), ("hospital.test",))  # unchanged: cache kept
    run(r.addresses("ldap"))
    assert len(fake.asked) == 1
    r.configure(("192.0.2.53",), ("hospital.test",))
    run(r.addresses("ldap"))
    assert fake.asked[-1][0] == "192.0.2.53"


def test_dead_server_fails_over_and_no_server_is_a_clear_error():
    fake = FakeDns(dead=("192.0.2.9",))
    r = resolver(fake, [0.0], servers=("192.0.2.9", "192.0.2.1"))
    assert run(r.addresses("ldap.hospital.test.")) == ["192.0.2.1"]
    assert r.servers == ("192.0.2.1", "192.0.2.9")  # the one that answered goes first
    with pytest.raises(ResolveError, match="no DNS servers"):
        run(Resolver().addresses("ldap.hospital.test"))
    assert run(Resolver().addresses("192.0.2.7")) == ["192.0.2.7"]
