"""DNS-SD in the site DNS (PS3.15 H.2 over unicast DNS, RFC 6763; RFC 2136 updates signed
with TSIG, RFC 8945): what mDNS cannot do — be browsable from every subnet.

For each advertised service (the same as over mDNS: dnssd.services) the agent registers in
`zone`: PTR `_dicom._tcp.<zone>` → `<instance>._dicom._tcp.<zone>`, SRV instance →
`0 0 <port> <host>`, TXT instance → `AET=...` (and `PrimaryDeviceType=...`);
`_dicom-tls._tcp` for TLS connections. The update goes to the zone's primary (its SOA
MNAME). A device never overwrites another's records: an instance is added under the
RFC 2136 prerequisite "no SRV there"; if there is one, it is taken as ours only when it is
exactly what we would write (our host and port, a restart). Deletes name each record's
value, so only our own records go. What was registered is persisted; the next boot
removes what a power loss left. `browse` reads the same records back for lookups.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from profiles import statefile_io
from profiles.app_config.dnssd_io import Service

log = logging.getLogger(__name__)
TIMEOUT = 5.0
_KEY = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{\s*(.*?)\s*\}\s*;', re.S)
_FIELD = re.compile(r'(algorithm|secret)\s+"?([^";\s]+)"?\s*;')


class UpdateRefused(Exception):
    """The zone's primary refused an update (the key, the zone, a prerequisite)."""


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key for RFC 2136 updates."""

    name: str
    algorithm: str
    secret: str

    def keyring(self) -> dict:
        return dns.tsigkeyring.from_text({self.name: (self.algorithm, self.secret)})


def read_tsig_key(path: Path) -> TsigKey:
    """BIND's key file: `key "name" { algorithm hmac-sha256; secret "base64"; };`."""
    text = path.read_text()
    found = _KEY.search(text)
    if not found:
        raise ValueError(f"{path}: no `key \"name\" {{ ... }};` in BIND's format")
    fields = dict(_FIELD.findall(found.group(2)))
    if "algorithm" not in fields or "secret" not in fields:
        raise ValueError(f"{path}: the key needs algorithm and secret")
    return TsigKey(found.group(1), fields["algorithm"], fields["secret"])


def _escape(label: str) -> str:
    """An instance name as one DNS label (RFC 6763 4.3: dots and backslashes escaped)."""
    return label.replace("\\", "\\\\").replace(".", "\\.").replace(" ", "\\032")


def records(services: list[Service], zone: str, host: str) -> list[tuple[str, str, str]]:
    """(owner, type, value) of every record for `services` in `zone`, SRV target `host`."""
    zone = zone.rstrip(".") + "."
    host = host.rstrip(".") + "."
    out = []
    for s in services:
        kind = s.type.removesuffix("local.") + zone  # _dicom._tcp.<zone>
        instance = f"{_escape(s.instance)}.{kind}"
        txt = " ".join(f'"{k}={v}"' for k, v in s.txt.items())
        out += [(kind, "PTR", instance), (instance, "SRV", f"0 0 {s.port} {host}"),
                (instance, "TXT", txt)]
    return out


class UnicastAdvertiser:
    """Registers and withdraws this device's DNS-SD records in the site DNS."""

    def __init__(self, key: TsigKey, state_file: Path, nameservers: list[str]):
        self.key = key
        self.state_file = state_file
        self.nameservers = nameservers  # to find the zone's primary
        self.registered: list[tuple[str, str, str]] = []
        self.zone: str | None = None
        self.server: str | None = None
        self.refused: str | None = None  # why the last update was refused

    def _primary(self, zone: str) -> str:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = self.nameservers
        r.lifetime = TIMEOUT
        mname = str(r.resolve(zone, "SOA")[0].mname)
        return str(r.resolve(mname, "A")[0])

    def _send(self, zone: str, server: str, update: dns.update.UpdateMessage) -> int:
        answer = dns.query.tcp(update, server, timeout=TIMEOUT)
        return answer.rcode()

    def _update(self, zone: str) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(zone, keyring=self.key.keyring(),
                                        keyname=self.key.name,
                                        keyalgorithm=self.key.algorithm)

    def register(self, services: list[Service], zone: str, host: str, ttl: int) -> list[str]:
        """Blocking (run it in a thread). Returns the instance names refused because
        another device holds them; UpdateRefused when the server refuses us at all."""
        zone = zone.rstrip(".") + "."
        wanted = records(services, zone, host)
        self.cleanup(keep=wanted)
        server = self._primary(zone)
        taken = []
        done = list(r for r in self.registered if r in wanted)
        for instance in dict.fromkeys(o for o, t, _ in wanted if t == "SRV"):
            mine = [r for r in wanted if r[0] == instance or (r[1] == "PTR" and
                                                              r[2] == instance)]
            srv = next(v for o, t, v in mine if t == "SRV")
            add = self._update(zone)
            add.absent(instance, "SRV")  # nobody's instance yet...
            for owner, rtype, value in mine:
                add.add(owner, ttl, rtype, value)
            code = self._send(zone, server, add)
            if code == dns.rcode.YXRRSET:  # ...or ours already, exactly
                again = self._update(zone)
                again.present(instance, dns.rdataset.from_text("IN", "SRV", 0, srv))
                for owner, rtype, value in mine:
                    if rtype == "PTR":  # one PTR per instance: others' stay
                        again.add(owner, ttl, rtype, value)
                    else:
                        again.replace(owner, ttl, rtype, value)
                code = self._send(zone, server, again)
                if code == dns.rcode.NXRRSET:
                    log.warning("DNS-SD: %s is another device's in %s: not registered",
                                instance, zone)
                    taken.append(instance)
                    continue
            if code != dns.rcode.NOERROR:
                self.refused = f"{dns.rcode.to_text(code)} from {server} for {zone}"
                raise UpdateRefused(self.refused)
            done += [r for r in mine if r not in done]
        self.refused = None
        self.zone, self.server, self.registered = zone, server, done
        statefile_io.save_json(self.state_file, {"zone": zone, "server": server,
                                                 "records": done}, mode=0o600)
        return taken

    def withdraw(self) -> None:
        """Delete exactly what this device registered (blocking)."""
        if self.registered and self.zone and self.server:
            self._delete(self.zone, self.server, self.registered)
        self.registered = []
        statefile_io.remove(self.state_file)

    def cleanup(self, keep: list[tuple[str, str, str]] = ()) -> None:
        """Records a previous run registered (a power loss): deleted, but those we are
        about to register again."""
        saved = statefile_io.read_json(self.state_file)
        if not isinstance(saved, dict) or not saved.get("records"):
            return
        stale = [tuple(r) for r in saved["records"] if tuple(r) not in keep]
        if stale:
            try:
                self._delete(saved["zone"], saved["server"], stale)
                log.info("DNS-SD: removed %d record(s) a previous run left", len(stale))
            except Exception as exc:  # best effort: the TTL ends them anyway
                log.warning("DNS-SD: records of a previous run not removed: %s", exc)
        self.registered = [tuple(r) for r in saved["records"] if tuple(r) in keep]
        self.zone, self.server = saved.get("zone"), saved.get("server")

    def _delete(self, zone: str, server: str, rrs: list[tuple[str, str, str]]) -> None:
        update = self._update(zone)
        for owner, rtype, value in rrs:
            update.delete(owner, rtype, value)
        code = self._send(zone, server, update)
        if code != dns.rcode.NOERROR:
            raise UpdateRefused(f"{dns.rcode.to_text(code)} deleting from {zone}")


def instances(domains: list[str], nameservers: list[str]) -> Iterator[dict]:
    """Every `_dicom._tcp` and `_dicom-tls._tcp` instance in unicast DNS-SD of `domains`
    (and the browse domains `b._dns-sd._udp.<domain>` names): its name, type, domain,
    TXT, SRV target and port. An instance whose records do not resolve is left out."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = nameservers
    r.lifetime = TIMEOUT
    search = list(domains)
    for domain in domains:
        with contextlib.suppress(Exception):  # no browse domains named: fine
            search += [str(p.target) for p in r.resolve(f"b._dns-sd._udp.{domain}", "PTR")]
    for domain in dict.fromkeys(search):
        for kind in ("_dicom._tcp", "_dicom-tls._tcp"):
            try:
                names = [str(p.target) for p in r.resolve(f"{kind}.{domain}", "PTR")]
            except Exception:
                continue
            for instance in names:
                try:
                    txt = {}
                    for rr in r.resolve(instance, "TXT"):
                        for part in rr.strings:
                            k, _, v = part.decode(errors="replace").partition("=")
                            txt[k] = v
                    srv = r.resolve(instance, "SRV")[0]
                except Exception:
                    continue
                label = dns.name.from_text(instance).labels[0].decode(errors="replace")
                yield {"name": label, "type": kind, "domain": domain.rstrip("."),
                       "aet": txt.get("AET") or label, "txt": txt,
                       "hostname": str(srv.target).rstrip("."), "port": srv.port}


def browse(domains: list[str], nameservers: list[str], title: str) -> dict | None:
    """A lookup answer for AE `title` from unicast DNS-SD in `domains`, or None."""
    for found in instances(domains, nameservers):
        if found["aet"] != title:
            continue
        txt = found["txt"]
        return {"v": 1, "aet": title, "found": True, "stale": False,
                "source": "dnssd", "device": None, "installed": True,
                "connections": [{"hostname": found["hostname"], "port": found["port"],
                                 "installed": True, "tls_cipher_suites": ["TLS"]
                                 if "tls" in found["type"] else []}],
                "application_cluster": [], "primary_device_type":
                    [txt["PrimaryDeviceType"]] if "PrimaryDeviceType" in txt else []}
    return None
