"""The registration core of PS3.15 H.1.4.3, sans IO: what to search, add, modify and
delete, decided here; performed by a driver (directory.py, on ldap3) or by a test's
in-memory directory.

Each operation is a generator: it yields `Search`, `Add`, `Modify`, `Delete` and
`Persist` and is sent their results (a list of entries; an LDAP result code; None) —
`run(operation, execute)` drives one. A driver raises ConnectionLost into it when the
connection drops. Entries come back as {"dn": str, "<attribute lower case>": [str |
bytes]}.

What it decides:
- whose entry is whose (`find_device`): the device's own marker first, then its name
  (unless another device's marker is on it), then one unclaimed pre-configuration by
  serial number + manufacturer + model; anything ambiguous is a Conflict;
- registration (`register`): a new device reserves its titles (H.1.4.3.5) and adds its
  entries; an existing one (its own, or a pre-configuration it adopts) is brought to the
  configuration by the smallest change (`update`);
- which side wins, attribute by attribute (DEVICE_SIDE below): the update changes only
  the device-side attributes, never reverts a directory-side one, never touches an
  attribute or object class it does not know (another tool's);
- AEs are matched by key (`[device.ae] key`, default the title or template) through the
  titles the state records for each key, never by position; an AE the administrator
  renamed on the device's own entry is followed (`title_changes`);
- a removed AE releases its title only if the device reserved it;
- write-ahead intent (`Persist`): every add is recorded before it is made, so a kill -9
  anywhere in a registration is rolled back on the next start (`recover`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from profiles.app_config import plan
from profiles.app_config.model import Device, NetworkAE, ae_title_problem

log = logging.getLogger(__name__)

ENTRY_ALREADY_EXISTS = 68
NO_SUCH_OBJECT = 32
REFUSALS = {8: "strongerAuthRequired", 50: "insufficientAccess", 53: "unwillingToPerform"}
MAX_TEXT = 1024  # characters of any one value we use

BASE, ONE, SUB = "base", "one", "sub"


# -- errors --------------------------------------------------------------------------------

class DirectoryError(Exception):
    pass


class ConnectionLost(DirectoryError):
    """The connection dropped (or timed out): reconnect and try again."""


class OddEntry(DirectoryError):
    """An entry whose content is not what the schema says (the LDAP boundary)."""


class Conflict(DirectoryError):
    """The device's identity in the directory is not clear: an administrator decides."""


class Refused(DirectoryError):
    """The directory will not let us write (Table H.1-15's "-Manual" patterns)."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(f"{REFUSALS.get(code, code)} ({code}): {message}")


# -- operations ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """Search for entries (an operation the driver performs)."""

    base: str
    scope: str = SUB
    object_class: str = "*"
    equals: tuple[tuple[str, str], ...] = ()
    attributes: tuple[str, ...] = ("*",)
    paged: bool = False

    def filter(self) -> str:
        """RFC 4515 text, each assertion value escaped."""
        parts = [f"(objectClass={self.object_class})"]
        parts += [plan.eq(a, v) for a, v in self.equals]
        return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"


@dataclass(frozen=True)
class Add:
    """Add an entry (an operation the driver performs)."""

    entry: plan.Entry


@dataclass(frozen=True)
class Modify:
    """Modify an entry's attributes (an operation the driver performs)."""

    dn: str
    changes: tuple[tuple[str, str, tuple[Any, ...]], ...]  # (add|delete|replace, attr, values)


@dataclass(frozen=True)
class Delete:
    """Delete an entry (an operation the driver performs)."""

    dn: str


@dataclass(frozen=True)
class Persist:
    """Write the intent record (None: remove it) before going on."""
    intent: dict | None


Op = Search | Add | Modify | Delete | Persist
Operation = Generator[Op, Any, Any]


def run(operation: Operation, execute: Callable[[Op], Any]) -> Any:
    """Drive `operation`: each yielded Op is executed; an exception `execute` raises
    (ConnectionLost) is thrown into the operation, which may roll back or let it go."""
    try:
        op = next(operation)
        while True:
            try:
                result = execute(op)
            except DirectoryError as exc:
                op = operation.throw(exc)
            else:
                op = operation.send(result)
    except StopIteration as done:
        return done.value


def _checked(code: int, what: str, ok: tuple[int, ...] = (0,)) -> int:
    if code in ok:
        return code
    if code in REFUSALS:
        raise Refused(code, what)
    raise DirectoryError(f"{what}: result {code}")


# -- the LDAP boundary: presence and type of what a server answered ------------------------

def first(entry: dict, name: str) -> Any:
    value = entry.get(name.lower())
    if isinstance(value, list):
        return value[0] if value else None
    return value


def checked_text(entry: dict, name: str, value: Any) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise OddEntry(f"{entry['dn']}: {name} is not UTF-8 text") from None
    text = str(value)
    if len(text) > MAX_TEXT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise OddEntry(f"{entry['dn']}: {name} is not a usable value: {text[:40]!r}")
    return text


def one(entry: dict, name: str, required: bool = True) -> str | None:
    value = first(entry, name)
    if value in (None, [], ""):
        if required:
            raise OddEntry(f"{entry['dn']}: no {name}")
        return None
    return checked_text(entry, name, value)


def many(entry: dict, name: str) -> list[str]:
    value = entry.get(name.lower(), [])
    values = value if isinstance(value, list) else [value]
    return [checked_text(entry, name, v) for v in values[:256]]


def title_of(entry: dict) -> str:
    title = one(entry, "dicomAETitle")
    problem = ae_title_problem(title)
    if problem:
        raise OddEntry(f"{entry['dn']}: dicomAETitle {title[:20]!r}: {problem}")
    return title


def port_of(entry: dict) -> int | None:
    port = one(entry, "dicomPort", required=False)
    if port is None:
        return None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OddEntry(f"{entry['dn']}: dicomPort {port[:20]!r} is not a port")
    return int(port)


def boolean_of(entry: dict, name: str) -> bool | None:
    value = one(entry, name, required=False)
    if value is None:
        return None
    if value.upper() not in ("TRUE", "FALSE"):
        raise OddEntry(f"{entry['dn']}: {name} {value[:20]!r} is not TRUE or FALSE")
    return value.upper() == "TRUE"


def classes(entry: dict) -> set[str]:
    return {str(v).lower() for v in entry.get("objectclass", [])}


# -- which side wins ------------------------------------------------------------
#
# Device-side: the local file and what the device learns; the update makes the directory
# say it. Directory-side: written once, when the device creates its entry; after that an
# administrator's edit wins and is read back (effective()). Anything else on an entry
# (another tool's attributes and object classes) is left as it is.
DEVICE_SIDE = {
    "dicomdevice": ("dicomManufacturer", "dicomManufacturerModelName",
                    "dicomDeviceSerialNumber", "dicomSoftwareVersion",
                    "dicomPrimaryDeviceType", "dicomVendorData"),
    "dicomnetworkconnection": ("dicomHostname", "dicomPort", "dicomTLSCipherSuite"),
    "dicomnetworkae": ("dicomNetworkConnectionReference", "dicomAssociationInitiator",
                       "dicomAssociationAcceptor", "dicomSupportedCharacterSet",
                       "dicomVendorData"),
    "dicomtransfercapability": ("dicomSOPClass", "dicomTransferRole", "dicomTransferSyntax"),
}
DIRECTORY_SIDE = {
    "dicomdevice": ("dicomDescription", "dicomStationName", "dicomInstitutionName",
                    "dicomInstitutionAddress", "dicomInstitutionDepartmentName",
                    "dicomIssuerOfPatientID", "dicomRelatedDeviceReference",
                    "dicomAuthorizedNodeCertificateReference",
                    "dicomThisNodeCertificateReference", "dicomInstalled"),
    "dicomnetworkconnection": ("dicomInstalled",),
    "dicomnetworkae": ("dicomDescription", "dicomApplicationCluster",
                       "dicomPreferredCalledAETitle", "dicomPreferredCallingAETitle",
                       "dicomInstalled"),
}
DN_VALUED = {"dicomnetworkconnectionreference"}


def dn_key(dn: str | bytes) -> bytes:
    """A DN for comparison: without case and spaces after commas."""
    raw = dn if isinstance(dn, bytes) else dn.encode()
    return b",".join(part.strip() for part in raw.lower().split(b","))


def _normal(attribute: str, value: Any) -> bytes:
    if isinstance(value, bool):
        value = plan.boolean(value)
    raw = value if isinstance(value, bytes) else str(value).encode()
    if attribute.lower() in DN_VALUED:
        raw = dn_key(raw)
    elif attribute.lower() in ("dicominstalled", "dicomassociationinitiator",
                               "dicomassociationacceptor"):
        raw = raw.upper()
    return raw


def attribute_changes(kind: str, current: dict, wanted: plan.Entry) -> tuple:
    """The replace/delete changes that make `current`'s device-side attributes `wanted`'s."""
    changes = []
    for attribute in DEVICE_SIDE.get(kind, ()):
        have = current.get(attribute.lower(), [])
        have = have if isinstance(have, list) else [have]
        want = wanted.attributes.get(attribute, [])
        if sorted(_normal(attribute, v) for v in have) == \
                sorted(_normal(attribute, v) for v in want):
            continue
        if want:
            changes.append(("replace", attribute, tuple(want)))
        else:
            changes.append(("delete", attribute, ()))
    return tuple(changes)


# -- results -------------------------------------------------------------------------------

@dataclass
class Registration:
    """What a registration ended with: the device's DN, its titles, what changed."""

    device_dn: str
    titles: list[str]  # in the order of the configured AEs
    adopted: bool
    changed: list[str] = field(default_factory=list)  # DNs added, modified or removed
    keys: dict[str, str] = field(default_factory=dict)  # AE key -> title
    released: list[str] = field(default_factory=list)  # titles given back
    title_changes: list[tuple[str, str]] = field(default_factory=list)  # administrator's


@dataclass
class Known:
    """What the device's state says it holds (directory.json)."""
    titles: list[str] = field(default_factory=list)  # reserved by this device
    keys: dict[str, str] = field(default_factory=dict)  # AE key -> title


# -- reading -------------------------------------------------------------------------------

def _devices(base: str, *equals: tuple[str, str]) -> Operation:
    return (yield Search(plan.devices_dn(base), ONE, "dicomDevice", tuple(equals)))


def claimed(entry: dict) -> bool:
    return bool(plan.markers_in(many(entry, "dicomSoftwareVersion")))


def find_device(base: str, device: Device, device_id: str | None
                ) -> Generator[Op, Any, tuple[dict | None, bool]]:
    """(the entry this device may use, whether it is its own already); Conflict when its
    identity is not clear. In order:
    - the entry carrying this device's marker: its own, even renamed (H.1.6);
    - the entry of its name, unless another device's marker is on it (a conflict);
    - an administrator's pre-configuration matched by serial number together with
      manufacturer and model, exactly one that no device has claimed (two: conflict);
    - none: the device registers an entry of its own."""
    if device_id is not None:
        mine = yield from _devices(base, ("dicomSoftwareVersion", plan.marker(device_id)))
        if len(mine) > 1:
            raise Conflict(f"{len(mine)} device entries carry this device's marker: "
                           + ", ".join(e["dn"] for e in mine))
        if mine:
            return mine[0], True
    by_name = yield from _devices(base, ("dicomDeviceName", device.name))
    if by_name:
        entry = by_name[0]
        if device_id is not None and claimed(entry):
            raise Conflict(f"device {device.name} in the directory belongs to another "
                           "device (it carries another agent's identity marker); if it is "
                           "this unit's own entry from before its state was lost (a package "
                           "purge, a new disk), an administrator deletes it, or run "
                           "`dicom-agent directory unregister` before purging")
        return entry, False
    if device.serial_number and device.manufacturer and device.model_name:
        found = yield from _devices(base, ("dicomDeviceSerialNumber", device.serial_number),
                                    ("dicomManufacturer", device.manufacturer),
                                    ("dicomManufacturerModelName", device.model_name))
        unclaimed = [e for e in found if device_id is None or not claimed(e)]
        if len(unclaimed) > 1:
            raise Conflict(f"{len(unclaimed)} unclaimed devices match serial number "
                           f"{device.serial_number!r}, manufacturer and model: "
                           + ", ".join(one(e, "dicomDeviceName", required=False) or
                                       e["dn"] for e in unclaimed))
        if unclaimed:
            return unclaimed[0], False
    return None, False


def registered_titles(base: str, limit: int) -> Operation:
    """Every title reserved; an odd registry entry still counts as taken (its raw text)."""
    titles = set()
    for e in (yield Search(plan.registry_dn(base), ONE, "dicomUniqueAETitle", (),
                           ("dicomAETitle",), paged=True))[:limit]:
        try:
            titles.add(title_of(e))
        except OddEntry as exc:
            log.warning("registry: %s", exc)
            titles.add(str(first(e, "dicomAETitle")))
    return titles


def title_owner(base: str, title: str) -> Generator[Op, Any, str | None]:
    """The device whose Network AE has this title, if any."""
    found = yield Search(plan.devices_dn(base), SUB, "dicomNetworkAE",
                         (("dicomAETitle", title),), ("dicomAETitle",))
    return plan.rdn_value(plan.split_rdn(found[0]["dn"])[1]) if found else None


# -- writing, with the intent record --------------------------------------------------------

class _Writer:
    """Adds recorded before they are made (Persist), so that a kill at any point is
    rolled back by `recover`; `rollback` undoes this attempt's adds in reverse."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.adding: str | None = None  # an add whose answer never came (connection lost)

    def add(self, entry: plan.Entry, ok: tuple[int, ...] = (0,)) -> Operation:
        yield Persist({"added": list(self.added), "adding": entry.dn})
        self.adding = entry.dn
        code = yield Add(entry)
        self.adding = None
        code = _checked(code, f"add {entry.dn}", ok)
        if code == 0:
            self.added.append(entry.dn)
        return code

    def done(self) -> Operation:
        yield Persist(None)

    def rollback(self) -> Operation:
        left = list(self.added)
        for dn in reversed(self.added):
            try:
                code = yield Delete(dn)
            except DirectoryError as exc:
                log.warning("rollback: cannot delete %s: %s", dn, exc)
                break
            if code in (0, NO_SUCH_OBJECT):
                left.remove(dn)
            else:
                log.warning("rollback: cannot delete %s: result %s", dn, code)
        # What could not be undone (or may have been done) stays recorded for the next
        # start.
        yield Persist({"added": left, "adding": self.adding}
                      if left or self.adding else None)


def _registry_title(dn: str) -> str | None:
    """The title of a Unique AE Titles Registry entry's DN; None for any other DN."""
    parent = plan.split_rdn(dn)[1]
    if plan.split_rdn(parent)[0].strip().lower() != plan.REGISTRY.lower():
        return None
    return plan.rdn_value(dn)


def recover(intent: dict) -> Generator[Op, Any, tuple[list[str], str | None]]:
    """After a kill (the intent record survived): undo its adds, newest first, and
    return (the DNs undone, the title whose reservation was in flight). An entry of the
    device's own subtree that was in flight is undone too (its parent was ours); a
    title in flight may have been reserved by this device or refused to it, and nothing
    in the registry says which: it is returned, for the next registration to reuse only
    if no device has an AE with it (as after a reboot)."""
    added = [dn for dn in intent.get("added", []) if isinstance(dn, str)]
    adding = intent.get("adding")
    in_flight = None
    if isinstance(adding, str):
        in_flight = _registry_title(adding)
        if in_flight is None:
            added.append(adding)
        else:
            log.warning("the reservation of %s was in flight when the agent stopped", adding)
    writer = _Writer()
    writer.added = list(added)
    yield from writer.rollback()  # what it could not undo stays recorded for the next try
    return added, in_flight


# -- registering ---------------------------------------------------------------------------

def register(base: str, device: Device, hostnames: dict[str, str], known: Known,
             attempts: int, device_id: str | None, registry_limit: int = 1_000_000
             ) -> Generator[Op, Any, Registration]:
    """Register a new device, or bring its existing entry (its own, or an administrator's
    pre-configuration it adopts) to the configuration."""
    existing, mine = yield from find_device(base, device, device_id)
    if device_id is not None:
        device = plan.with_marker(device, device_id)
    if existing is None:
        return (yield from _create(base, device, hostnames, known, attempts, registry_limit))
    return (yield from update(base, existing, mine, device, hostnames, known, attempts,
                              registry_limit))


def _create(base: str, device: Device, hostnames: dict[str, str], known: Known,
            attempts: int, registry_limit: int) -> Operation:
    writer = _Writer()
    try:
        titles = []
        for ae in device.aes:
            titles.append((yield from _reserve(base, ae, known, attempts, writer, titles,
                                               registry_limit)))
        for entry in plan.device_entries(base, device, titles, hostnames):
            yield from writer.add(entry)
    except DirectoryError:
        yield from writer.rollback()
        raise
    yield from writer.done()
    return Registration(plan.device_dn(base, device.name), titles, adopted=False,
                        changed=list(writer.added),
                        keys={ae.identity: t for ae, t in zip(device.aes, titles, strict=True)})


def _fits(template: str, title: str, attempts: int) -> bool:
    return any(template.format(n=n) == title for n in range(1, attempts + 1))


def _reserve(base: str, ae: NetworkAE, known: Known, attempts: int, writer: _Writer,
             taken_here: list[str], registry_limit: int) -> Operation:
    """H.1.4.3.5: create the title's dicomUniqueAETitle; 68 means taken (by us, if we
    reserved it before — a reboot — and no device uses it; else by someone else)."""
    if ae.title is not None:
        candidates = [ae.title]
    else:
        before = known.keys.get(ae.identity)
        mine = [t for t in known.titles if _fits(ae.title_template, t, attempts)
                and t not in taken_here and t not in known.keys.values()]
        first_choice = [before] if before and _fits(ae.title_template, before, attempts) \
            else mine[:1]
        registered = yield from registered_titles(base, registry_limit)
        candidates = first_choice + [t for t in plan.candidate_titles(
            ae.title_template, attempts, registered) if t not in taken_here]
    for title in dict.fromkeys(candidates):
        code = yield from writer.add(plan.title_entry(base, title),
                                     ok=(0, ENTRY_ALREADY_EXISTS))
        if code == 0:
            return title
        if title in known.titles and (yield from title_owner(base, title)) is None:
            return title  # ours from before (a reboot): reuse it
        if ae.title is not None:
            owner = yield from title_owner(base, title)
            raise DirectoryError(f'AE title "{title}" is taken'
                                 + (f" by device {owner}" if owner else
                                    " (reserved in the Unique AE Titles Registry)"))
    raise DirectoryError(f'no free AE title from template "{ae.title_template}" in '
                         f"{attempts} attempts")


def _children(subtree: list[dict], parent: str, kind: str) -> list[dict]:
    parent = dn_key(parent)
    return [e for e in subtree
            if kind in classes(e) and dn_key(plan.split_rdn(e["dn"])[1]) == parent]


def _match_aes(device: Device, aes: list[dict], known: Known, attempts: int,
               adopting: bool = False) -> tuple[dict[int, dict], list[tuple[str, str]]]:
    """Configured AE index -> its entry: by the title the state records for its key, then
    by its fixed title, then (a template) by the first entry whose title fits; then an
    administrator's rename: one AE whose recorded title is gone, one entry left over.
    Adopting a pre-configuration, the administrator's titles stand: the AEs still
    unmatched pair one to one, or by the connections they refer to where that is
    unambiguous — never by position."""
    by_title = {}
    for e in aes:
        try:
            by_title[title_of(e)] = e
        except OddEntry as exc:
            log.warning("update: %s: left as it is", exc)
    matched: dict[int, dict] = {}
    used: set[str] = set()

    def take(i: int, title: str | None) -> bool:
        if title is not None and title in by_title and title not in used:
            matched[i] = by_title[title]
            used.add(title)
            return True
        return False

    for i, ae in enumerate(device.aes):
        take(i, known.keys.get(ae.identity))
    for i, ae in enumerate(device.aes):
        if i not in matched and ae.title is not None:
            take(i, ae.title)
    for i, ae in enumerate(device.aes):
        if i not in matched and ae.title_template is not None:
            for title in sorted(by_title, key=lambda t: t):
                if _fits(ae.title_template, title, attempts) and take(i, title):
                    break
    renamed = []
    lost = [i for i, ae in enumerate(device.aes)
            if i not in matched and known.keys.get(ae.identity)]
    spare = [t for t in by_title if t not in used and t not in known.titles]
    if len(lost) == 1 and len(spare) == 1:
        i = lost[0]
        renamed.append((known.keys[device.aes[i].identity], spare[0]))
        take(i, spare[0])
    if adopting:
        left = [i for i in range(len(device.aes)) if i not in matched]
        spare = [t for t in by_title if t not in used]
        if len(left) == 1 and len(spare) == 1:
            take(left[0], spare[0])
        else:
            def refs(title: str) -> frozenset[str]:
                return frozenset(plan.rdn_value(r).lower() for r in many(
                    by_title[title], "dicomNetworkConnectionReference"))
            for i in left:
                want = frozenset(c.lower() for c in device.aes[i].connections)
                fits = [t for t in spare if t not in used and refs(t) == want]
                if len(fits) == 1 and sum(frozenset(c.lower() for c in device.aes[j]
                                                    .connections) == want for j in left) == 1:
                    take(i, fits[0])
    return matched, renamed


def update(base: str, existing: dict, mine: bool, device: Device, hostnames: dict[str, str],
           known: Known, attempts: int, registry_limit: int = 1_000_000) -> Operation:
    """Bring an existing device entry to the configuration by the smallest change:
    device-side attributes of the device, its connections, AEs and transfer capabilities
    replaced where they differ; connections and AEs added and removed; the marker added
    when adopting. Directory-side attributes and others' attributes are left alone."""
    dn = existing["dn"]
    subtree = yield Search(dn, SUB, "*")
    current = next((e for e in subtree if dn_key(e["dn"]) == dn_key(dn)), existing)
    connections = _children(subtree, dn, "dicomnetworkconnection")
    aes = _children(subtree, dn, "dicomnetworkae")
    matched, renamed = _match_aes(device, aes, known, attempts, adopting=not mine)
    if not mine:
        known = Known()  # an adopted entry: none of its titles were reserved by us
    changed: list[str] = []
    writer = _Writer()
    try:
        # Titles: an entry we match keeps its title; a new AE reserves one.
        titles: list[str] = []
        for i, ae in enumerate(device.aes):
            if i in matched:
                titles.append(title_of(matched[i]))
            else:
                titles.append((yield from _reserve(base, ae, known, attempts, writer,
                                                   titles, registry_limit)))
        # Entries as the configuration would have them, under the entry's actual DN.
        wanted = plan.device_entries(base, device, titles, hostnames, dn=dn)
        by_dn = {dn_key(e.dn): e for e in wanted}
        device_changes = attribute_changes("dicomdevice", current, wanted[0])
        if device_changes:
            code = yield Modify(dn, device_changes)
            _checked(code, f"modify {dn}")
            changed.append(dn)
        # Connections: add the missing, bring the present up to date.
        present = {}
        for c in connections:
            try:
                present[one(c, "cn")] = c
            except OddEntry as exc:
                log.warning("update %s: %s: left as it is", dn, exc)
        for conn in device.connections:
            entry = by_dn[dn_key(plan.connection_dn(dn, conn.name))]
            if conn.name not in present:
                yield from writer.add(entry)
                continue
            changes = attribute_changes("dicomnetworkconnection", present[conn.name], entry)
            if changes:
                _checked((yield Modify(present[conn.name]["dn"], changes)),
                         f"modify {present[conn.name]['dn']}")
                changed.append(present[conn.name]["dn"])
        # AEs: new ones with their transfer capabilities; matched ones brought up to date.
        for i, ae in enumerate(device.aes):
            entry = by_dn[dn_key(plan.ae_dn(dn, titles[i]))]
            tcs = [by_dn[dn_key(plan.tc_dn(entry.dn, tc))]
                   for tc in ae.transfer_capabilities]
            if i not in matched:
                yield from writer.add(entry)
                for tc in tcs:
                    yield from writer.add(tc)
                continue
            have = matched[i]
            changes = attribute_changes("dicomnetworkae", have, entry)
            if changes:
                _checked((yield Modify(have["dn"], changes)), f"modify {have['dn']}")
                changed.append(have["dn"])
            changed += yield from _sync_tcs(subtree, have["dn"], tcs, writer)
        # What the configuration no longer has: AEs this device reserved, then
        # connections no remaining AE refers to.
        released = []
        kept_refs = set()
        for e in aes:
            if any(e is m for m in matched.values()):
                continue
            try:
                title = title_of(e)
            except OddEntry:
                title = None
            if mine and title is not None and title in known.titles:
                for child in sorted(_below(subtree, e["dn"]), key=lambda x: -len(x["dn"])):
                    _checked((yield Delete(child["dn"])), f"delete {child['dn']}",
                             (0, NO_SUCH_OBJECT))
                    changed.append(child["dn"])
                code = yield Delete(plan.title_dn(base, title))
                _checked(code, f"release {title}", (0, NO_SUCH_OBJECT))
                released.append(title)
            else:
                log.info("update %s: AE %s is not in the configuration and was not made "
                         "by this device: left as it is", dn, title)
                kept_refs |= {dn_key(r)
                              for r in many(e, "dicomNetworkConnectionReference")}
        configured = {c.name for c in device.connections}
        for name, c in present.items():
            ref = dn_key(c["dn"])
            if name not in configured and ref not in kept_refs:
                _checked((yield Delete(c["dn"])), f"delete {c['dn']}", (0, NO_SUCH_OBJECT))
                changed.append(c["dn"])
    except DirectoryError:
        yield from writer.rollback()
        raise
    yield from writer.done()
    changed = list(writer.added) + changed
    if renamed:
        log.info("update %s: AE title changed in the directory: %s", dn,
                 ", ".join(f"{old} -> {new}" for old, new in renamed))
    return Registration(dn, titles, adopted=not mine, changed=changed,
                        keys={ae.identity: t for ae, t in zip(device.aes, titles, strict=True)},
                        released=released, title_changes=renamed)


def _below(subtree: list[dict], dn: str) -> list[dict]:
    """The entry `dn` and everything under it."""
    tail = dn_key(dn)
    return [e for e in subtree if dn_key(e["dn"]) == tail
            or dn_key(e["dn"]).endswith(b"," + tail)]


def _sync_tcs(subtree: list[dict], ae_dn: str, wanted: list[plan.Entry], writer: _Writer
              ) -> Operation:
    """An AE's transfer capabilities (device-side, all of them): by cn."""
    have = {}
    for e in _children(subtree, ae_dn, "dicomtransfercapability"):
        try:
            have[one(e, "cn").lower()] = e
        except OddEntry as exc:
            log.warning("update %s: %s: left as it is", ae_dn, exc)
    changed = []
    names = set()
    for entry in wanted:
        name = str(entry.attributes["cn"][0]).lower()
        names.add(name)
        if name not in have:
            yield from writer.add(entry)
            continue
        changes = attribute_changes("dicomtransfercapability", have[name], entry)
        if changes:
            _checked((yield Modify(have[name]["dn"], changes)), f"modify {have[name]['dn']}")
            changed.append(have[name]["dn"])
    for name, e in have.items():
        if name not in names:
            _checked((yield Delete(e["dn"])), f"delete {e['dn']}", (0, NO_SUCH_OBJECT))
            changed.append(e["dn"])
    return changed


# -- decommissioning -----------------------------------------------------------------------

def unregister(base: str, device: Device, device_id: str, keep_titles: bool
               ) -> Generator[Op, Any, tuple[str, list[str], list[str]]]:
    """Take this device out: (its DN, the DNs removed or changed, the titles released).
    Only an entry carrying this device's marker is touched (Conflict otherwise;
    DirectoryError when there is none). With `keep_titles` the entries and titles stay
    and the device is set `dicomInstalled: FALSE` (out of service)."""
    entry, mine = yield from find_device(base, device, device_id)
    if entry is None:
        raise DirectoryError(f"no device {device.name} in the directory")
    if not mine:
        raise Conflict(f"{entry['dn']} is not this device's (it does not carry its "
                       "identity marker): not touched")
    dn = entry["dn"]
    if keep_titles:
        _checked((yield Modify(dn, (("replace", "dicomInstalled", ("FALSE",)),))),
                 f"modify {dn}")
        return dn, [dn], []
    below = yield Search(dn, SUB, "*", (), ("dicomAETitle", "objectClass"))
    titles = [title_of(e) for e in below if "dicomnetworkae" in classes(e)]
    removed = []
    for child in sorted(below, key=lambda e: e["dn"].count(","), reverse=True):
        _checked((yield Delete(child["dn"])), f"delete {child['dn']}", (0, NO_SUCH_OBJECT))
        removed.append(child["dn"])
    for title in titles:  # released: the device owned them
        title_dn = plan.title_dn(base, title)
        _checked((yield Delete(title_dn)), f"delete {title_dn}", (0, NO_SUCH_OBJECT))
        removed.append(title_dn)
    return dn, removed, titles


# -- what the directory says of this device (administrators' edits) ------------------------

def effective(device_dn: str) -> Generator[Op, Any, dict]:
    """The directory-side attributes of the device's own entry, as they are now:
    {"installed", "device": {attribute: [values]}, "aes": {title: {"installed",
    "application_cluster", "preferred_called_ae_title", "preferred_calling_ae_title",
    "description"}}}; dicomInstalled of an AE inherits the device's."""
    dev = yield Search(device_dn, BASE, "dicomDevice")
    if not dev:
        raise DirectoryError(f"{device_dn}: not found")
    installed = boolean_of(dev[0], "dicomInstalled")
    installed = True if installed is None else installed
    side = {a: sorted(many(dev[0], a)) for a in DIRECTORY_SIDE["dicomdevice"]
            if a != "dicomInstalled"}
    aes = {}
    for ae in (yield Search(device_dn, ONE, "dicomNetworkAE")):
        own = boolean_of(ae, "dicomInstalled")
        aes[title_of(ae)] = {
            "installed": installed if own is None else own,
            "application_cluster": sorted(many(ae, "dicomApplicationCluster")),
            "preferred_called_ae_title": sorted(many(ae, "dicomPreferredCalledAETitle")),
            "preferred_calling_ae_title": sorted(many(ae, "dicomPreferredCallingAETitle")),
            "description": one(ae, "dicomDescription", required=False)}
    return {"installed": installed, "device": side, "aes": aes}


# -- AE health written to the directory ([agent] health_updates_directory) -------

def set_ae_installed(ae_dn: str, value: bool | None, only_if: str | None = "ANY"
                     ) -> Generator[Op, Any, tuple[bool, str | None]]:
    """Set (or, None, remove) an AE's dicomInstalled: (whether it was written, the value
    it had, "TRUE"/"FALSE"/None). With `only_if` (a value or None for absent) nothing is
    written unless the entry still holds that value: the agent restores only what it
    wrote itself, never over an administrator's later edit."""
    found = yield Search(ae_dn, BASE, "dicomNetworkAE", (), ("dicomInstalled",))
    if not found:
        raise DirectoryError(f"{ae_dn}: not found")
    current = one(found[0], "dicomInstalled", required=False)
    current = current.upper() if current else None
    if only_if != "ANY" and current != only_if:
        return False, current
    if value is None:
        if current is None:
            return False, current
        change = ("delete", "dicomInstalled", ())
    else:
        if current == plan.boolean(value):
            return False, current
        change = ("replace", "dicomInstalled", (plan.boolean(value),))
    _checked((yield Modify(ae_dn, (change,))), f"modify {ae_dn}")
    return True, current


# -- uniqueness across replicas ----------------------------------------------------
#
# Concurrent adds of one registry DN on two providers merge under replication, so the
# registry cannot say who reserved a title first. The AE entries can: each carries the
# entryCSN of its creation. Of two devices holding one title, the one whose AE entry is
# older keeps it (then the lower device name); the other gives it up.

def ae_entries(base: str, titles: list[str]) -> Generator[Op, Any, list[dict]]:
    """Every AE entry with one of `titles`, with its entryCSN: {"title", "dn", "device",
    "csn"}."""
    out = []
    for title in titles:
        for e in (yield Search(plan.devices_dn(base), SUB, "dicomNetworkAE",
                               (("dicomAETitle", title),), ("dicomAETitle", "entryCSN"))):
            out.append({"title": title, "dn": e["dn"],
                        "device": plan.split_rdn(e["dn"])[1],
                        "csn": str(first(e, "entryCSN") or "")})
    return out


def keeps(mine: dict, rival: dict) -> bool:
    """Whether our AE entry keeps the title against `rival`'s: the earlier entryCSN
    (its creation), then the lower device name."""
    if mine["csn"] and rival["csn"] and mine["csn"] != rival["csn"]:
        return mine["csn"] < rival["csn"]
    return plan.rdn_value(mine["device"]).lower() <= plan.rdn_value(rival["device"]).lower()


def give_up(ae_dn: str) -> Operation:
    """Remove our AE entry for a title another device keeps (its transfer capabilities
    first); the registry entry is the other device's now and stays."""
    below = yield Search(ae_dn, SUB, "*", (), ("objectClass",))
    for e in sorted(below, key=lambda x: -len(x["dn"])):
        _checked((yield Delete(e["dn"])), f"delete {e['dn']}", (0, NO_SUCH_OBJECT))
