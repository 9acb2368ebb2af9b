"""Credentials go only where they are meant to go (issue 11): a server named in
[directory] servers or a host inside the configured domain; others are tried anonymously;
the password is never in a repr."""

from __future__ import annotations

from pathlib import Path

from agent.adapters.directory import credentials_may_go_to
from agent.config import load_config
from profiles.app_config import ldap_io as d

EXAMPLES = Path(__file__).resolve().parents[2] / "agent" / "examples"


def config_with(tmp_path, directory: str):
    text = (EXAMPLES / "ct.toml").read_text()
    head, _, rest = text.partition("[directory]")
    rest = rest.split("\n[", 1)[1] if "\n[" in rest else ""
    path = tmp_path / "agent.toml"
    path.write_text(head + "[directory]\n" + directory + "\n\n[" + rest)
    return load_config(path)


def test_only_named_servers_and_hosts_in_the_configured_domain_are_trusted(tmp_path):
    config = config_with(tmp_path, 'domain = "hospital.test"\n'
                                   'servers = ["ldaps://ldap.other.test:636"]')
    trusted = credentials_may_go_to(config)
    assert trusted("ldap://ldap.hospital.test:389")
    assert trusted("ldaps://LDAP.Hospital.Test.:636")
    assert trusted("ldaps://ldap.other.test:636")
    assert not trusted("ldap://ldap.hospital.test.evil.test:389")
    assert not trusted("ldap://evilhospital.test")
    assert not trusted("ldap://192.0.2.99")


def test_no_configured_domain_means_no_srv_target_is_trusted(tmp_path):
    config = config_with(tmp_path, 'servers = ["ldap://192.0.2.1"]')
    trusted = credentials_may_go_to(config)
    assert trusted("ldap://192.0.2.1") and not trusted("ldap://ldap.hospital.test")


def test_an_untrusted_server_gets_an_anonymous_connection(monkeypatch):
    used: list[tuple[str, d.Security]] = []

    def connect(url, security, address=None):
        used.append((url, security))
        return object()

    monkeypatch.setattr(d, "connect", connect)
    monkeypatch.setattr(d, "find_configuration_root", lambda conn: None)
    monkeypatch.setattr(d, "close", lambda conn: None)
    secret = d.Security("tls", "cn=registrar,dc=x", "s3cret", "/ca.pem")
    d.find_directory([("ldap://rogue.example", None), ("ldap://ldap.hospital.test", None)],
                     secret, lambda url: "hospital.test" in url)
    assert [url for url, _ in used] == ["ldap://rogue.example", "ldap://ldap.hospital.test"]
    (_, rogue_sec), (_, good_sec) = used
    assert rogue_sec.bind_dn is None and rogue_sec.password is None
    assert rogue_sec.pattern == "tls" and rogue_sec.ca_file == "/ca.pem"
    assert good_sec is secret
    assert "s3cret" not in repr(secret)
