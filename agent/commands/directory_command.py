"""`dicom-agent directory find|register|lookup` and `dicom-agent ldif` (PS3.15 H.1).

They run the daemon's directory adapter (agent/adapters/directory.py: the DirectoryService, the
same domain, servers, security and host names) once, using the saved lease (domain, DNS
servers, the device's name and address) from the configured state directory when there
is one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agent import faults
from agent.adapters.address import dns_of
from agent.adapters.directory import (
    connection_hostnames,
    directory_domain,
    saved_record,
    service_for,
)
from agent.config import Config, dn_problem, hostname_problem, load_config
from profiles.app_config import plan
from profiles.app_config.directory_io import DirectoryService
from profiles.app_config.ldap_io import DirectoryError, Refused, manual_ldif_path
from profiles.app_config.model import ae_title_problem
from profiles.errors import ConfigError
from profiles.network_address.dhcp_io import Paths, load_saved_lease
from profiles.network_address.lease import Lease
from profiles.network_address.resolver_io import Resolver

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


@dataclass
class Context:
    """What a `directory` command works with: the configuration, a lease, a resolver."""

    config: Config
    lease: Lease | None
    resolver: Resolver

    @property
    def state_dir(self) -> Path:
        return self.config.agent.state_dir

    @property
    def domain(self) -> str | None:
        return directory_domain(self.config, self.lease)

    def service(self) -> DirectoryService:
        return service_for(self.config, lambda: self.lease, lambda: self.resolver)


def command_context(args: argparse.Namespace) -> Context | int:
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_USAGE
    return context_for(config)


def context_for(config: Config) -> Context:
    """The saved lease (domain, DNS servers) of the configured state directory, and a
    resolver on its DNS servers, else on /etc/resolv.conf's."""
    lease, _ = load_saved_lease(Paths(config.agent.state_dir, config.agent.runtime_dir,
                                      config.network.interface))
    servers, search = dns_of(lease)
    if not servers:
        servers, search = _system_resolver()
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


def _find(ctx: Context) -> tuple[DirectoryService, bool, dict]:
    service = ctx.service()
    try:
        asyncio.run(service.locate())
        found = True
    except Exception as exc:  # the report names every server tried and why
        logging.getLogger(__name__).debug("locate: %s", exc)
        found = False
    report = {"domain": ctx.domain, "srv": service.srv_records, "tried": service.tried,
              "server": service.server if found else None,
              "base_dn": service.base if found else None}
    return service, found, report


def _emit(data: dict, as_json: bool, text: str) -> None:
    print(json.dumps(data) if as_json else text)


def cmd_find(args: argparse.Namespace) -> int:
    ctx = command_context(args)
    if isinstance(ctx, int):
        return ctx
    service, found, report = _find(ctx)
    service.close()
    lines = [f"domain: {report['domain'] or '-'}"]
    lines += [f"  SRV {r['priority']} {r['weight']} {r['port']} {r['target']}"
              for r in report["srv"]]
    lines += [f"  tried {t['url']}: {t['result']}" for t in report["tried"]]
    lines.append(f"server: {report['server'] or 'none found'}")
    lines.append(f"base DN: {report['base_dn'] or '-'}")
    _emit(report, args.json, "\n".join(lines))
    return EXIT_OK if found else EXIT_FAILED


def cmd_register(args: argparse.Namespace) -> int:
    ctx = command_context(args)
    if isinstance(ctx, int):
        return ctx
    names = connection_hostnames(ctx.config, ctx.lease)
    if isinstance(names, str):
        print(f"directory register: {names}", file=sys.stderr)
        return EXIT_FAILED
    service = ctx.service()
    injected = faults.injection()
    if injected:
        injected.arm()
    try:
        state = asyncio.run(service.register(names))
    finally:
        service.close()
    if state in ("awaiting-manual-registration", "conflict"):
        path = manual_ldif_path(ctx.state_dir, ctx.config.device)
        out = {"state": state, "reason": service.last_error, "ldif": str(path),
               "server": service.server, "base_dn": service.base}
        why = "conflict" if state == "conflict" else f"refused by {service.server}"
        _emit(out, args.json, f"{why}: {service.last_error}\n"
                              f"LDIF for an administrator: {path}")
        # A conflict is a failure (exit 1) whose reason names it; a refusal exits 3.
        return EXIT_REFUSED if state != "conflict" else EXIT_FAILED
    if state != "registered":
        print(f"directory register: {service.last_error}", file=sys.stderr)
        return EXIT_FAILED
    record, result = service.saved, service.last
    out = {**record, "state": "registered", "adopted": service.adopted,
           "changed": result.changed}
    _emit(out, args.json, f"{'adopted' if service.adopted else 'registered'} "
                          f"{result.device_dn}\nAE titles: {', '.join(result.titles)}")
    return EXIT_OK


def cmd_unregister(args: argparse.Namespace) -> int:
    """Take this device out of the directory: its own entries only."""
    ctx = command_context(args)
    if isinstance(ctx, int):
        return ctx
    service = ctx.service()
    try:
        out = asyncio.run(service.unregister(args.keep_titles))
    except Refused as exc:
        path = getattr(exc, "ldif", None)
        _emit({"state": "refused", "reason": str(exc), "ldif": str(path)}, args.json,
              f"refused by {service.server}: {exc}\nLDIF for an administrator: {path}")
        return EXIT_REFUSED
    except DirectoryError as exc:
        print(f"directory unregister: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        service.close()
    text = (f"{out['device_dn']}: set not installed (entries and titles kept)"
            if out["kept"] else f"removed {out['device_dn']}; titles released: "
                                f"{', '.join(out['titles_released']) or '-'}")
    _emit({"state": "unregistered", **out}, args.json, text)
    return EXIT_OK


def cmd_lookup(args: argparse.Namespace) -> int:
    ctx = command_context(args)
    if isinstance(ctx, int):
        return ctx
    service = ctx.service()
    try:
        answer = asyncio.run(service.lookup(args.aet))
    finally:
        service.close()
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
    """The LDIF an administrator loads for this device (the -Manual patterns). Written
    offline as well: the base DN from --base-dn, else --domain, else what the device
    registered last, else [directory] domain, else the saved lease's domain. It writes no
    state and carries no identity marker: the device adopts the entry by its serial
    number, manufacturer and model, as it does site ldif's (the daemon's own file, while
    awaiting manual registration, carries the marker)."""
    from dataclasses import replace

    ctx = command_context(args)
    if isinstance(ctx, int):
        return ctx
    if not ctx.config.device.name:
        print("ldif: the configuration describes no device ([device]): nothing to register",
              file=sys.stderr)
        return EXIT_USAGE
    if args.domain:
        if (problem := hostname_problem(args.domain)) is not None:
            print(f"ldif: --domain {args.domain!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
        ctx.config = replace(ctx.config, directory=replace(ctx.config.directory,
                                                           domain=args.domain))
    saved = saved_record(ctx.state_dir)
    domain = args.domain or ctx.domain
    base = args.base_dn or (
        "cn=DICOM Configuration," + ",".join(f"dc={p}" for p in args.domain.split("."))
        if args.domain else saved.get("base_dn") or (
            "cn=DICOM Configuration," + ",".join(f"dc={p}" for p in domain.split("."))
            if domain else None))
    if base is None:
        print("ldif: no base DN known: give --base-dn DN or --domain DOMAIN, or set "
              "[directory] domain in the configuration", file=sys.stderr)
        return EXIT_USAGE
    if (problem := dn_problem(base)) is not None:
        print(f"ldif: --base-dn {base!r}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    names = connection_hostnames(ctx.config, ctx.lease)
    if isinstance(names, str):
        print(f"ldif: {names}", file=sys.stderr)
        return EXIT_USAGE
    for title in args.title:
        if (problem := ae_title_problem(title)) is not None:
            print(f"ldif: --title {title!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    device = ctx.config.device
    taken = None
    if any(ae.title is None for ae in device.aes) and not args.title:
        taken = _registered_titles(ctx)  # say what is free now; reserve nothing
    sys.stdout.write(plan.registration_ldif(device,
                                            ctx.config.directory.title_attempts, base, names,
                                            saved.get("titles", []), args.title, taken))
    return EXIT_OK


def _registered_titles(ctx: Context) -> set[str] | None:
    service = ctx.service()
    try:
        return asyncio.run(service.call(lambda d: d.registered_titles()))
    except Exception as exc:  # an LDIF is wanted precisely when the directory is away
        logging.getLogger(__name__).info("registry not read: %s", exc)
        return None
    finally:
        service.close()
