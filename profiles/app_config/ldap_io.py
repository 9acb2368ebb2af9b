"""The LDAP driver of PS3.15 H.1: find the directory, register the device, answer lookups.

Synchronous ldap3 (the daemon runs it in a thread, never on the event loop). What is
written comes from plan.py; this module decides the order of operations and reads the
answers:

- find (H.1.4.1): SRV targets in RFC 2782 order, then `directory.servers`, tried
  staggered (a target that never answers costs a quarter of a second; the RFC 2782 order
  decides among those that answer within a second of the first attempt); on each, the
  root DSE's namingContexts are searched for `dicomConfigurationRoot`, accepted only
  with `cn=Devices` (dicomDevicesRoot) and `cn=Unique AE Titles Registry`
  (dicomUniqueAETitlesRegistryRoot) directly below it (H.1.2 note);
- register (H.1.4.3), unregister, read back: decided by the sans-IO core
  (registration.py); `Directory.execute` performs its searches, adds, modifies, deletes
  and intent records on the connection;
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
import queue
import socket
import ssl
import threading
import time
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
    MODIFY_ADD,
    MODIFY_DELETE,
    MODIFY_REPLACE,
    NONE,
    SASL,
    SIMPLE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException

from profiles import statefile_io
from profiles.app_config import plan, registration
from profiles.app_config.model import Device
from profiles.app_config.registration import (  # noqa: F401 (re-exported)
    ENTRY_ALREADY_EXISTS,
    NO_SUCH_OBJECT,
    REFUSALS,
    Conflict,
    ConnectionLost,
    DirectoryError,
    OddEntry,
    Refused,
    Registration,
)
from profiles.app_config.srv import Staggered

log = logging.getLogger(__name__)

SIZE_LIMIT_EXCEEDED = 4
SIZE_LIMIT = 2000  # entries one search may return
PAGE_SIZE = 500  # entries per page of a paged search (RFC 2696)
REGISTRY_LIMIT = 1_000_000  # titles read from the Unique AE Titles Registry
TIMEOUT = 5  # s, connect and each operation (ldap3 wants an int for SO_RCVTIMEO)
SCOPES = {registration.BASE: BASE, registration.ONE: LEVEL, registration.SUB: SUBTREE}
MODIFY_OPS = {"add": MODIFY_ADD, "delete": MODIFY_DELETE, "replace": MODIFY_REPLACE}


class _Count:
    """A number several worker threads add to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


# LDAP requests this process sent (StartTLS, bind, each search page, add, modify, delete,
# unbind): `counters.directory.operations`, and per device in `make bench`'s storm.
OPERATIONS = _Count()


def _failed(what: str, exc: Exception) -> DirectoryError:
    if isinstance(exc, LDAPCommunicationError):
        return ConnectionLost(f"{what}: connection lost ({exc.__class__.__name__})")
    return DirectoryError(f"{what}: {exc}")


@dataclass
class Security:
    """How to connect (dicom-agent.toml(5), [directory] security). The password is
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
        if tls is not None and not implicit:
            OPERATIONS.add()
            if not conn.start_tls():
                raise DirectoryError(f"StartTLS failed: {conn.result.get('description')}")
        OPERATIONS.add()
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
    if not conn.closed:
        OPERATIONS.add()
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
    OPERATIONS.add()
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


def _try(url: str, address: str | None, security: Security, trusted
         ) -> tuple[Connection | None, str | None, str]:
    """One candidate: (connection, base DN, what it gave) — a connection only when the
    server holds a DICOM tree."""
    use = security
    if security.has_credentials and not trusted(url):
        use = security.without_credentials()
        log.info("%s: not a configured server; connecting without credentials", url)
    try:
        conn = connect(url, use, address)
    except DirectoryError as exc:
        return None, None, str(exc)
    try:
        base = find_configuration_root(conn)
    except DirectoryError as exc:
        close(conn)
        return None, None, str(exc)
    if base is None:
        close(conn)
        return None, None, ("no dicomConfigurationRoot with cn=Devices and the Unique AE "
                            "Titles Registry")
    return conn, base, "ok" if use is security else \
        "ok (anonymous: credentials only go to configured servers)"


def find_directory(urls: list[tuple[str, str | None]], security: Security,
                   trusted=lambda url: True, ranks: list[int] | None = None,
                   clock=time.monotonic
                   ) -> tuple[Connection | None, str | None, str | None, list[dict]]:
    """Try the (URL, address) candidates, staggered (srv.Staggered: a target that does
    not answer costs about a quarter of a second, not a connect timeout), until one holds
    a DICOM tree: (connection, URL, base DN, what each try gave, in candidate order).
    `ranks`: each candidate's SRV priority (default: each its own, in order). Credentials
    go only to a URL `trusted` accepts; the others are tried anonymously (reads only).
    Attempts not waited for finish in the background; a connection they make is closed."""
    plan = Staggered(ranks if ranks is not None else list(range(len(urls))))
    results: queue.Queue[tuple[int, Connection | None, str | None, str]] = queue.Queue()
    lock = threading.Lock()
    over = False

    def attempt(i: int) -> None:
        conn, base, result = _try(*urls[i], security, trusted)
        with lock:
            if over:  # decided without it: a late connection is not kept
                if conn is not None:
                    close(conn)
                return
            results.put((i, conn, base, result))

    got: dict[int, tuple[Connection | None, str | None, str]] = {}
    chosen: int | None = None
    while True:
        now = clock()
        for i in plan.start_due(now):
            threading.Thread(target=attempt, args=(i,), daemon=True,
                             name=f"ldap-try-{i}").start()
        chosen = plan.choice(now)
        if chosen is not None or plan.exhausted():
            break
        due = plan.wakeup(now)
        try:
            i, conn, base, result = results.get(timeout=None if due is None
                                                else max(due - clock(), 0.0))
        except queue.Empty:
            continue
        got[i] = (conn, base, result)
        (plan.answer if conn is not None else plan.fail)(i)
    with lock:
        over = True
        while not results.empty():
            i, conn, base, result = results.get_nowait()
            got[i] = (conn, base, result)
    tried = []
    for i in sorted(plan.started):
        url = urls[i][0]
        if i not in got:
            tried.append({"url": url, "result": f"no answer within "
                          f"{clock() - plan.started[i]:.1f} s: not waited for"})
            continue
        conn, base, result = got[i]
        if conn is not None and i != chosen:
            close(conn)
            result += " (another answered first)"
        tried.append({"url": url, "result": result})
    if chosen is None:
        return None, None, None, tried
    conn, base, _ = got[chosen]
    return conn, urls[chosen][0], base, tried


# The LDAP boundary (presence and type of what a server answered): the core's checks.
_first, _one, _many = registration.first, registration.one, registration.many
_title, _port, _boolean = registration.title_of, registration.port_of, registration.boolean_of


class Directory:
    """Operations on one connection to one DICOM configuration root."""

    def __init__(self, conn: Connection, base: str, intent_path: Path | None = None):
        self.conn = conn
        self.base = base
        self.intent_path = intent_path  # the registration core's write-ahead record
        self.odd_entries = 0  # entries skipped at the boundary

    def close(self) -> None:
        close(self.conn)

    # -- the registration core's operations, performed (registration.py decides) ------------

    def execute(self, op: registration.Op) -> Any:
        match op:
            case registration.Search():
                return _search(self.conn, op.base, op.filter(), SCOPES[op.scope],
                               list(op.attributes), paged=op.paged,
                               limit=REGISTRY_LIMIT if op.paged else SIZE_LIMIT)
            case registration.Add():
                attrs = {k: v for k, v in op.entry.attributes.items() if k != "objectClass"}
                return self._result(f"add {op.entry.dn}", lambda: self.conn.add(
                    op.entry.dn, op.entry.attributes["objectClass"], attrs))
            case registration.Modify():
                changes = {attr: [(MODIFY_OPS[kind], list(values))]
                           for kind, attr, values in op.changes}
                return self._result(f"modify {op.dn}",
                                    lambda: self.conn.modify(op.dn, changes))
            case registration.Delete():
                return self._result(f"delete {op.dn}", lambda: self.conn.delete(op.dn))
            case registration.Persist():
                if self.intent_path is not None:
                    if op.intent is None:
                        self.intent_path.unlink(missing_ok=True)
                    else:
                        statefile_io.write_json(self.intent_path, op.intent, mode=0o600)
                return None
        raise TypeError(f"not an operation: {op!r}")

    def _result(self, what: str, call: Any) -> int:
        OPERATIONS.add()
        try:
            call()
        except LDAPException as exc:
            raise _failed(what, exc) from None
        if self.conn.closed or not self.conn.result:
            raise ConnectionLost(f"{what}: connection lost")
        return int(self.conn.result.get("result", -1))

    def run(self, operation: registration.Operation) -> Any:
        return registration.run(operation, self.execute)

    def registered_titles(self) -> set[str]:
        return self.run(registration.registered_titles(self.base, REGISTRY_LIMIT))

    def register(self, device: Device, hostnames: dict[str, str], owned: list[str],
                 attempts: int, device_id: str | None = None,
                 keys: dict[str, str] | None = None) -> Registration:
        known = registration.Known(list(owned), dict(keys or {}))
        return self.run(registration.register(self.base, device, hostnames, known, attempts,
                                              device_id, REGISTRY_LIMIT))

    def recover(self, intent: dict) -> tuple[list[str], str | None]:
        return self.run(registration.recover(intent))

    def effective(self, device_dn: str) -> dict:
        return self.run(registration.effective(device_dn))

    def unregister(self, device: Device, device_id: str, keep_titles: bool
                   ) -> tuple[str, list[str], list[str]]:
        return self.run(registration.unregister(self.base, device, device_id, keep_titles))

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


def manual_ldif_path(state_dir: Path, device: Device) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device.name)
    return state_dir / "manual" / f"{safe}.ldif"
