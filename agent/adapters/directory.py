"""The Application Configuration profile (PS3.15 H.1) as the daemon and `dicom-agent
directory ...` both run it: one adapter over the DirectoryService, so the two cannot
disagree about the domain, the servers tried, the security pattern or the host names.

- domain: `directory.domain`, else the lease's domain (option 15), else its first search
  domain (option 119);
- servers: where the DICOM tree was found last time, then `_ldap._tcp.<domain>` in RFC
  2782 order, then the manual URLs, each name resolved with the F.1.1 resolver;
- host names: `dicomHostname` per connection (H.1.1.3) from the connection, the lease's
  FQDN or `network.hostname`, qualified with the domain, else the address.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.config import Config
from profiles.app_config import plan
from profiles.app_config.records_io import read_directory_record
from profiles.app_config.srv import candidate_urls
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import Resolver

if TYPE_CHECKING:
    from profiles.app_config.directory_io import DirectoryService
    from profiles.app_config.ldap_io import Security


def security_for(config: Config) -> Security:
    """The Table H.1-15 pattern of `[directory]`, with the password read from its file."""
    from profiles.app_config.ldap_io import Security  # ldap3: only with a directory
    d = config.directory
    password = d.password_file.read_text().rstrip("\n") if d.password_file else None
    return Security(d.security, d.bind_dn, password, str(d.ca_file) if d.ca_file else None,
                    str(d.client_cert) if d.client_cert else None,
                    str(d.client_key) if d.client_key else None, d.allow_cleartext_password)


def directory_domain(config: Config, lease: Lease | None) -> str | None:
    if config.directory.domain:
        return config.directory.domain
    if lease is not None:
        return lease.domain or (lease.search[0] if lease.search else None)
    return None


def saved_record(state_dir: Path) -> dict:
    return read_directory_record(state_dir)


def connection_hostnames(config: Config, lease: Lease | None, address: str | None = None
                         ) -> dict[str, str] | str:
    """dicomHostname per connection (H.1.1.3), or why none can be given."""
    domain = directory_domain(config, lease)
    fqdn = (lease.fqdn if lease else None) or config.network.hostname
    address = (lease.address if lease else None) or address
    out = {}
    for conn in config.device.connections:
        name = plan.connection_hostname(conn, fqdn, domain, address) or address
        if name is None:
            return (f"device.connection {conn.name!r}: no host name known (no lease saved, "
                    "no network.hostname, no connection hostname)")
        out[conn.name] = name
    return out


def candidates_for(config: Config, lease: Callable[[], Lease | None],
                   resolver: Callable[[], Resolver], rng: random.Random | None = None
                   ) -> Callable[[], Awaitable[tuple[list[dict], list[tuple[str, str | None]]]]]:
    """The DirectoryService's source of servers: SRV records in the order tried, and the
    (URL, address) pairs to try, read afresh each time (a new lease, a new domain)."""
    rng = rng or random.Random(os.urandom(8))

    async def candidates() -> tuple[list[dict], list[tuple[str, str | None]]]:
        d = config.directory
        srv, urls = await candidate_urls(resolver(), directory_domain(config, lease()),
                                         list(d.servers), d.security == "tls", rng)
        records = [{"priority": r.priority, "weight": r.weight, "port": r.port,
                    "target": r.target} for r in srv]
        return records, urls

    return candidates


def credentials_may_go_to(config: Config) -> Callable[[str], bool]:
    """Where a password or client certificate may be sent (issue 11): a server named in
    `[directory] servers`, or a host inside the configured — never a DHCP-supplied —
    `[directory] domain` (an SRV target there). A remembered server passes the same rule."""
    d = config.directory
    named = {urlsplit(url).hostname for url in d.servers}
    domain = d.domain.lower().rstrip(".") if d.domain else None

    def trusted(url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        return host in named or (domain is not None and (
            host == domain or host.endswith("." + domain)))

    return trusted


def service_for(config: Config, lease: Callable[[], Lease | None],
                resolver: Callable[[], Resolver]) -> DirectoryService:
    from profiles.app_config.directory_io import DirectoryService  # ldap3: only with a directory
    d = config.directory
    async def resolve(name: str) -> list[str]:
        return await resolver().addresses(name)

    return DirectoryService(config.device, security_for(config),
                            candidates_for(config, lease, resolver), config.agent.state_dir,
                            d.title_attempts, d.refresh_interval,
                            credentials_may_go_to(config), resolve)
