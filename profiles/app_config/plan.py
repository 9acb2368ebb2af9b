"""The LDAP entries of PS3.15 H.1 for this device, as pure data (no connection here).

DNs are built from escaped RDN values (RFC 4514) and filters from escaped assertion
values (RFC 4515) — AE titles may hold `,` `+` `*` `(` `)` `=` `#` `;` — by the rules of
ldap3's escape_rdn and escape_filter_chars, without importing ldap3 (a device with no
directory never loads it). The driver (directory.py) performs what this module plans;
`to_ldif` writes the same entries as RFC 2849 LDIF for an administrator (the "-Manual"
patterns of Table H.1-15, and `dicom-agent ldif`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from profiles.app_config.model import Device, NetworkAE, NetworkConnection, TransferCapability

DEVICES = "cn=Devices"
REGISTRY = "cn=Unique AE Titles Registry"


@dataclass(frozen=True)
class Entry:
    """One LDAP entry: its DN and attributes."""

    dn: str
    attributes: dict[str, list[str | bytes]] = field(default_factory=dict)


def escape_rdn(value: str) -> str:
    """An attribute value for a DN (RFC 4514 2.4): a backslash before each of
    `\\ , + " < > ; =` and NUL, before a leading `#` or space, and before a trailing space.
    ldap3's escape_rdn, which wrote the DNs of earlier versions, to the character (a test
    holds the two equal)."""
    for char in '\\,+"<>;=\x00':
        value = value.replace(char, "\\" + char)
    if value[:1] in ("#", " "):
        value = "\\" + value
    if value[-1:] == " ":
        value = value[:-1] + "\\ "
    return value


_HEX = set("0123456789abcdefABCDEF")
_ESCAPABLE = set(' "#+,;<=>\\\x00')  # after a backslash: itself (RFC 4514 2.4)
_UNESCAPED = set('"#+,;<=>\x00')  # never bare in a value: ldap3 refuses these too


def dn_problem(dn: str) -> str | None:
    """Why `dn` is not a distinguished name (RFC 4514 3) a directory can be given, or
    None: RDNs of `type=value` joined by `,` (`+` inside one), each type a name (a letter,
    then letters, digits, hyphens), each value non-empty with `"#+,;<=>`, NUL and a
    leading or trailing space escaped by a backslash, which is followed by one of those,
    itself or two hex digits. ldap3's parse_dn is the oracle (the directory code hands
    these DNs to it): what this accepts, ldap3 accepts — a little stricter where ldap3
    bends (hex-string values, numeric OIDs, which ldap3 refuses anyway, and a value
    holding a separator without `=`, which it glues to the one before). Pure: a
    configuration with DNs is checked without importing ldap3."""
    if not dn:
        return "empty"
    avas, current, i = [], [], 0
    while i < len(dn):
        char = dn[i]
        if char == "\\":
            if i + 1 >= len(dn):
                return "a backslash at the end"
            nxt = dn[i + 1]
            if nxt in _HEX and i + 2 < len(dn) and dn[i + 2] in _HEX:
                current.append(dn[i:i + 3])
                i += 3
                continue
            if nxt not in _ESCAPABLE:
                return f"{nxt!r} may not follow a backslash"
            current.append(dn[i:i + 2])
            i += 2
            continue
        if char in ",+":
            avas.append(current)
            current = []
        else:
            current.append(char)
        i += 1
    avas.append(current)
    for ava in avas:
        if "=" not in ava:
            return f"{''.join(ava)!r} is not type=value"
        at = ava.index("=")
        kind, value = "".join(ava[:at]), ava[at + 1:]
        if not (kind[:1].isascii() and kind[:1].isalpha()) or not all(
                c.isascii() and (c.isalnum() or c == "-") for c in kind):
            return f"attribute type {kind!r} is not a name"
        if not value:
            return f"{kind}= has no value"
        if value[0] == " " or value[-1] == " ":
            return f"{kind}=: a leading or trailing space must be escaped"
        bare = next((c for c in value if len(c) == 1 and c in _UNESCAPED), None)
        if bare is not None:
            return f"{kind}=: {bare!r} must be escaped"
    return None


def escape_filter_value(value: str) -> str:
    """An assertion value for a filter (RFC 4515 3): `\\ * ( )` and NUL as `\\XX`
    (ldap3's escape_filter_chars for text, to the character)."""
    return (value.replace("\\", "\\5c").replace("*", "\\2a").replace("(", "\\28")
            .replace(")", "\\29").replace("\x00", "\\00"))


def devices_dn(base: str) -> str:
    return f"{DEVICES},{base}"


def registry_dn(base: str) -> str:
    return f"{REGISTRY},{base}"


def device_dn(base: str, name: str) -> str:
    return f"dicomDeviceName={escape_rdn(name)},{devices_dn(base)}"


def title_dn(base: str, title: str) -> str:
    return f"dicomAETitle={escape_rdn(title)},{registry_dn(base)}"


def connection_dn(device: str, name: str) -> str:
    return f"cn={escape_rdn(name)},{device}"


def ae_dn(device: str, title: str) -> str:
    return f"dicomAETitle={escape_rdn(title)},{device}"


def split_rdn(dn: str) -> tuple[str, str]:
    """(first RDN, parent DN), splitting at the first unescaped comma (RFC 4514 2.4).
    ldap3's parse_dn refuses a '#' inside a value, which RFC 4514 allows."""
    i = 0
    while i < len(dn):
        if dn[i] == "\\":
            i += 2
            continue
        if dn[i] == ",":
            return dn[:i], dn[i + 1:]
        i += 1
    return dn, ""


def rdn_value(dn: str) -> str:
    """The unescaped value of a DN's first RDN (single-valued RDNs, as ours are)."""
    value = split_rdn(dn)[0].partition("=")[2]
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            pair = value[i + 1: i + 3]
            if len(pair) == 2 and all(h in "0123456789abcdefABCDEF" for h in pair):
                out.append(chr(int(pair, 16)))
                i += 3
                continue
            out.append(value[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tc_name(tc: TransferCapability) -> str:
    """The cn of a transfer capability: its configured name, else role and SOP class."""
    return tc.name or f"{tc.role} {tc.sop_class}"


# -- the device's identity in the directory ------------------------------------
#
# A device owns the entry it created or adopted, and knows it: a random 128-bit id, kept
# in `<state_dir>/device-id`, is stored in the entry as one value of dicomSoftwareVersion,
# "dicom-agent-id <32 hex digits>". Why that attribute: it is the one dicomDevice attribute
# of H.1.3 that is multi-valued, device-side (administrators do not edit software
# versions), and searchable by equality (caseIgnoreMatch) on every server that loads the
# schema; the agent is software on the device, so the value is true as well. Another
# device cannot produce the value by accident; a renamed entry is still found by it.
MARKER_PREFIX = "dicom-agent-id "


def marker(device_id: str) -> str:
    return MARKER_PREFIX + device_id


def with_marker(device: Device, device_id: str) -> Device:
    """The device as registered: its software versions plus its identity marker."""
    mark = marker(device_id)
    if mark in device.software_versions:
        return device
    return replace(device, software_versions=(*device.software_versions, mark))


def markers_in(values: list[str]) -> list[str]:
    """The identity markers among an entry's dicomSoftwareVersion values (any device's)."""
    return [v for v in values if v.lower().startswith(MARKER_PREFIX)]


def eq(attribute: str, value: str) -> str:
    return f"({attribute}={escape_filter_value(value)})"


def boolean(value: bool) -> str:
    return "TRUE" if value else "FALSE"


def candidate_titles(template: str, attempts: int, taken: set[str]) -> Iterator[str]:
    """H.1.4.3.5: tentative titles from the template, skipping those known to be taken."""
    for n in range(1, attempts + 1):
        title = template.format(n=n)
        if title not in taken:
            yield title


def connection_hostname(conn: NetworkConnection, fqdn: str | None, domain: str | None,
                        address: str | None) -> str | None:
    """H.1.1.3: qualified enough to be unambiguous — the configured name, else the
    DHCP/DDNS name (a bare label gets the domain), else the address."""
    if conn.hostname:
        return conn.hostname
    if fqdn:
        return fqdn if "." in fqdn or not domain else f"{fqdn}.{domain}"
    return address


def _put(attrs: dict, name: str, value: object) -> None:
    if value is None or value == () or value == []:
        return
    if isinstance(value, bool):
        attrs[name] = [boolean(value)]
    elif isinstance(value, list | tuple):
        attrs[name] = list(value)
    else:
        attrs[name] = [str(value)]


def device_entry(base: str, device: Device, dn: str | None = None) -> Entry:
    a: dict[str, list] = {"objectClass": ["dicomDevice"]}
    _put(a, "dicomDeviceName", device.name)
    _put(a, "dicomInstalled", device.installed)
    for attribute, value in (
            ("dicomDescription", device.description),
            ("dicomManufacturer", device.manufacturer),
            ("dicomManufacturerModelName", device.model_name),
            ("dicomSoftwareVersion", device.software_versions),
            ("dicomStationName", device.station_name),
            ("dicomDeviceSerialNumber", device.serial_number),
            ("dicomPrimaryDeviceType", device.primary_device_type),
            ("dicomInstitutionName", device.institution_name),
            ("dicomInstitutionAddress", device.institution_address),
            ("dicomInstitutionDepartmentName", device.institution_department_name),
            ("dicomIssuerOfPatientID", device.issuer_of_patient_id),
            ("dicomRelatedDeviceReference", device.related_device_reference),
            ("dicomAuthorizedNodeCertificateReference",
             device.authorized_node_certificate_reference),
            ("dicomThisNodeCertificateReference", device.this_node_certificate_reference),
            ("dicomVendorData", device.vendor_data)):
        _put(a, attribute, value)
    return Entry(dn or device_dn(base, device.name), a)


def connection_entry(device: str, conn: NetworkConnection, hostname: str) -> Entry:
    a: dict[str, list] = {"objectClass": ["dicomNetworkConnection"]}
    _put(a, "cn", conn.name)
    _put(a, "dicomHostname", hostname)
    _put(a, "dicomPort", conn.port)
    _put(a, "dicomTLSCipherSuite", conn.tls_cipher_suites)
    _put(a, "dicomInstalled", conn.installed)
    return Entry(connection_dn(device, conn.name), a)


def ae_entry(device: str, ae: NetworkAE, title: str) -> Entry:
    a: dict[str, list] = {"objectClass": ["dicomNetworkAE"]}
    _put(a, "dicomAETitle", title)
    _put(a, "dicomNetworkConnectionReference",
         [connection_dn(device, name) for name in ae.connections])
    _put(a, "dicomAssociationInitiator", ae.association_initiator)
    _put(a, "dicomAssociationAcceptor", ae.association_acceptor)
    for attribute, value in (("dicomDescription", ae.description),
                             ("dicomVendorData", ae.vendor_data),
                             ("dicomApplicationCluster", ae.application_cluster),
                             ("dicomPreferredCalledAETitle", ae.preferred_called_ae_title),
                             ("dicomPreferredCallingAETitle", ae.preferred_calling_ae_title),
                             ("dicomSupportedCharacterSet", ae.supported_character_set),
                             ("dicomInstalled", ae.installed)):
        _put(a, attribute, value)
    return Entry(ae_dn(device, title), a)


def tc_entry(ae: str, tc: TransferCapability) -> Entry:
    a: dict[str, list] = {"objectClass": ["dicomTransferCapability"]}
    _put(a, "cn", tc_name(tc))
    _put(a, "dicomSOPClass", tc.sop_class)
    _put(a, "dicomTransferRole", tc.role)
    _put(a, "dicomTransferSyntax", tc.transfer_syntaxes)
    return Entry(tc_dn(ae, tc), a)


def tc_dn(ae: str, tc: TransferCapability) -> str:
    return f"cn={escape_rdn(tc_name(tc))},{ae}"


def title_entry(base: str, title: str) -> Entry:
    return Entry(title_dn(base, title), {"objectClass": ["dicomUniqueAETitle"],
                                         "dicomAETitle": [title]})


def device_entries(base: str, device: Device, titles: list[str],
                   hostnames: dict[str, str], dn: str | None = None) -> list[Entry]:
    """The device, its connections, its AEs (titles[i] for device.aes[i]) and their
    transfer capabilities, parents before children; under `dn` when the device's entry
    has another (an administrator renamed it)."""
    dev = device_entry(base, device, dn)
    entries = [dev]
    entries += [connection_entry(dev.dn, c, hostnames[c.name]) for c in device.connections]
    for ae, title in zip(device.aes, titles, strict=True):
        entry = ae_entry(dev.dn, ae, title)
        entries.append(entry)
        entries += [tc_entry(entry.dn, tc) for tc in ae.transfer_capabilities]
    return entries


def registration_ldif(device: Device, attempts: int, base: str, hostnames: dict[str, str],
                      owned: list[str], chosen: list[str] | None = None,
                      taken: set[str] | None = None) -> str:
    """Title reservations and device entries, as an administrator would load them (the
    "-Manual" patterns of Table H.1-15, `dicom-agent ldif`). A templated AE gets the title
    this device already owns, else the next of `chosen` (the operator's --title), else a
    title it reserves nothing for: the template's first not in `taken` (the registry as
    read when the LDIF was written; None: not read) — and the comment says so, listing the
    free ones, for the administrator to pick."""
    titles, entries, notes = [], [], []
    chosen = list(chosen or [])
    for i, ae in enumerate(device.aes):
        if ae.title is not None:
            title = ae.title
        else:
            mine = [t for t in owned if any(ae.title_template.format(n=n) == t
                                            for n in range(1, attempts + 1))]
            if i < len(mine):
                title = mine[i]
            elif chosen:
                title = chosen.pop(0)
            else:
                free = [t for t in candidate_titles(ae.title_template, attempts, taken or set())]
                title = free[0] if free else ae.title_template.format(n=1)
                notes.append(
                    f"AE {i + 1} (template {ae.title_template!r}): {title} is only a "
                    "suggestion; nothing is reserved. "
                    + (f"Free in the registry when this was written: {', '.join(free[:5])}."
                       if taken is not None else "The registry could not be read.")
                    + " Pick one (dicom-agent ldif --title) before loading.")
        titles.append(title)
        entries.append(title_entry(base, title))
    entries += device_entries(base, device, titles, hostnames)
    return to_ldif(entries, comment="\n".join([
        f"PS3.15 H.1 registration of device {device.name}, written by dicom-agent.",
        "Load with: ldapadd -x -D <an account that may write the DICOM subtree> -W -f FILE",
        *notes]))


# -- RFC 2849 --------------------------------------------------------------------------

def _safe(value: str) -> bool:
    """SAFE-STRING: no NUL, CR, LF, non-ASCII; not starting with space, ':' or '<';
    and (RFC 2849 note 8) not ending with a space."""
    if not value:
        return True
    if value[0] in " :<" or value.endswith(" "):
        return False
    return all(0 < ord(c) < 128 and c not in "\r\n" for c in value)


def _line(name: str, value: str | bytes) -> str:
    if isinstance(value, bytes):
        text = f"{name}:: {base64.b64encode(value).decode()}"
    elif _safe(value):
        text = f"{name}: {value}"
    else:
        text = f"{name}:: {base64.b64encode(value.encode()).decode()}"
    # Fold at 76 columns; a continuation line starts with one space.
    parts = [text[:76]] + [" " + text[i:i + 75] for i in range(76, len(text), 75)]
    return "\n".join(parts)


def to_ldif(entries: list[Entry], comment: str | None = None) -> str:
    out = ["version: 1"]
    if comment:
        out = [f"# {line}" for line in comment.splitlines()] + out
    for entry in entries:
        out.append("")
        out.append(_line("dn", entry.dn))
        for name, values in entry.attributes.items():
            out.extend(_line(name, v) for v in values)
    return "\n".join(out) + "\n"
