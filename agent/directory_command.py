"""`dicom-agent directory find|register|lookup` and `dicom-agent ldif` (PS3.15 H.1).

They use the saved lease (domain, DNS servers, the device's name and address) from the
configured state directory when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config, load_config
from profiles import statefile
from profiles.app_config import plan
from profiles.app_config.cache import LookupCache
from profiles.app_config.directory import (
    Directory,
    DirectoryError,
    Refused,
    Security,
    find_directory,
    manual_ldif_path,
)
from profiles.app_config.srv import candidate_urls
from profiles.errors import ConfigError
from profiles.network_address.driver import Paths, load_saved_lease
from profiles.network_address.lease import Lease
from profiles.network_address.resolver import Resolver

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


@dataclass
class Context:
    config: Config
    lease: Lease | None
    resolver: Resolver

    @property
    def state_dir(self) -> Path:
        return self.config.agent.state_dir

    @property
    def domain(self) -> str | None:
        d = self.config.directory
        if d.domain:
            return d.domain
        if self.lease is not None:
            return self.lease.domain or (self.lease.search[0] if self.lease.search else None)
        return None


def _context(args: argparse.Namespace) -> Context | int:
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_USAGE
    lease, _ = load_saved_lease(Paths(config.agent.state_dir, config.agent.runtime_dir,
                                      config.network.interface))
    servers, search = (lease.dns, lease.search) if lease else _system_resolver()
    return Context(config, lease, Resolver(servers, search))


def _system_resolver() -> tuple[tuple[str, ...], tuple[str, ...]]:
    servers, search = [], []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            words = line.split()
            if words[:1] == ["nameserver"] and len(words) > 1:
                servers.append(words[1])
            elif words[:1] in (["search"], ["domain"]):
                search = words[1:]
    except OSError:
        pass
    return tuple(servers), tuple(search)


def security_for(config: Config) -> Security:
    """The Table H.1-15 pattern of `[directory]`, with the password read from its file."""
    d = config.directory
    password = d.password_file.read_text().rstrip("\n") if d.password_file else None
    return Security(d.security, d.bind_dn, password, str(d.ca_file) if d.ca_file else None,
                    str(d.client_cert) if d.client_cert else None,
                    str(d.client_key) if d.client_key else None, d.allow_cleartext_password)


async def _candidates(ctx: Context) -> tuple[list[dict], list[tuple[str, str | None]]]:
    """SRV records in the order tried, and the (URL, address) pairs to try."""
    # Where the DICOM tree was found last time comes before the manual servers
    # (H.1.2 note: remember it).
    saved = _saved(ctx).get("server")
    manual = list(ctx.config.directory.servers)
    if saved and saved not in manual:
        manual.insert(0, saved)
    srv, urls = await candidate_urls(ctx.resolver, ctx.domain, manual,
                                     ctx.config.directory.security == "tls",
                                     random.Random(os.urandom(8)))
    # A remembered SRV target is already in the list: do not try it twice.
    seen: set[str] = set()
    urls = [pair for pair in urls if not (pair[0] in seen or seen.add(pair[0]))]
    records = [{"priority": r.priority, "weight": r.weight, "port": r.port,
                "target": r.target} for r in srv]
    return records, urls


def _find(ctx: Context) -> tuple[Directory | None, dict]:
    records, urls = asyncio.run(_candidates(ctx))
    conn, url, base, tried = find_directory(urls, security_for(ctx.config))
    report = {"domain": ctx.domain, "srv": records, "tried": tried, "server": url,
              "base_dn": base}
    return (Directory(conn, base) if conn is not None else None), report


def hostnames(config: Config, lease: Lease | None) -> dict[str, str] | str:
    """dicomHostname per connection (H.1.1.3), or why none can be given."""
    domain = config.directory.domain or (lease.domain if lease else None)
    fqdn = lease.fqdn if lease else None
    if fqdn is None and config.network.hostname:
        fqdn = config.network.hostname
    out = {}
    for conn in config.device.connections:
        name = plan.connection_hostname(conn, fqdn, domain, lease.address if lease else None)
        if name is None:
            return (f"device.connection {conn.name!r}: no host name known (no lease saved, "
                    "no network.hostname, no connection hostname)")
        out[conn.name] = name
    return out


def _saved(ctx: Context) -> dict:
    record = statefile.read_json(ctx.state_dir / "directory.json")
    return record if isinstance(record, dict) else {}


def _emit(data: dict, as_json: bool, text: str) -> None:
    print(json.dumps(data) if as_json else text)


def cmd_find(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if isinstance(ctx, int):
        return ctx
    directory, report = _find(ctx)
    if directory is not None:
        directory.close()
    lines = [f"domain: {report['domain'] or '-'}"]
    lines += [f"  SRV {r['priority']} {r['weight']} {r['port']} {r['target']}"
              for r in report["srv"]]
    lines += [f"  tried {t['url']}: {t['result']}" for t in report["tried"]]
    lines.append(f"server: {report['server'] or 'none found'}")
    lines.append(f"base DN: {report['base_dn'] or '-'}")
    _emit(report, args.json, "\n".join(lines))
    return EXIT_OK if directory is not None else EXIT_FAILED


def cmd_register(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if isinstance(ctx, int):
        return ctx
    names = hostnames(ctx.config, ctx.lease)
    if isinstance(names, str):
        print(f"directory register: {names}", file=sys.stderr)
        return EXIT_FAILED
    directory, report = _find(ctx)
    if directory is None:
        print("directory register: no LDAP server with a DICOM configuration root: "
              + "; ".join(f"{t['url']}: {t['result']}" for t in report["tried"]),
              file=sys.stderr)
        return EXIT_FAILED
    saved = _saved(ctx)
    device = ctx.config.device
    try:
        result = directory.register(device, names, saved.get("titles", []),
                                    ctx.config.directory.title_attempts)
    except Refused as exc:
        path = manual_ldif_path(ctx.state_dir, device)
        statefile.atomic_write(path, plan.registration_ldif(
            device, ctx.config.directory.title_attempts, report["base_dn"], names,
            saved.get("titles", [])).encode())
        out = {"state": "awaiting-manual-registration", "reason": str(exc),
               "ldif": str(path), "server": report["server"], "base_dn": report["base_dn"]}
        _emit(out, args.json, f"refused by {report['server']}: {exc}\n"
                              f"LDIF for an administrator: {path}")
        return EXIT_REFUSED
    except DirectoryError as exc:
        print(f"directory register: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        directory.close()
    # Found by name but registered by this device before: not an adoption.
    adopted = result.adopted and saved.get("device_dn") != result.device_dn
    record = {"server": report["server"], "base_dn": report["base_dn"],
              "device_dn": result.device_dn, "titles": result.titles}
    statefile.write_json(ctx.state_dir / "directory.json", record)
    manual_ldif_path(ctx.state_dir, device).unlink(missing_ok=True)
    out = {**record, "state": "registered", "adopted": adopted, "changed": result.changed}
    _emit(out, args.json, f"{'adopted' if adopted else 'registered'} "
                          f"{result.device_dn}\nAE titles: {', '.join(result.titles)}")
    return EXIT_OK


def cmd_lookup(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if isinstance(ctx, int):
        return ctx
    cache = LookupCache(ctx.state_dir / "cache")
    directory, _ = _find(ctx)
    if directory is None:
        answer = cache.get(args.aet) or {"v": 1, "aet": args.aet, "found": False,
                                          "stale": True, "source": "cache"}
    else:
        try:
            answer = directory.lookup(args.aet)
        finally:
            directory.close()
        if answer["found"]:
            cache.put(answer)
        else:
            cache.drop(args.aet)
    text = (f"{answer['aet']}: not found" if not answer["found"] else
            f"{answer['aet']}: device {answer['device']}, "
            f"{'installed' if answer['installed'] else 'NOT installed'}"
            f"{' (stale, from cache)' if answer['stale'] else ''}\n" + "\n".join(
                f"  {c['hostname']}:{c['port'] or '(no port: initiates only)'}"
                + (f" TLS {' '.join(c['tls_cipher_suites'])}" if c["tls_cipher_suites"] else "")
                for c in answer["connections"]))
    _emit(answer, args.json, text)
    return EXIT_OK if answer["found"] else EXIT_FAILED


def cmd_ldif(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if isinstance(ctx, int):
        return ctx
    saved = _saved(ctx)
    base = saved.get("base_dn") or (
        "cn=DICOM Configuration," + ",".join(f"dc={p}" for p in ctx.domain.split("."))
        if ctx.domain else None)
    if base is None:
        print("ldif: no base DN known (no directory.json, no directory.domain, no lease)",
              file=sys.stderr)
        return EXIT_USAGE
    names = hostnames(ctx.config, ctx.lease)
    if isinstance(names, str):
        print(f"ldif: {names}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(plan.registration_ldif(ctx.config.device,
                                            ctx.config.directory.title_attempts, base, names,
                                            saved.get("titles", [])))
    return EXIT_OK
