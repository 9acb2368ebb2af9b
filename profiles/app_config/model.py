"""The Application Configuration data model of PS3.15 H.1.1, as the device describes itself.

Device (Table H.1-2) has Network Connections (H.1-6) and Network AEs (H.1-4); each AE has
Transfer Capabilities (H.1-7). These are frozen values built from the configuration
(agent/config.py); the LDAP plan (H.1.4.3) turns them into entries. The value checks
below are PS3.5's rules for the value representations the schema stores, each returning
a reason in the words `check-config` prints, or None when the value is fine.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

AE_TITLE_MAX = 16  # PS3.5 Table 6.2-1, VR AE
UID_MAX = 64  # PS3.5 9.1
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True, slots=True)
class TransferCapability:
    """Table H.1-7: one SOP class in one role with the transfer syntaxes it may use."""

    sop_class: str
    role: str  # "SCU" or "SCP"
    transfer_syntaxes: tuple[str, ...]
    name: str | None = None  # cn, the RDN when present


@dataclass(frozen=True, slots=True)
class NetworkConnection:
    """Table H.1-6: one TCP port on one network interface (no port: initiate only)."""

    name: str  # cn
    hostname: str | None = None  # None: the DHCP/DDNS name qualified with the domain
    port: int | None = None
    tls_cipher_suites: tuple[str, ...] = ()
    installed: bool | None = None  # None: inherited from the device


@dataclass(frozen=True, slots=True)
class NetworkAE:
    """Table H.1-4. Exactly one of `title` (fixed) and `title_template` (H.1.4.3.5) is set."""

    title: str | None
    title_template: str | None
    association_acceptor: bool
    association_initiator: bool
    connections: tuple[str, ...]  # names of NetworkConnection objects of the same device
    transfer_capabilities: tuple[TransferCapability, ...]
    description: str | None = None
    vendor_data: tuple[bytes, ...] = ()
    application_cluster: tuple[str, ...] = ()
    preferred_called_ae_title: tuple[str, ...] = ()
    preferred_calling_ae_title: tuple[str, ...] = ()
    supported_character_set: tuple[str, ...] = ()
    installed: bool | None = None  # None: inherited from the device
    key: str | None = None  # stable identity across updates; None: the title or template
    health_check: bool = False  # C-ECHO it before advertising, and every health_interval

    @property
    def identity(self) -> str:
        """What matches this AE to its entry across updates (`[device.ae] key`)."""
        return self.key or self.title or self.title_template or ""


@dataclass(frozen=True, slots=True)
class Device:
    """Table H.1-2 with its child objects (Table H.1-3)."""

    name: str
    connections: tuple[NetworkConnection, ...]
    aes: tuple[NetworkAE, ...]
    description: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    software_versions: tuple[str, ...] = ()
    station_name: str | None = None
    serial_number: str | None = None
    primary_device_type: tuple[str, ...] = ()
    institution_name: tuple[str, ...] = ()
    institution_address: tuple[str, ...] = ()
    institution_department_name: tuple[str, ...] = ()
    issuer_of_patient_id: str | None = None
    related_device_reference: tuple[str, ...] = ()
    authorized_node_certificate_reference: tuple[str, ...] = ()
    this_node_certificate_reference: tuple[str, ...] = ()
    vendor_data: tuple[bytes, ...] = ()
    installed: bool = True

    def connection(self, name: str) -> NetworkConnection:
        return next(c for c in self.connections if c.name == name)


def ae_title_problem(title: str) -> str | None:
    """PS3.5 AE: 1-16 characters of the default repertoire, no backslash or control
    characters, not only spaces. Leading and trailing spaces are not significant, so the
    caller strips them before storing the title."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in title):
        return "must not contain control characters"
    if "\\" in title:
        return "must not contain a backslash (PS3.5 forbids it in an AE title)"
    if any(ord(c) > 0x7E for c in title):
        return f"must use the DICOM default character repertoire (ASCII), got {_q(title)}"
    stripped = title.strip(" ")
    if not stripped:
        return "must not be empty or only spaces"
    if len(stripped) > AE_TITLE_MAX:
        return f"at most {AE_TITLE_MAX} characters, got {len(stripped)}"
    return None


def title_template_problem(template: str, attempts: int) -> str | None:
    """A Python format string whose only field is {n} (n = 1, 2, ... up to `attempts`);
    every title it can give must be a valid AE title."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"not a valid format string: {exc}"
    if "n" not in fields:
        return "must contain the field {n} (n counts from 1)"
    if other := sorted({f for f in fields if f != "n"}):
        return f"only the field {{n}} may be used, got {{{other[0]}}}"
    for n in (1, attempts):
        try:
            title = template.format(n=n)
        except (ValueError, IndexError, KeyError) as exc:
            return f"cannot be formatted with n={n}: {exc}"
        if reason := ae_title_problem(title):
            return f"gives {_q(title)} for n={n}: {reason}"
    return None


def uid_problem(uid: str) -> str | None:
    """PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 characters."""
    if len(uid) > UID_MAX:
        return f"at most {UID_MAX} characters, got {len(uid)}"
    if not _UID.fullmatch(uid):
        return f"not a valid UID (digits and dots, no leading zero in a component), got {_q(uid)}"
    return None


def _q(value: str) -> str:
    """A value quoted the way error messages show it: "like this"."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
