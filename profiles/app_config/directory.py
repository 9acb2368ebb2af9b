"""The LDAP driver of PS3.15 H.1: find the directory, register the device, answer lookups.

Synchronous ldap3 (the daemon runs it in a thread, never on the event loop). What is
written comes from plan.py; this module decides the order of operations and reads the
answers:

- find (H.1.4.1): SRV targets in RFC 2782 order, then `directory.servers`; on each, the
  root DSE's namingContexts are searched for `dicomConfigurationRoot`, accepted only
  with `cn=Devices` (dicomDevicesRoot) and `cn=Unique AE Titles Registry`
  (dicomUniqueAETitlesRegistryRoot) directly below it (H.1.2 note);
- register (H.1.4.3): adopt a device an administrator configured (see find_device; only
  hostnames and ports are changed, the identity marker added), or reserve
  titles (H.1.4.3.5) and create device, connections, AEs and transfer capabilities,
  rolling back on failure everything this attempt added;
- lookup and query (H.1.4.2).

Answers are checked for presence and type where they enter (the LDAP boundary): a value
the schema requires that is missing, a title that is not a PS3.5 AE title, a port that is
not 0-65535, a boolean that is not TRUE/FALSE, text with control characters — each is a
DirectoryError naming the entry, handled like an unreachable directory for that entry.
Referrals are not followed (any host could be named); a search over the server's size
limit returns what came, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldap3 import (
    ANONYMOUS,
    BASE,
    EXTERNAL,
    LEVEL,
    NONE,
    SASL,
    SIMPLE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException

from profiles.app_config import plan
from profiles.app_config.model import Device, ae_title_problem

log = logging.getLogger(__name__)

ENTRY_ALREADY_EXISTS = 68
NO_SUCH_OBJECT = 32
SIZE_LIMIT_EXCEEDED = 4
SIZE_LIMIT = 2000  # entries one search may return
PAGE_SIZE = 500  # entries per page of a paged search (RFC 2696)
REGISTRY_LIMIT = 1_000_000  # titles read from the Unique AE Titles Registry
MAX_TEXT = 1024  # characters of any one value we use
REFUSALS = {8: "strongerAuthRequired", 50: "insufficientAccess", 53: "unwillingToPerform"}
TIMEOUT = 5  # s, connect and each operation (ldap3 wants an int for SO_RCVTIMEO)


class DirectoryError(Exception):
    """The directory could not be used; the message says why."""


class ConnectionLost(DirectoryError):
    """The connection dropped (server restart, network): reconnect and try again."""


def _failed(what: str, exc: Exception) -> DirectoryError:
    if isinstance(exc, LDAPCommunicationError):
        return ConnectionLost(f"{what}: connection lost ({exc.__class__.__name__})")
    return DirectoryError(f"{what}: {exc}")


class OddEntry(DirectoryError):
    """An entry the server sent is missing a required value or has one of the wrong type
    (a directory edited by hand): that entry cannot be used."""


class Conflict(DirectoryError):
    """The device's identity is not clear (an entry of its name belongs to another device,
    or two unclaimed pre-configurations match): nothing is adopted or advertised as ours;
    an administrator decides (PS3.15 H.1.4.4)."""


class Refused(DirectoryError):
    """The server refused an update (Table H.1-15 "-Manual" patterns apply)."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(f"{REFUSALS.get(code, code)} ({code}): {message}")


@dataclass
class Security:
    """How to connect (CONTRACTS.md `[directory]` security patterns). The password is
    never in a repr (logs, tracebacks)."""

    pattern: str = "anonymous"  # anonymous | basic | tls
    bind_dn: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    allow_cleartext_password: bool = False

    @property
    def has_credentials(self) -> bool:
        return bool(self.bind_dn or self.client_cert)

    def without_credentials(self) -> Security:
        """The same TLS (or none), anonymous: for a server credentials may not go to."""
        return Security("tls" if self.pattern == "tls" else "anonymous",
                        ca_file=self.ca_file)


@dataclass
class Registration:
    device_dn: str
    titles: list[str]
    adopted: bool
    changed: list[str] = field(default_factory=list)


def connect(url: str, security: Security, address: str | None = None,
            collect_usage: bool = False) -> Connection:
    """An open, bound connection following the security pattern; DirectoryError if not.

    `address`: where to connect when the URL's host was resolved by the caller (the
    F.1.1 resolver); the certificate is still checked against the URL's host name."""
    parts = urlsplit(url)
    implicit = parts.scheme == "ldaps"
    tls = None
    if security.pattern == "tls":
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=security.ca_file,
                  local_certificate_file=security.client_cert,
                  local_private_key_file=security.client_key,
                  version=ssl.PROTOCOL_TLS_CLIENT)
    port = parts.port or (636 if implicit else 389)
    server = Server(parts.hostname, port=port,
                    use_ssl=implicit and tls is not None, tls=tls, get_info=NONE,
                    connect_timeout=TIMEOUT)
    if implicit and tls is None:
        raise DirectoryError('ldaps:// needs security = "tls"')
    if address is not None:
        _pin_address(server, address, port)
    kwargs: dict[str, Any] = {"authentication": ANONYMOUS}
    if security.pattern == "basic" or (security.pattern == "tls" and security.bind_dn
                                       and not security.client_cert):
        if security.pattern == "basic" and not security.allow_cleartext_password:
            raise DirectoryError("a simple bind over a plain connection needs "
                                 "allow_cleartext_password")
        kwargs = {"authentication": SIMPLE, "user": security.bind_dn,
                  "password": security.password}
    elif security.pattern == "tls" and security.client_cert:
        # An empty authorization identity: "be who the certificate says" (RFC 4422 A).
        kwargs = {"authentication": SASL, "sasl_mechanism": EXTERNAL, "sasl_credentials": ""}
    conn = Connection(server, receive_timeout=TIMEOUT, raise_exceptions=False,
                      collect_usage=collect_usage, auto_referrals=False, **kwargs)
    try:
        conn.open()
        if conn.closed:
            raise DirectoryError("cannot connect")
        if tls is not None and not implicit and not conn.start_tls():
            raise DirectoryError(f"StartTLS failed: {conn.result.get('description')}")
        if not conn.bind():
            raise DirectoryError(f"bind failed: {conn.result.get('description')} "
                                 f"({conn.result.get('result')})")
    except DirectoryError:
        close(conn)
        raise
    except Exception as exc:  # socket and TLS errors: ldap3 raises them, several kinds
        close(conn)
        raise DirectoryError(f"{exc.__class__.__name__}: {exc}") from None
    return conn


def _pin_address(server: Server, address: str, port: int) -> None:
    """Connect to the address our F.1.1 resolver found, while `server.host` stays the
    name — the one the certificate is checked against. ldap3 resolves names itself with
    the system resolver; seeding its address cache is the way to hand it ours."""
    server._address_info = [[socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                             (address, port), None, None]]
    server._address_info_resolved_time = datetime.now()


def close(conn: Connection) -> None:
    """Unbind, whatever state the connection is in (a failed TLS handshake leaves a
    closed socket that unbind would trip over)."""
    with contextlib.suppress(Exception):
        conn.unbind()


def _search(conn: Connection, base: str, flt: str, scope: Any = SUBTREE,
            attributes: list[str] | None = None, paged: bool = False,
            limit: int = SIZE_LIMIT) -> list[dict]:
    """Entries found, bounded by SIZE_LIMIT entries and TIMEOUT seconds on the server;
    `paged` asks for them PAGE_SIZE at a time (RFC 2696) up to `limit`."""
    if paged:
        out: list[dict] = []
        cookie = None
        while len(out) < limit:
            out += _search_once(conn, base, flt, scope, attributes, PAGE_SIZE, cookie)
            cookie = (conn.result or {}).get("controls", {}).get(
                "1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
            if not cookie:
                break
        return out[:limit]
    return _search_once(conn, base, flt, scope, attributes)


def _search_once(conn: Connection, base: str, flt: str, scope: Any,
                 attributes: list[str] | None, page: int = 0,
                 cookie: bytes | None = None) -> list[dict]:
    try:
        ok = conn.search(base, flt, search_scope=scope, attributes=attributes or [],
                         size_limit=0 if page else SIZE_LIMIT, time_limit=TIMEOUT,
                         paged_size=page or None, paged_cookie=cookie)
    except LDAPException as exc:
        raise _failed(f"search {flt} under {base}", exc) from None
    if not ok:
        if conn.closed or not conn.result:
            raise ConnectionLost(f"search {flt} under {base}: connection lost")
        code = conn.result.get("result")
        if code in (0, NO_SUCH_OBJECT):
            return []
        if code != SIZE_LIMIT_EXCEEDED:
            raise DirectoryError(f"search {flt} under {base}: "
                                 f"{conn.result.get('description')} ({code})")
    if (conn.result or {}).get("result") == SIZE_LIMIT_EXCEEDED:  # ldap3 says ok with entries
        log.warning("search %s under %s: over the server's size limit, %d entries used",
                    flt, base, len(conn.response or []))
    return [{"dn": e["dn"], **{k.lower(): v for k, v in (e.get("attributes") or {}).items()}}
            for e in conn.response or [] if e.get("type") == "searchResEntry"
            and isinstance(e.get("dn"), str)]


def find_configuration_root(conn: Connection) -> str | None:
    """The DN of a dicomConfigurationRoot with its two children, in any naming context."""
    dse = _search(conn, "", "(objectClass=*)", BASE, ["namingContexts"])
    contexts = dse[0].get("namingcontexts", []) if dse else []
    for context in contexts:
        for root in _search(conn, context, "(objectClass=dicomConfigurationRoot)"):
            below = _search(conn, root["dn"], "(|(objectClass=dicomDevicesRoot)"
                            "(objectClass=dicomUniqueAETitlesRegistryRoot))", LEVEL,
                            ["objectClass", "cn"])
            kinds = {(str(oc).lower(), _one(e, "cn", required=False))
                     for e in below for oc in _many(e, "objectClass")}
            if {("dicomdevicesroot", "Devices"),
                    ("dicomuniqueaetitlesregistryroot", "Unique AE Titles Registry")} <= kinds:
                return root["dn"]
            log.info("%s lacks cn=Devices or the registry: not a DICOM tree", root["dn"])
    return None


def find_directory(urls: list[tuple[str, str | None]], security: Security,
                   trusted=lambda url: True
                   ) -> tuple[Connection | None, str | None, str | None, list[dict]]:
    """Try each (URL, address) in order until one holds a DICOM tree:
    (connection, URL, base DN, what each try gave). Credentials go only to a URL
    `trusted` accepts; the others are tried anonymously (reads only)."""
    tried = []
    for url, address in urls:
        use = security
        if security.has_credentials and not trusted(url):
            use = security.without_credentials()
            log.info("%s: not a configured server; connecting without credentials", url)
        try:
            conn = connect(url, use, address)
        except DirectoryError as exc:
            tried.append({"url": url, "result": str(exc)})
            continue
        try:
            base = find_configuration_root(conn)
        except DirectoryError as exc:
            close(conn)
            tried.append({"url": url, "result": str(exc)})
            continue
        if base is None:
            close(conn)
            tried.append({"url": url, "result": "no dicomConfigurationRoot with cn=Devices "
                                                "and the Unique AE Titles Registry"})
            continue
        tried.append({"url": url, "result": "ok" if use is security
                      else "ok (anonymous: credentials only go to configured servers)"})
        return conn, url, base, tried
    return None, None, None, tried


def _first(entry: dict, name: str) -> Any:
    value = entry.get(name.lower())
    if isinstance(value, list):
        return value[0] if value else None
    return value


# -- the LDAP boundary: presence and type of what a server answered ---------------------

def _checked_text(entry: dict, name: str, value: Any) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise OddEntry(f"{entry['dn']}: {name} is not UTF-8 text") from None
    text = str(value)
    if len(text) > MAX_TEXT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise OddEntry(f"{entry['dn']}: {name} is not a usable value: {text[:40]!r}")
    return text


def _one(entry: dict, name: str, required: bool = True) -> str | None:
    value = _first(entry, name)
    if value in (None, [], ""):
        if required:
            raise OddEntry(f"{entry['dn']}: no {name}")
        return None
    return _checked_text(entry, name, value)


def _many(entry: dict, name: str) -> list[str]:
    value = entry.get(name.lower(), [])
    values = value if isinstance(value, list) else [value]
    return [_checked_text(entry, name, v) for v in values[:256]]


def _title(entry: dict) -> str:
    title = _one(entry, "dicomAETitle")
    problem = ae_title_problem(title)
    if problem:
        raise OddEntry(f"{entry['dn']}: dicomAETitle {title[:20]!r}: {problem}")
    return title


def _port(entry: dict) -> int | None:
    port = _one(entry, "dicomPort", required=False)
    if port is None:
        return None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OddEntry(f"{entry['dn']}: dicomPort {port[:20]!r} is not a port")
    return int(port)


def _boolean(entry: dict, name: str) -> bool | None:
    value = _one(entry, name, required=False)
    if value is None:
        return None
    if value.upper() not in ("TRUE", "FALSE"):
        raise OddEntry(f"{entry['dn']}: {name} {value[:20]!r} is not TRUE or FALSE")
    return value.upper() == "TRUE"


class Directory:
    """Operations on one connection to one DICOM configuration root."""

    def __init__(self, conn: Connection, base: str):
        self.conn = conn
        self.base = base
        self.odd_entries = 0  # entries skipped at the boundary

    def close(self) -> None:
        close(self.conn)

    # -- writing -------------------------------------------------------------------------

    def _add(self, entry: plan.Entry) -> int:
        """Add an entry; 0, ENTRY_ALREADY_EXISTS, or Refused/DirectoryError raised."""
        attributes = {k: v for k, v in entry.attributes.items() if k != "objectClass"}
        try:
            self.conn.add(entry.dn, entry.attributes["objectClass"], attributes)
        except LDAPException as exc:
            raise _failed(f"add {entry.dn}", exc) from None
        code = self.conn.result.get("result")
        if code in (0, ENTRY_ALREADY_EXISTS):
            return code
        if code in REFUSALS:
            raise Refused(code, f"add {entry.dn}")
        raise DirectoryError(f"add {entry.dn}: {self.conn.result.get('description')} "
                             f"({code}) {self.conn.result.get('message', '')}".strip())

    def _delete(self, dn: str) -> None:
        try:
            self.conn.delete(dn)
        except LDAPException as exc:
            log.warning("rollback: cannot delete %s: %s", dn, exc)

    def _modify(self, dn: str, changes: dict) -> None:
        try:
            self.conn.modify(dn, changes)
        except LDAPException as exc:
            raise _failed(f"modify {dn}", exc) from None
        code = self.conn.result.get("result")
        if code in REFUSALS:
            raise Refused(code, f"modify {dn}")
        if code != 0:
            raise DirectoryError(f"modify {dn}: {self.conn.result.get('description')}")

    # -- reading ------------------------------------------------------------------------

    def _devices(self, flt: str) -> list[dict]:
        return _search(self.conn, plan.devices_dn(self.base),
                       f"(&(objectClass=dicomDevice){flt})", LEVEL, ["*"])

    def find_device(self, device: Device, device_id: str | None = None
                    ) -> tuple[dict | None, bool]:
        """(the entry this device may use, whether it is its own already); Conflict when
        its identity is not clear. In order (issue 13):
        - the entry carrying this device's marker: its own, even renamed (H.1.4.4);
        - the entry of its name, unless another device's marker is on it (a conflict);
        - an administrator's pre-configuration matched by serial number together with
          manufacturer and model, exactly one that no device has claimed (two: conflict);
          entries other devices claimed are theirs, not candidates;
        - none: the device registers an entry of its own."""
        if device_id is not None:
            mine = self._devices(plan.eq("dicomSoftwareVersion", plan.marker(device_id)))
            if len(mine) > 1:
                raise Conflict(f"{len(mine)} device entries carry this device's marker: "
                               + ", ".join(e["dn"] for e in mine))
            if mine:
                return mine[0], True
        by_name = self._devices(plan.eq("dicomDeviceName", device.name))
        if by_name:
            entry = by_name[0]
            if device_id is not None and self._claimed(entry):
                raise Conflict(f"device {device.name} in the directory belongs to another "
                               "device (it carries another agent's identity marker)")
            return entry, False
        if device.serial_number and device.manufacturer and device.model_name:
            found = self._devices(
                plan.eq("dicomDeviceSerialNumber", device.serial_number)
                + plan.eq("dicomManufacturer", device.manufacturer)
                + plan.eq("dicomManufacturerModelName", device.model_name))
            unclaimed = [e for e in found if device_id is None or not self._claimed(e)]
            if len(unclaimed) > 1:
                raise Conflict(f"{len(unclaimed)} unclaimed devices match serial number "
                               f"{device.serial_number!r}, manufacturer and model: "
                               + ", ".join(_one(e, "dicomDeviceName", required=False) or
                                           e["dn"] for e in unclaimed))
            if unclaimed:
                return unclaimed[0], False
        return None, False

    def _claimed(self, entry: dict) -> bool:
        return bool(plan.markers_in(_many(entry, "dicomSoftwareVersion")))

    def registered_titles(self) -> set[str]:
        """Every title reserved; an odd registry entry is kept as its raw text (it still
        makes a candidate look taken) and logged."""
        titles = set()
        # All of them, page by page: a title the read missed would look free, and every
        # such candidate costs a refused add.
        for e in _search(self.conn, plan.registry_dn(self.base),
                         "(objectClass=dicomUniqueAETitle)", LEVEL, ["dicomAETitle"],
                         paged=True, limit=REGISTRY_LIMIT):
            try:
                titles.add(_title(e))
            except OddEntry as exc:
                self.odd_entries += 1
                log.warning("registry: %s", exc)
                titles.add(str(_first(e, "dicomAETitle")))
        return titles

    def title_owner(self, title: str) -> str | None:
        """The device whose Network AE has this title, if any."""
        found = _search(self.conn, plan.devices_dn(self.base), f"(&(objectClass=dicomNetworkAE)"
                        f"{plan.eq('dicomAETitle', title)})", SUBTREE, ["dicomAETitle"])
        if not found:
            return None
        return plan.rdn_value(plan.split_rdn(found[0]["dn"])[1])

    # -- registering --------------------------------------------------------------------

    def register(self, device: Device, hostnames: dict[str, str], owned: list[str],
                 attempts: int, device_id: str | None = None) -> Registration:
        """Register or adopt (find_device says which); with `device_id`, the entry made
        or adopted carries this device's identity marker."""
        existing, _ = self.find_device(device, device_id)
        if device_id is not None:
            device = plan.with_marker(device, device_id)
        if existing is not None:
            return self._adopt(existing, device, hostnames, device_id)
        added: list[str] = []  # DNs this attempt created, to roll back
        try:
            titles = [self._reserve(ae, i, owned, attempts, added)
                      for i, ae in enumerate(device.aes)]
            for entry in plan.device_entries(self.base, device, titles, hostnames):
                if self._add(entry) == ENTRY_ALREADY_EXISTS:
                    raise DirectoryError(f"{entry.dn} already exists")
                added.append(entry.dn)
        except BaseException:
            for dn in reversed(added):
                self._delete(dn)
            raise
        return Registration(plan.device_dn(self.base, device.name), titles, adopted=False)

    def _reserve(self, ae, index: int, owned: list[str], attempts: int,
                 added: list[str]) -> str:
        """H.1.4.3.5: create the title's dicomUniqueAETitle; 68 means taken (by us, if
        we owned it before a reboot; else by someone else)."""
        if ae.title is not None:
            candidates = [ae.title]
        else:
            mine = [t for t in owned if _fits(ae.title_template, t, attempts)]
            candidates = mine[index:index + 1] + list(plan.candidate_titles(
                ae.title_template, attempts, self.registered_titles()))
        for title in candidates:
            code = self._add(plan.title_entry(self.base, title))
            if code == 0:
                added.append(plan.title_dn(self.base, title))
                return title
            if title in owned and self.title_owner(title) is None:
                return title  # ours from before (a reboot): reuse it
            if ae.title is not None:
                owner = self.title_owner(title)
                raise DirectoryError(f'AE title "{title}" is taken'
                                     + (f" by device {owner}" if owner else
                                        " (reserved in the Unique AE Titles Registry)"))
        raise DirectoryError(f'no free AE title from template "{ae.title_template}" in '
                             f"{attempts} attempts")

    def _adopt(self, existing: dict, device: Device, hostnames: dict[str, str],
               device_id: str | None = None) -> Registration:
        """An existing entry (an administrator's pre-configuration, or ours): keep
        everything, change only what is device-side — its connections' hostnames and
        ports — and claim it with the device's marker. dicomInstalled is directory-side
        (issue 13): an administrator's value wins once the entry exists; the device reads
        it back (effective())."""
        dn = existing["dn"]
        changed = []
        if device_id is not None and plan.marker(device_id).lower() not in [
                v.lower() for v in _many(existing, "dicomSoftwareVersion")]:
            self._modify(dn, {"dicomSoftwareVersion": [("MODIFY_ADD",
                                                        [plan.marker(device_id)])]})
            changed.append(dn)
        for entry in _search(self.conn, dn, "(objectClass=dicomNetworkConnection)", LEVEL,
                             ["cn", "dicomHostname", "dicomPort"]):
            try:
                name = _one(entry, "cn")  # MAY in the schema: a hand-made entry may lack it
            except OddEntry as exc:
                self.odd_entries += 1
                log.warning("adopting %s: %s: left as it is", dn, exc)
                continue
            conn = next((c for c in device.connections if c.name == name), None)
            if conn is None:
                continue
            wanted = {"dicomHostname": hostnames[name], "dicomPort": conn.port}
            changes = {}
            for attribute, value in wanted.items():
                current = _first(entry, attribute)
                current = None if current in (None, []) else str(current)
                if value is not None and current != str(value):
                    changes[attribute] = [("MODIFY_REPLACE", [str(value)])]
            if changes:
                self._modify(entry["dn"], changes)
                changed.append(entry["dn"])
        titles = [_title(e) for e in _search(
            self.conn, dn, "(objectClass=dicomNetworkAE)", LEVEL, ["dicomAETitle"])]
        return Registration(dn, titles, adopted=True, changed=changed)

    # -- what the directory says of this device (issue 13: administrators' edits) --------

    def effective(self, device_dn: str) -> dict:
        """The directory-side attributes of the device's own entry, as they are now:
        {"installed": bool, "aes": {title: {"installed", "application_cluster",
        "preferred_called_ae_title"}}}; dicomInstalled of an AE inherits the device's."""
        dev = _search(self.conn, device_dn, "(objectClass=dicomDevice)", BASE,
                      ["dicomInstalled"])
        if not dev:
            raise DirectoryError(f"{device_dn}: not found")
        installed = _boolean(dev[0], "dicomInstalled")
        installed = True if installed is None else installed
        aes = {}
        for ae in _search(self.conn, device_dn, "(objectClass=dicomNetworkAE)", LEVEL,
                          ["dicomAETitle", "dicomInstalled", "dicomApplicationCluster",
                           "dicomPreferredCalledAETitle"]):
            own = _boolean(ae, "dicomInstalled")
            aes[_title(ae)] = {
                "installed": installed if own is None else own,
                "application_cluster": sorted(_many(ae, "dicomApplicationCluster")),
                "preferred_called_ae_title": sorted(_many(ae, "dicomPreferredCalledAETitle"))}
        return {"installed": installed, "aes": aes}

    # -- decommissioning (issue 13) ------------------------------------------------------

    def unregister(self, device: Device, device_id: str, keep_titles: bool
                   ) -> tuple[str, list[str], list[str]]:
        """Take this device out: (its DN, the DNs removed or changed, the titles
        released). Only an entry carrying this device's marker is touched (Conflict
        otherwise; DirectoryError when there is none). With `keep_titles` the entries and
        titles stay and the device is set `dicomInstalled: FALSE` (out of service)."""
        entry, mine = self.find_device(device, device_id)
        if entry is None:
            raise DirectoryError(f"no device {device.name} in the directory")
        if not mine:
            raise Conflict(f"{entry['dn']} is not this device's (it does not carry its "
                           "identity marker): not touched")
        dn = entry["dn"]
        if keep_titles:
            self._modify(dn, {"dicomInstalled": [("MODIFY_REPLACE", ["FALSE"])]})
            return dn, [dn], []
        below = _search(self.conn, dn, "(objectClass=*)", SUBTREE, ["dicomAETitle",
                                                                    "objectClass"])
        titles = [_title(e) for e in below
                  if "dicomnetworkae" in [str(o).lower() for o in _many(e, "objectClass")]]
        removed = []
        for child in sorted(below, key=lambda e: e["dn"].count(","), reverse=True):
            self._remove(child["dn"])
            removed.append(child["dn"])
        for title in titles:  # released: the device owned them
            self._remove(plan.title_dn(self.base, title))
            removed.append(plan.title_dn(self.base, title))
        return dn, removed, titles

    def _remove(self, dn: str) -> None:
        try:
            self.conn.delete(dn)
        except LDAPException as exc:
            raise _failed(f"delete {dn}", exc) from None
        code = self.conn.result.get("result")
        if code in REFUSALS:
            raise Refused(code, f"delete {dn}")
        if code not in (0, NO_SUCH_OBJECT):
            raise DirectoryError(f"delete {dn}: {self.conn.result.get('description')}")

    # -- lookups (H.1.4.2) ------------------------------------------------------------------

    def lookup(self, title: str) -> dict:
        found = _search(self.conn, plan.devices_dn(self.base),
                        f"(&(objectClass=dicomNetworkAE){plan.eq('dicomAETitle', title)})",
                        SUBTREE, ["*"])
        if not found:
            return {"v": 1, "aet": title, "found": False, "stale": False,
                    "source": "directory"}
        return self._answer(found[0])

    def query(self, cluster: str | None, device_type: str | None) -> list[dict]:
        flt = "(objectClass=dicomNetworkAE)"
        if cluster:
            flt = f"(&{flt}{plan.eq('dicomApplicationCluster', cluster)})"
        aes = _search(self.conn, plan.devices_dn(self.base), flt, SUBTREE, ["*"], paged=True)
        answers = []
        for ae in aes:
            try:
                answers.append(self._answer(ae))
            except OddEntry as exc:  # one odd AE does not hide the others
                self.odd_entries += 1
                log.warning("query: %s", exc)
        if device_type:
            answers = [a for a in answers if device_type in a.get("primary_device_type", [])]
        return answers

    def preferred_called(self, device: Device) -> list[dict]:
        """This device's Preferred Called AE Titles (H.1.1.2), each looked up."""
        titles = dict.fromkeys(t for ae in device.aes for t in ae.preferred_called_ae_title)
        return [self.lookup(t) for t in titles]

    def _answer(self, ae: dict) -> dict:
        try:
            device_dn = plan.split_rdn(ae["dn"])[1]
        except (ValueError, IndexError) as exc:
            raise OddEntry(f"{ae['dn'][:80]!r}: not a DN: {exc}") from None
        device = _search(self.conn, device_dn, "(objectClass=dicomDevice)", BASE, ["*"])
        dev = device[0] if device else {"dn": device_dn}
        device_installed = _boolean(dev, "dicomInstalled") is True
        ae_installed = _boolean(ae, "dicomInstalled")
        installed = device_installed if ae_installed is None else ae_installed
        connections = []
        for ref in _many(ae, "dicomNetworkConnectionReference"):
            found = _search(self.conn, ref, "(objectClass=dicomNetworkConnection)", BASE, ["*"])
            if not found:
                continue
            c = found[0]
            c_installed = _boolean(c, "dicomInstalled")
            connections.append({
                "hostname": _one(c, "dicomHostname"), "port": _port(c),
                "tls_cipher_suites": _many(c, "dicomTLSCipherSuite"),
                "installed": device_installed if c_installed is None else c_installed})
        return {"v": 1, "aet": _title(ae), "found": True, "stale": False,
                "source": "directory", "device": _one(dev, "dicomDeviceName", required=False),
                "installed": installed, "connections": connections,
                "application_cluster": _many(ae, "dicomApplicationCluster"),
                "primary_device_type": _many(dev, "dicomPrimaryDeviceType"),
                "preferred_called_ae_title": _many(ae, "dicomPreferredCalledAETitle")}


def _fits(template: str, title: str, attempts: int) -> bool:
    return any(template.format(n=n) == title for n in range(1, attempts + 1))


def manual_ldif_path(state_dir: Path, device: Device) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device.name)
    return state_dir / "manual" / f"{safe}.ldif"
