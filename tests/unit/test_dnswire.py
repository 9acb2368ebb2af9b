"""The resolver's DNS codec against dnspython (the reference both ways), hostile responses
generated here, and the UDP-then-TCP transport against a server on loopback."""

from __future__ import annotations

import asyncio
import random
import struct

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from profiles.errors import ParseError
from profiles.network_address import dnswire
from profiles.network_address.resolver_io import udp_then_tcp


def reference_response(qname: str, rdtype: str, answers: list[tuple[str, int, str, list]],
                       authority=()) -> tuple[bytes, bytes]:
    """(our query, dnspython's compressed response to it)."""
    query = dnswire.query(qname, dns.rdatatype.from_text(rdtype), 0x1234)
    response = dns.message.make_response(dns.message.from_wire(query))
    for name, ttl, rtype, values in answers:
        response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rtype, values))
    for name, ttl, rtype, values in authority:
        response.authority.append(dns.rrset.from_text_list(name, ttl, "IN", rtype, values))
    return query, response.to_wire()


def test_the_query_is_what_dnspython_reads():
    wire = dnswire.query("_ldap._tcp.Hospital.test", dnswire.SRV, 0xBEEF)
    message = dns.message.from_wire(wire)
    assert message.id == 0xBEEF and message.flags & dns.flags.RD
    (q,) = message.question
    assert (q.name.to_text(), q.rdtype, q.rdclass) == ("_ldap._tcp.Hospital.test.", 33, 1)
    assert dnswire.query("x.test.", dnswire.A, 1) == dnswire.query("x.test", dnswire.A, 1)


@pytest.mark.parametrize("name", ["", "a..b", "a" * 64 + ".test", "caf\u00e9.test",
                                  "a\\046b.test", ".".join(["abcdefgh"] * 32)])
def test_names_that_cannot_be_asked_are_refused(name):
    with pytest.raises(ParseError):
        dnswire.query(name, dnswire.A, 1) if name else dnswire.encode_name("a..")


def test_a_srv_cname_and_soa_decode_as_dnspython_encoded_them():
    query, wire = reference_response("_ldap._tcp.hospital.test.", "SRV", [
        ("_ldap._tcp.hospital.test.", 30, "SRV", ["0 100 389 LDAP.hospital.test.",
                                                 "10 5 636 ldap2.hospital.test."]),
        ("LDAP.hospital.test.", 60, "A", ["192.0.2.1"]),
        ("alias.hospital.test.", 70, "CNAME", ["ldap.hospital.test."]),
        ("hospital.test.", 80, "TXT", ['"opaque"'])],
        authority=[("hospital.test.", 300, "SOA",
                    ["ns.hospital.test. h.hospital.test. 1 3600 600 86400 20"])])
    assert dnswire.answers(query, wire)
    response = dnswire.decode(wire)
    assert response.id == 0x1234 and response.rcode == dnswire.NOERROR
    got = [(r.name, r.type, r.ttl, r.data.lower() if isinstance(r.data, str) else r.data)
           for r in response.answer]
    got[:2] = sorted(got[:2])  # dnspython shuffles the records of an RRset
    assert got[:4] == [
        ("_ldap._tcp.hospital.test.", 33, 30, (0, 100, 389, "LDAP.hospital.test.")),
        ("_ldap._tcp.hospital.test.", 33, 30, (10, 5, 636, "ldap2.hospital.test.")),
        ("LDAP.hospital.test.", 1, 60, "192.0.2.1"),  # case as sent (a later name may
        # reuse it through compression: the CNAME target is compared in lower case)
        ("alias.hospital.test.", 5, 70, "ldap.hospital.test.")]
    assert got[4][:3] == ("hospital.test.", 16, 80) and got[4][3] == b"\x06opaque"
    (soa,) = response.authority
    assert (soa.type, soa.ttl, soa.data) == (dnswire.SOA, 300, 20)


def test_odd_octets_in_a_label_cannot_become_a_dot():
    wire = (dnswire.HEADER.pack(1, 0x8180, 0, 1, 0, 0) + b"\x03a.b\x04test\x00"
            + struct.pack("!HHIH", 1, 1, 5, 4) + bytes((192, 0, 2, 9)))
    (record,) = dnswire.decode(wire).answer
    assert record.name == "a\\046b.test."
    with pytest.raises(ParseError):
        dnswire.encode_name(record.name)  # never asked for as "a" under "b.test"


def test_answers_match_id_flag_and_question_only():
    query, wire = reference_response("ldap.hospital.test.", "A",
                                     [("ldap.hospital.test.", 60, "A", ["192.0.2.1"])])
    assert dnswire.answers(query, wire)
    assert dnswire.answers(query, wire[:12] + wire[12:].upper())  # case aside (0x20)
    assert not dnswire.answers(query, b"\x00\x00" + wire[2:])  # another id
    assert not dnswire.answers(query, wire[:2] + bytes((wire[2] & 0x7F,)) + wire[3:])  # no QR
    other = dnswire.query("ldap2.hospital.test.", dnswire.A, 0x1234)
    assert not dnswire.answers(other, wire)
    assert not dnswire.answers(query, query)  # our own query echoed back
    assert not dnswire.answers(query, wire[:20])


def header(an: int) -> bytes:
    return dnswire.HEADER.pack(7, 0x8180, 0, an, 0, 0)


@pytest.mark.parametrize("wire, why", [
    (header(1) + b"\xc0\x0c", "points at itself"),
    (header(1) + b"\x01a\xc0\x0c", "loops through a label"),
    (header(1) + b"\xc0\x20" + b"\x00" * 40, "points forwards"),
    (header(1) + b"\x80abc", "label type 10"),
    (header(1) + b"\x05ab", "label past the end"),
    (header(1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\xc0\x00", "A past the end"),
    (header(1) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x03\xc0\x00\x02", "A of 3"),
    (header(1) + b"\x00\x00\x21\x00\x01\x00\x00\x00\x05\x00\x07\x00\x00\x00\x00\x01\x85\x01a\x00",
     "SRV target past its length"),
    (header(2) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\xc0\x00\x02\x01", "count"),
    (b"\x00" * 11, "short header"),
])
def test_malformed_responses_are_value_errors(wire, why):
    with pytest.raises(ParseError):
        dnswire.decode(wire)


def test_a_name_over_255_octets_through_pointers_is_refused():
    # 63-octet labels chained backwards by pointers inside an opaque record: each pointer
    # allowed, the name of the next record (a pointer to the last link) too long.
    start = 12 + 1 + 10  # the opaque record's data, after its root name and header
    chain, previous = bytearray(), 0
    for i in range(5):
        link = start + len(chain)
        chain += b"\x3f" + bytes([97 + i]) * 63
        chain += b"\x00" if i == 0 else struct.pack("!H", 0xC000 | previous)
        previous = link
    wire = (header(2) + b"\x00" + struct.pack("!HHIH", 99, 1, 5, len(chain)) + chain
            + struct.pack("!H", 0xC000 | previous) + struct.pack("!HHIH", 1, 1, 5, 4)
            + b"\xc0\0\2\1")
    with pytest.raises(ParseError, match="longer than 255"):
        dnswire.decode(bytes(wire))


def test_truncations_and_mutations_only_ever_raise_value_error():
    _, wire = reference_response("_ldap._tcp.hospital.test.", "SRV", [
        ("_ldap._tcp.hospital.test.", 30, "SRV", ["0 100 389 ldap.hospital.test."]),
        ("ldap.hospital.test.", 60, "A", ["192.0.2.1"]),
        ("alias.hospital.test.", 70, "CNAME", ["ldap.hospital.test."])],
        authority=[("hospital.test.", 300, "SOA",
                    ["ns.hospital.test. h.hospital.test. 1 3600 600 86400 20"])])
    for cut in range(len(wire)):
        with pytest.raises(ParseError):
            dnswire.decode(wire[:cut])
    rng = random.Random(1812)
    decoded = refused = 0
    for _ in range(20000):
        mutated = bytearray(wire)
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            response = dnswire.decode(bytes(mutated))
        except ParseError:
            refused += 1
            continue
        decoded += 1
        for record in response.answer + response.authority:
            assert isinstance(record.name, str) and record.name.endswith(".")
    assert decoded > 1000 and refused > 1000  # both paths really taken


def test_the_transport_drops_strangers_and_falls_back_to_tcp_when_truncated():
    query, full = reference_response("ldap.hospital.test.", "A",
                                     [("ldap.hospital.test.", 60, "A", ["192.0.2.1"])])
    truncated = full[:2] + bytes((full[2] | 0x02,)) + full[3:12] + query[12:]
    truncated = truncated[:6] + b"\0\0" + truncated[8:]  # TC, no answer records
    seen = {"udp": 0, "tcp": 0}

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            seen["udp"] += 1
            self.transport.sendto(b"\xff\xff" + truncated[2:], addr)  # another id
            self.transport.sendto(b"garbage", addr)
            self.transport.sendto(truncated, addr)

    async def tcp(reader, writer):
        seen["tcp"] += 1
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        assert await reader.readexactly(length) == query
        writer.write(struct.pack("!H", len(full)) + full)
        await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(tcp, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
        try:
            return await udp_then_tcp(query, "127.0.0.1", port)
        finally:
            udp.close()
            server.close()

    answer = asyncio.run(main())
    assert answer == full and seen == {"udp": 1, "tcp": 1}
    assert dnswire.decode(answer).answer[0].data == "192.0.2.1"


def test_the_transport_times_out_on_silence():
    async def main():
        loop = asyncio.get_running_loop()
        silent, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                        local_addr=("127.0.0.1", 0))
        port = silent.get_extra_info("sockname")[1]
        try:
            return await udp_then_tcp(dnswire.query("x.test", 1, 5), "127.0.0.1", port)
        finally:
            silent.close()

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def test_one_name_codec_for_dns_messages_and_dhcp_options():
    """dnsname is the only RFC 1035 name codec: the resolver's messages and DHCP options
    119/81 read the same bytes to the same name, and refuse bad ones with ParseError."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from profiles.network_address import dnsname
    from profiles.network_address import options as o

    wire = dnsname.to_wire("ct01.hospital.test")
    assert dnswire._name(wire, 0) == ("ct01.hospital.test.", len(wire))
    assert o.domain_search(wire) == ["ct01.hospital.test"]
    assert o.client_fqdn(b"\x05\0\0" + wire) == (5, "ct01.hospital.test")
    looping = b"\x04ct01\xc0\x00"  # a pointer to itself
    for read in (lambda: dnswire._name(looping, 0), lambda: o.domain_search(looping)):
        with pytest.raises(ParseError):
            read()

    @settings(max_examples=2000, deadline=None)
    @given(st.binary(max_size=300), st.integers(0, 20))
    def only_parse_errors(data: bytes, pos: int):
        try:
            name, after = dnsname.read_name(data, pos)
        except ParseError:
            return
        assert after <= len(data) and len(name) <= 4 * 255  # \DDD escapes at most

    only_parse_errors()
