"""The device's configuration: TOML in, frozen dataclasses out, every mistake named.

`load_config(path)` returns a `Config` or raises `ConfigError` carrying every problem
found, each as (key path, reason) — `device.ae[0].title: at most 16 characters, got 21`.
Unknown keys are errors: a misspelt key must not be silently ignored. The keys and their
defaults are those of docs/dicom-agent.toml.5.rst.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from profiles.app_config.model import (
    Device,
    NetworkAE,
    NetworkConnection,
    TransferCapability,
    ae_title_problem,
    title_template_problem,
    uid_problem,
)
from profiles.app_config.plan import dn_problem as plan_dn_problem
from profiles.errors import ConfigError

TIME_MODES = ("observe", "sntp", "chrony")
SECURITY_PATTERNS = ("anonymous", "basic", "tls")
ROLES = ("SCU", "SCP")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """`[agent]`: where state, runtime files, hooks and the status socket live."""

    state_dir: Path = Path("/var/lib/dicom-agent")
    runtime_dir: Path = Path("/run/dicom-agent")
    status_socket: Path = Path("/run/dicom-agent/status.sock")
    status_group: str | None = None
    hooks_dir: Path = Path("/etc/dicom-agent/hooks.d")
    hook_timeout: float = 10.0
    health_interval: float = 60.0  # s between AE health checks ([device.ae] health_check)
    health_calling_aet: str = "DICOM_AGENT"
    health_updates_directory: bool = False  # a down AE written dicomInstalled FALSE


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """`[network]`: the interface and how the lease is sought (Annex F)."""

    interface: str
    hostname: str | None = None
    client_id: bytes | None = None
    auto_ip: bool = False
    initial_delay: tuple[float, float] = (0.0, 2.0)
    arp_probe: bool = True
    discover_timeout: float = 5.0
    server_allowlist: tuple[str, ...] = ()
    offer_window: float = 0.0
    release_on_stop: bool = False
    resolver: str = "auto"  # auto | file | none (profiles.network_address.resolvconf_io)
    route_metric: int = 1024  # the lease's routes, beside the device's own (interface_io)


def dhcp_client_settings(network: NetworkSettings, mac: bytes, client_id: bytes,
                         configured_offset: int | None = None):
    """The DHCP core's settings from `[network]` (one place for the daemon and `dhcp`)."""
    import time

    from profiles.network_address.dhcp_client import ClientSettings

    return ClientSettings(mac=mac, client_id=client_id, hostname=network.hostname,
                          initial_delay=network.initial_delay, arp_probe=network.arp_probe,
                          server_allowlist=network.server_allowlist,
                          offer_window=network.offer_window,
                          configured_offset=configured_offset, auto_ip=network.auto_ip,
                          discover_timeout=network.discover_timeout, wall_clock=time.time)


@dataclass(frozen=True, slots=True)
class TimeSettings:
    """`[time]`: the mode, manual servers and the preset UTC offset (Annex G)."""

    mode: str = "sntp"
    servers: tuple[str, ...] = ()
    utc_offset: int = 0
    broadcast_discovery: bool = False
    broadcast_window: float = 5.0
    step_threshold_ms: float = 128.0
    step_updates: int = 3  # clock updates after start that may step (chrony's makestep)
    step_limit_s: float = 1000.0  # a larger correction after sync needs 3 agreeing servers
    chrony_sourcedir: Path = Path("/run/chrony-dhcp")
    chronyc_socket: Path = Path("/run/chrony/chronyd.sock")
    nts: bool = False  # G.1.3 secure time through chronyd (NTS, RFC 8915)
    nts_ca_file: Path | None = None  # the CA the NTS servers' certificates chain to
    nts_fallback: bool = False  # NTS servers that fail the check used without NTS
    set_timezone: bool | None = None  # G.1.1.4 applied; None: the mode decides

    @property
    def applies_timezone(self) -> bool:
        """Whether the lease's zone becomes the device's local time: as configured, else
        in the modes that set the clock (sntp, chrony), not in observe."""
        return self.mode != "observe" if self.set_timezone is None else self.set_timezone


@dataclass(frozen=True, slots=True)
class DnssdSettings:
    """Unicast DNS-SD in the site DNS (H.2 over RFC 6763 unicast, RFC 2136 updates)."""
    unicast: bool = False
    unicast_zone: str | None = None  # None: the lease's domain
    tsig_key_file: Path | None = None  # BIND's `key "name" { algorithm ...; secret ...; };`


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    """`[directory]`: where the LDAP directory is and how to bind (H.1)."""

    enabled: bool = True
    domain: str | None = None
    servers: tuple[str, ...] = ()
    security: str = "anonymous"
    bind_dn: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    allow_cleartext_password: bool = False
    title_attempts: int = 100
    refresh_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file, validated."""

    agent: AgentSettings
    network: NetworkSettings
    time: TimeSettings
    directory: DirectorySettings
    device: Device
    source: Path | None = None  # the --config FILE
    dnssd: DnssdSettings = DnssdSettings()
    files: tuple[Path, ...] = ()  # every file read, in order (FILE.d and drop-ins too)
    from_system: bool = False  # read from the system's files (no --config)


# -- value checks: each returns a reason, or None ----------------------------------------

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CIPHER_SUITE = re.compile(r"(TLS|SSL)_[A-Z0-9_]+")
_GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def hostname_problem(name: str) -> str | None:
    """RFC 1123 host name: dot-separated labels of letters, digits and '-', <= 253 chars."""
    if len(name.rstrip(".")) > 253:
        return f"at most 253 characters, got {len(name)}"
    labels = name.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return (f"not a valid host name (RFC 1123: labels of letters, digits and '-'), "
                f"got {_q(name)}")
    return None


def host_or_address_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        return hostname_problem(value)


def ipv4_problem(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"not an IPv4 address, got {_q(value)}"
    return None


def ldap_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        return f"must be an ldap:// or ldaps:// URL with a host, got {_q(url)}"
    try:
        parts.port  # noqa: B018 (raises ValueError when out of range)
    except ValueError:
        return f"bad port in {_q(url)}"
    if parts.path not in ("", "/"):
        return f"must not have a path (the base DN is found, H.1.4.1), got {_q(url)}"
    return None


def dn_problem(dn: str) -> str | None:
    # Checked without ldap3 (its oracle: tests/unit/test_plan.py): importing it is ~0.1 s
    # here and over a second on a slow device, before the first DHCPDISCOVER.
    if not dn.strip():
        return "must not be empty"
    why = plan_dn_problem(dn)
    return None if why is None else f"not a valid DN (RFC 4514: {why}), got {_q(dn)}"


def text_problem(value: str) -> str | None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain control characters"
    return None if value.strip() else "must not be empty"


def ia5_problem(value: str) -> str | None:
    """IA5 String attributes of the schema (PrimaryDeviceType, SupportedCharacterSet)."""
    if reason := text_problem(value):
        return reason
    return None if value.isascii() else f"must be ASCII (IA5 String), got {_q(value)}"


def cipher_suite_problem(value: str) -> str | None:
    if _CIPHER_SUITE.fullmatch(value):
        return None
    return f'must be an RFC 2246 name such as "TLS_RSA_WITH_AES_128_CBC_SHA", got {_q(value)}'


def base64_problem(value: str) -> str | None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"not valid base64, got {_q(value[:40])}"
    return None


def ethernet_interfaces(sysfs: Path = Path("/sys/class/net")) -> list[str]:
    """This machine's Ethernet interfaces: ARPHRD_ETHER, with a device behind it (loopback,
    bridges, bonds, tunnels, veth and other virtual ones aside)."""
    found = []
    try:
        names = sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []
    for name in names:
        try:
            kind = (sysfs / name / "type").read_text().strip()
        except OSError:
            continue
        if kind == "1" and (sysfs / name / "device").exists() \
                and not (sysfs / name / "bridge").exists():
            found.append(name)
    return found


def interface_problem(name: str) -> str | None:
    if not 1 <= len(name) <= 15 or any(c in name for c in "/: \t\n") or name in (".", ".."):
        return f"not a valid interface name, got {_q(name)}"
    return None


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def port_problem(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"must be a TCP port 1-65535, got {value}"


def _in_range(low: int, high: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"must be {low} to {high}, got {value}"
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be {_or(choices)}, got {_q(value)}"
    return check


def _or(choices: tuple[str, ...]) -> str:
    quoted = [_q(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _q(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- reading tables -----------------------------------------------------------------------

_REQUIRED = object()
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
}


class _Table:
    """One TOML table being read: typed getters that record errors instead of raising."""

    def __init__(self, data: Any, path: str, errors: list[tuple[str, str]]):
        self.path = path
        self.errors = errors
        if not isinstance(data, dict):
            self.error(None, f"must be a table, got {_show(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.known: list[str] = []

    def key(self, name: str | None) -> str:
        if name is None:
            return self.path
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, reason: str) -> None:
        self.errors.append((self.key(name), reason))

    def value(self, name: str, kind: str, default: Any = None,
              check: Callable[[Any], str | None] | None = None) -> Any:
        """A scalar of `kind`; `default` when absent (an error when it is _REQUIRED)."""
        self.known.append(name)
        if name not in self.data:
            if default is _REQUIRED:
                self.error(name, "required")
                return None
            return default
        value = self.data[name]
        test, words = _KINDS[kind]
        if not test(value):
            self.error(name, f"must be {words}, got {_show(value)}")
            return None if default is _REQUIRED else default
        if kind == "number":
            value = float(value)
        if check is not None and (reason := check(value)):
            self.error(name, reason)  # later checks see the default: one error, not a cascade
            return None if default is _REQUIRED else default
        return value

    def values(self, name: str, kind: str = "str",
               check: Callable[[Any], str | None] | None = None,
               min_items: int = 0) -> tuple[Any, ...]:
        """A list of `kind`, each item checked; errors name the item: key[2]."""
        self.known.append(name)
        if name not in self.data:
            if min_items:
                self.error(name, "required")
            return ()
        items = self.data[name]
        test, words = _KINDS[kind]
        if not isinstance(items, list):
            self.error(name, f"must be a list of {_plural(words)}, got {_show(items)}")
            return ()
        if len(items) < min_items:
            self.error(name, f"at least {min_items} needed, got {len(items)}")
        out = []
        for i, item in enumerate(items):
            if not test(item):
                self.error(f"{name}[{i}]", f"must be {words}, got {_show(item)}")
                continue
            if check is not None and (reason := check(item)):
                self.error(f"{name}[{i}]", reason)
            out.append(float(item) if kind == "number" else item)
        return tuple(out)

    def tables(self, name: str) -> list[_Table]:
        """An array of tables ([[name]]), each read with its index in the path."""
        self.known.append(name)
        items = self.data.get(name, [])
        if not isinstance(items, list):
            self.error(name, f"must be an array of tables ([[{self.key(name)}]])")
            return []
        return [_Table(item, f"{self.key(name)}[{i}]", self.errors) for i, item in enumerate(items)]

    def table(self, name: str) -> _Table:
        self.known.append(name)
        return _Table(self.data.get(name, {}), self.key(name), self.errors)

    def path_value(self, name: str, default: Path | None = None) -> Path | None:
        value = self.value(name, "str", default, check=text_problem)
        return Path(value) if isinstance(value, str) else value

    def finish(self) -> None:
        """Every key not read by now is unknown."""
        for name in self.data:
            if name not in self.known:
                import difflib  # only for a key nobody knows

                close = difflib.get_close_matches(name, self.known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.error(name, f"unknown key{hint}")


def _show(value: Any) -> str:
    return _q(value) if _jsonable(value) else type(value).__name__


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list)


def _plural(words: str) -> str:
    return {"a string": "strings", "a number": "numbers", "an integer": "integers",
            "true or false": "booleans"}[words]


# -- sections ------------------------------------------------------------------------------

def _agent(t: _Table) -> AgentSettings:
    d = AgentSettings()
    runtime_dir = t.path_value("runtime_dir", d.runtime_dir)
    settings = AgentSettings(
        state_dir=t.path_value("state_dir", d.state_dir),
        runtime_dir=runtime_dir,
        status_socket=t.path_value("status_socket", Path(runtime_dir or d.runtime_dir)
                                   / "status.sock"),
        status_group=t.value("status_group", "str", None,
                             lambda g: None if _GROUP.fullmatch(g)
                             else f"not a valid group name, got {_q(g)}"),
        hooks_dir=t.path_value("hooks_dir", d.hooks_dir),
        hook_timeout=t.value("hook_timeout", "number", d.hook_timeout, positive),
        health_interval=t.value("health_interval", "number", d.health_interval,
                                _in_range(1, 86400)),
        health_calling_aet=t.value("health_calling_aet", "str", d.health_calling_aet,
                                   ae_title_problem),
        health_updates_directory=t.value("health_updates_directory", "bool",
                                         d.health_updates_directory),
    )
    t.finish()
    return settings


def _client_id(value: str) -> str | None:
    octets = value.split(":")
    if 2 <= len(octets) <= 255 and all(re.fullmatch(r"[0-9A-Fa-f]{2}", o) for o in octets):
        return None
    return f'must be hex octets separated by ":" (e.g. "ff:00:00:00:01"), got {_q(value)}'


def _network(t: _Table) -> NetworkSettings:
    d = NetworkSettings(interface="")
    raw_delay = t.data.get("initial_delay")
    delay = t.values("initial_delay", "number", non_negative)
    if isinstance(raw_delay, list) and (
            len(raw_delay) != 2 or (len(delay) == 2 and delay[0] > delay[1])):
        t.error("initial_delay", f"must be [min, max] seconds with min <= max, "
                                 f"got {_show(raw_delay)}")
    if len(delay) != 2 or delay[0] > delay[1]:
        delay = d.initial_delay
    client_id = t.value("client_id", "str", None, _client_id)
    settings = NetworkSettings(
        interface=t.value("interface", "str", "", interface_problem) or "",
        hostname=t.value("hostname", "str", None, hostname_problem),
        client_id=bytes.fromhex(client_id.replace(":", ""))
        if client_id and not _client_id(client_id) else None,
        auto_ip=t.value("auto_ip", "bool", d.auto_ip),
        initial_delay=(delay[0], delay[1]),
        arp_probe=t.value("arp_probe", "bool", d.arp_probe),
        discover_timeout=t.value("discover_timeout", "number", d.discover_timeout, positive),
        server_allowlist=t.values("server_allowlist", "str", ipv4_problem),
        offer_window=t.value("offer_window", "number", d.offer_window, non_negative),
        release_on_stop=t.value("release_on_stop", "bool", d.release_on_stop),
        resolver=t.value("resolver", "str", d.resolver, _one_of(("auto", "file", "none"))),
        route_metric=t.value("route_metric", "int", d.route_metric, _in_range(0, 2**32 - 1)),
    )
    t.finish()
    return settings


def _time(t: _Table) -> TimeSettings:
    d = TimeSettings()
    settings = TimeSettings(
        mode=t.value("mode", "str", d.mode, _one_of(TIME_MODES)),
        servers=t.values("servers", "str", host_or_address_problem),
        # Offsets in use run from UTC-12 to UTC+14.
        utc_offset=t.value("utc_offset", "int", d.utc_offset, _in_range(-43200, 50400)),
        broadcast_discovery=t.value("broadcast_discovery", "bool", d.broadcast_discovery),
        broadcast_window=t.value("broadcast_window", "number", d.broadcast_window, positive),
        step_threshold_ms=t.value("step_threshold_ms", "number", d.step_threshold_ms, positive),
        step_updates=t.value("step_updates", "int", d.step_updates, _in_range(0, 1000)),
        step_limit_s=t.value("step_limit_s", "number", d.step_limit_s, positive),
        chrony_sourcedir=t.path_value("chrony_sourcedir", d.chrony_sourcedir),
        chronyc_socket=t.path_value("chronyc_socket", d.chronyc_socket),
        nts=t.value("nts", "bool", d.nts),
        nts_ca_file=_as_path(t.value("nts_ca_file", "str", None, _file_problem(False))),
        nts_fallback=t.value("nts_fallback", "bool", d.nts_fallback),
        set_timezone=t.value("set_timezone", "bool", d.set_timezone),
    )
    if settings.nts and settings.mode != "chrony":
        t.error("nts", 'needs mode = "chrony": the built-in SNTP client has no NTS '
                       "(chronyd does it)")
    if settings.nts_ca_file is not None and not settings.nts:
        t.error("nts_ca_file", "used only with nts = true")
    if settings.nts_fallback and not settings.nts:
        t.error("nts_fallback", "used only with nts = true")
    t.finish()
    return settings


CREDENTIAL_PREFIX = "dicom-agent_"  # LoadCredential=dicom-agent:/etc/dicom-agent/credentials/


def credential(value: str) -> str:
    """The copy of a private file that systemd handed over, else the file itself.

    The shipped unit runs as the `dicom-agent` user and loads every file of
    /etc/dicom-agent/credentials/ (root's, 0700) with `LoadCredential=dicom-agent:<dir>/`;
    systemd copies each to `$CREDENTIALS_DIRECTORY/dicom-agent_<file name>`, readable by
    this service only. A configured `password_file` or `client_key` is looked up there by
    its file name first; run by hand (root, no such variable), the file is read directly.
    """
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        copy = Path(creds) / f"{CREDENTIAL_PREFIX}{Path(value).name}"
        if copy.is_file():
            return str(copy)
    return value


def _file_problem(private: bool) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if private:
            value = credential(value)
        try:
            st = os.stat(value)
        except OSError as exc:
            return f"cannot read {_q(value)}: {exc.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"not a regular file: {_q(value)}"
        if private and st.st_mode & 0o044:
            return (f"must not be readable by group or others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 {value}")
        return None
    return check


def _directory(t: _Table) -> DirectorySettings:
    d = DirectorySettings()
    security = t.value("security", "str", d.security, _one_of(SECURITY_PATTERNS))
    settings = DirectorySettings(
        enabled=t.value("enabled", "bool", d.enabled),
        domain=t.value("domain", "str", None, hostname_problem),
        servers=t.values("servers", "str", ldap_url_problem),
        security=security,
        bind_dn=t.value("bind_dn", "str", None, dn_problem),
        password_file=_as_secret(t.value("password_file", "str", None, _file_problem(True))),
        ca_file=_as_path(t.value("ca_file", "str", None, _file_problem(False))),
        client_cert=_as_path(t.value("client_cert", "str", None, _file_problem(False))),
        client_key=_as_secret(t.value("client_key", "str", None, _file_problem(True))),
        allow_cleartext_password=t.value("allow_cleartext_password", "bool",
                                         d.allow_cleartext_password),
        title_attempts=t.value("title_attempts", "int", d.title_attempts, _in_range(1, 10000)),
        refresh_interval=t.value("refresh_interval", "number", d.refresh_interval, positive),
    )
    # PS3.15 Table H.1-15 patterns (dicom-agent.toml(5), [directory] security).
    present = set(t.data)
    if security == "anonymous":
        for key in ("bind_dn", "password_file", "client_cert", "client_key"):
            if key in present:
                t.error(key, 'not used with security "anonymous"; '
                             'set security = "basic" or "tls"')
    if security == "basic":
        for key in ("bind_dn", "password_file"):
            if key not in present:
                t.error(key, 'required with security "basic"')
        if not settings.allow_cleartext_password:
            t.error("security", '"basic" sends the password unencrypted; use "tls", or set '
                                "allow_cleartext_password = true to accept that")
    if security == "tls" and "bind_dn" in present and "password_file" not in present:
        t.error("password_file", "required with bind_dn")
    credentials = "bind_dn" in present or "client_cert" in present
    if security == "tls" and credentials:
        # Credentials go only to servers the administrator named: never to a
        # server derived from DHCP or DNS alone, and never checked with the system trust
        # store, which any public certificate passes.
        if "ca_file" not in present:
            t.error("ca_file", "required when credentials are configured (bind_dn or "
                               "client_cert): the directory's certificate is checked "
                               "against it, not the system trust store")
        if "servers" not in present and "domain" not in present:
            t.error("security", "credentials need [directory] servers or domain: they are "
                                "sent only to servers named there or to SRV targets "
                                "inside that domain, never to a DHCP-supplied one")
    if ("client_cert" in present) != ("client_key" in present):
        missing = "client_key" if "client_cert" in present else "client_cert"
        other = "client_cert" if missing == "client_key" else "client_key"
        t.error(missing, f"required with {other}")
    t.finish()
    return settings


def _as_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _as_secret(value: str | None) -> Path | None:
    return Path(credential(value)) if value else None


def _transfer_capability(t: _Table) -> TransferCapability:
    tc = TransferCapability(
        name=t.value("name", "str", None, text_problem),
        sop_class=t.value("sop_class", "str", _REQUIRED, uid_problem) or "",
        role=t.value("role", "str", _REQUIRED, _one_of(ROLES)) or "",
        transfer_syntaxes=t.values("transfer_syntaxes", "str", uid_problem, min_items=1),
    )
    t.finish()
    return tc


def _connection(t: _Table) -> NetworkConnection:
    conn = NetworkConnection(
        name=t.value("name", "str", _REQUIRED, text_problem) or "",
        hostname=t.value("hostname", "str", None, hostname_problem),
        port=t.value("port", "int", None, port_problem),
        tls_cipher_suites=t.values("tls_cipher_suites", "str", cipher_suite_problem),
        installed=t.value("installed", "bool", None),
    )
    t.finish()
    return conn


def _title(value: str) -> str | None:
    return ae_title_problem(value)


def pynetdicom_available() -> bool:
    """Whether AE health checks can run (pynetdicom is imported only for them)."""
    import importlib.util

    return importlib.util.find_spec("pynetdicom") is not None


def _ae(t: _Table, connections: dict[str, NetworkConnection], attempts: int) -> NetworkAE:
    title = t.value("title", "str", None, _title)
    template = t.value("title_template", "str", None,
                       lambda v: title_template_problem(v, attempts))
    if ("title" in t.data) == ("title_template" in t.data):
        t.error("title", "exactly one of title and title_template is needed, got "
                + ("both" if "title" in t.data else "neither"))
    names = t.values("connections", "str", min_items=1)
    for i, name in enumerate(names):
        if name not in connections:
            known = ", ".join(_q(c) for c in connections) or "none"
            t.error(f"connections[{i}]", f"no connection named {_q(name)} (known: {known})")
        elif names.index(name) != i:
            t.error(f"connections[{i}]", f"{_q(name)} is listed twice")
    ports = [connections[n].port for n in names if n in connections]
    acceptor = t.value("association_acceptor", "bool", any(p is not None for p in ports))
    if acceptor and ports and all(p is None for p in ports):
        t.error("association_acceptor", "true, but none of this AE's connections has a port")
    tcs = [_transfer_capability(tt) for tt in t.tables("transfer_capability")]
    if not tcs:
        t.error("transfer_capability", "at least one [[device.ae.transfer_capability]] "
                                       "is needed (Table H.1-5)")
    _no_duplicates(t, "transfer_capability", "name", [tc.name for tc in tcs],
                   "transfer_capability")
    ae = NetworkAE(
        title=title.strip(" ") if title else None,
        title_template=template,
        description=t.value("description", "str", None, text_problem),
        vendor_data=_decode(t.values("vendor_data", "str", base64_problem)),
        application_cluster=t.values("application_cluster", "str", text_problem),
        preferred_called_ae_title=t.values("preferred_called_ae_title", "str", _title),
        preferred_calling_ae_title=t.values("preferred_calling_ae_title", "str", _title),
        association_acceptor=acceptor,
        association_initiator=t.value("association_initiator", "bool", True),
        connections=names,
        supported_character_set=t.values("supported_character_set", "str", ia5_problem),
        installed=t.value("installed", "bool", None),
        transfer_capabilities=tuple(tcs),
        key=t.value("key", "str", None, text_problem),
        health_check=t.value("health_check", "bool", False),
    )
    if ae.health_check:
        if not any(connections[n].port is not None for n in names if n in connections):
            t.error("health_check", "needs a connection with a port: the check is a C-ECHO "
                                    "to this AE")
        elif not pynetdicom_available():
            t.error("health_check", "needs pynetdicom (pip install 'dicom-agent[dicom]')")
    t.finish()
    return ae


def _no_duplicates(t: _Table, array: str, key: str, values: list[str | None],
                   shown_as: str) -> None:
    """Names and titles are unique within their array: the second one is the error."""
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in first:
            t.error(f"{array}[{i}].{key}",
                    f"{_q(value)} is also the {key} of {shown_as}[{first[value]}]")
        else:
            first[value] = i


def _decode(values: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(base64.b64decode(v) for v in values if not base64_problem(v))


# `[device] name` may be a template filled from the unit's own facts, so that one image
# serves many units: {serial} (DMI product serial, unless a placeholder), {machine} (8 hex
# digits of an app-specific hash of /etc/machine-id), {hostname}.
NAME_FACTS = ("serial", "machine", "hostname")
PLACEHOLDER_SERIALS = {"", "0", "none", "n/a", "na", "default string", "not specified",
                       "to be filled by o.e.m.", "system serial number", "0123456789",
                       "123456789", "chassis serial number", "not applicable"}


def unit_facts(dmi: Path = Path("/sys/class/dmi/id/product_serial"),
               machine_id: Path = Path("/etc/machine-id")) -> dict[str, str | None]:
    """The unit's own facts a device name template may use (None: not known here)."""
    import socket

    from profiles import statefile_io

    try:
        serial: str | None = dmi.read_text(errors="replace").strip()
    except OSError:
        serial = None
    if serial is not None and (serial.lower() in PLACEHOLDER_SERIALS or text_problem(serial)
                               or len(set(serial)) == 1):
        serial = None
    derived = statefile_io.machine_specific("dicom-agent device-name", machine_id)
    host = socket.gethostname().split(".")[0] or None
    return {"serial": serial, "machine": derived.hex()[:8] if derived else None,
            "hostname": host if host and host != "localhost" else None}


def _device_name(t: _Table) -> str:
    """`[device] name`, a template filled from unit_facts() when it has {fields}."""
    import string

    name = t.value("name", "str", _REQUIRED, text_problem) or ""
    if "{" not in name and "}" not in name:
        return name
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(name) if f is not None]
    except ValueError as exc:
        t.error("name", f"not a template: {exc}")
        return ""
    unknown = [f for f in fields if f not in NAME_FACTS]
    if unknown:
        t.error("name", f"unknown field {{{unknown[0]}}}: a template may use "
                        + ", ".join(f"{{{f}}}" for f in NAME_FACTS))
        return ""
    facts = unit_facts()
    missing = [f for f in fields if not facts.get(f)]
    if missing:
        t.error("name", f"{{{missing[0]}}}: this unit has none ("
                        + {"serial": "the DMI serial number is missing or a placeholder",
                           "machine": "no /etc/machine-id",
                           "hostname": "no host name"}[missing[0]] + ")")
        return ""
    filled = name.format(**{f: facts[f] for f in fields})
    if (problem := text_problem(filled)) or len(filled) > 64:
        t.error("name", f"{filled!r} (filled in): {problem or 'longer than 64 characters'}")
        return ""
    return filled


def _device(t: _Table, attempts: int) -> Device:
    conn_tables = t.tables("connection")
    connections = [_connection(ct) for ct in conn_tables]
    if not conn_tables:
        t.error("connection", "at least one [[device.connection]] is needed (Table H.1-3)")
    _no_duplicates(t, "connection", "name", [c.name or None for c in connections],
                   "device.connection")
    by_name = {c.name: c for c in reversed(connections) if c.name}  # the first one wins
    ae_tables = t.tables("ae")
    aes = [_ae(at, by_name, attempts) for at in ae_tables]
    if not ae_tables:
        t.error("ae", "at least one [[device.ae]] is needed (Table H.1-3)")
    _no_duplicates(t, "ae", "title", [ae.title for ae in aes], "device.ae")
    # The key (default: the title or template) matches an AE to its entry across updates.
    _no_duplicates(t, "ae", "key", [ae.identity if ae.title is None or ae.key else None
                                    for ae in aes], "device.ae (set distinct keys)")
    device = Device(
        name=_device_name(t),
        description=t.value("description", "str", None, text_problem),
        manufacturer=t.value("manufacturer", "str", None, text_problem),
        model_name=t.value("model_name", "str", None, text_problem),
        software_versions=t.values("software_versions", "str", text_problem),
        station_name=t.value("station_name", "str", None, text_problem),
        serial_number=t.value("serial_number", "str", None, text_problem),
        primary_device_type=t.values("primary_device_type", "str", ia5_problem),
        institution_name=t.values("institution_name", "str", text_problem),
        institution_address=t.values("institution_address", "str", text_problem),
        institution_department_name=t.values("institution_department_name", "str",
                                             text_problem),
        issuer_of_patient_id=t.value("issuer_of_patient_id", "str", None, text_problem),
        related_device_reference=t.values("related_device_reference", "str", dn_problem),
        authorized_node_certificate_reference=t.values(
            "authorized_node_certificate_reference", "str", dn_problem),
        this_node_certificate_reference=t.values("this_node_certificate_reference", "str",
                                                 dn_problem),
        vendor_data=_decode(t.values("vendor_data", "str", base64_problem)),
        installed=t.value("installed", "bool", True),
        connections=tuple(connections),
        aes=tuple(aes),
    )
    t.finish()
    return device


NO_DEVICE = Device(name="", connections=(), aes=())  # a configuration without [device]


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Build a Config from parsed TOML; raise ConfigError listing every problem."""
    errors: list[tuple[str, str]] = []
    root = _Table(data, "", errors)
    agent = _agent(root.table("agent"))
    network = _network(root.table("network"))
    time_settings = _time(root.table("time"))
    directory = _directory(root.table("directory"))
    if "device" in data:
        device = _device(root.table("device"), directory.title_attempts)
    else:  # no device described: lookups only (nothing registered or advertised)
        root.known.append("device")
        device = NO_DEVICE
    dnssd = _dnssd(root.table("dnssd"))
    root.finish()
    if errors:
        raise ConfigError(errors)
    return Config(agent=agent, network=network, time=time_settings, directory=directory,
                  device=device, source=source, dnssd=dnssd)


def _dnssd(t: _Table) -> DnssdSettings:
    settings = DnssdSettings(
        unicast=t.value("unicast", "bool", False),
        unicast_zone=t.value("unicast_zone", "str", None, hostname_problem),
        tsig_key_file=_as_secret(t.value("tsig_key_file", "str", None, _file_problem(True))),
    )
    if settings.unicast and settings.tsig_key_file is None:
        t.error("tsig_key_file", "required with unicast = true: updates are TSIG-signed")
    t.finish()
    return settings


def load_config(path: str | os.PathLike[str] | None = None, root: Path = Path("/")
                ) -> Config:
    """Read, merge and validate the configuration: FILE and FILE.d/*.toml, or without a
    FILE the system's files (agent/config_files.py). ConfigError names each problem's
    file (and line)."""
    from dataclasses import replace

    from agent import config_files

    main = Path(path) if path is not None else None
    paths = config_files.files(main, root)
    merged, read = config_files.load(paths, required=main)
    fallback = main or root / config_files.MAIN.relative_to("/")
    try:
        config = parse_config(merged.data, source=main)
    except ConfigError as exc:
        raise config_files.attributed(exc, merged, fallback) from None
    if not config.network.interface:  # the machine's only Ethernet interface, or say so
        found = ethernet_interfaces(root / "sys/class/net")
        if len(found) != 1:
            raise ConfigError([(f"{merged.where('network', fallback)}: network.interface",
                                "required: this machine has "
                                + (f"several Ethernet interfaces ({', '.join(found)}): name "
                                   "one" if found else "no Ethernet interface to take"))])
        config = replace(config, network=replace(config.network, interface=found[0]))
    return replace(config, files=tuple(read), from_system=main is None)
