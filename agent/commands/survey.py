"""`dicom-agent site survey`: the site's census — every source that knows part of the DICOM
network, read side by side (profiles/app_config/census.py joins them and names the
problems). Read-only: it never writes the directory, the DNS or anything else.

- the directory: the provider the configuration finds (H.1.4.1: SRV records, else
  `[directory] servers`) and every other provider it names, each read whole (devices,
  network AEs, connections, the Unique AE Titles Registry);
- DNS-SD: an mDNS browse of the link for BROWSE seconds, and unicast DNS-SD in the
  directory's domain and the lease's search domains;
- host names: each connection's dicomHostname through the lease's DNS servers (else
  /etc/resolv.conf), at most RESOLVE_AT_ONCE at a time;
- with --leases: a Kea control agent (http[s]://...: lease4-get-all and config-get), a Kea
  configuration (its pools and its memfile), a Kea memfile or a dnsmasq lease file;
- with --echo: a C-ECHO to every installed acceptor's installed connections, at most
  ECHO_AT_ONCE at a time, ECHO_TIMEOUT each.

Exit 0 when nothing is wrong, 1 when something is (a source that could not be read
counts, and is named), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.commands.directory_command import Context, command_context
from profiles.app_config import census
from profiles.network_address import leases as lease_files

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
BROWSE = 2.0  # s of mDNS browsing: responders answer a query within 20-120 ms (RFC 6762 6)
RESOLVE_AT_ONCE = 64
ECHO_AT_ONCE = 32
ECHO_TIMEOUT = 3.0  # s: connect, association, C-ECHO each
HTTP_TIMEOUT = 10.0


async def read_directory(ctx: Context) -> tuple[str | None, dict, list[tuple[str, str]]]:
    """(the provider found, each provider's tree, the sources not read)."""
    from profiles.app_config.ldap_io import Directory, DirectoryError, connect

    if not ctx.config.directory.enabled:
        return None, {}, [("directory", "[directory] enabled = false in the configuration")]
    service = ctx.service()
    try:
        await service.locate()
    except Exception as exc:
        where = ctx.domain or "no domain"
        return None, {}, [("directory", f"{where}: {exc}")]
    unreadable, trees = [], {}
    try:
        trees[service.server] = await service.call(
            lambda d: d.run(census.read_tree(service.base)))
    except DirectoryError as exc:
        unreadable.append((f"directory {service.server}", str(exc)))
    finally:
        service.close()

    def read(url: str, address: str | None) -> census.Tree:
        security = service.security if service.trusted(url) \
            else service.security.without_credentials()
        directory = Directory(connect(url, security, address), service.base)
        try:
            return directory.run(census.read_tree(service.base))
        finally:
            directory.close()

    others = [(u, a) for u, a in service.urls if u != service.server]
    results = await asyncio.gather(*(asyncio.to_thread(read, u, a) for u, a in others),
                                   return_exceptions=True)
    for (url, _), result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            unreadable.append((f"directory {url}", str(result)))
        else:
            trees[url] = result
    return service.server, trees, unreadable


async def browse_link(seconds: float) -> list[census.Advert]:
    """The `_dicom._tcp` and `_dicom-tls._tcp` services that answer on the link."""
    from profiles.app_config.dnssd_io import Advertiser

    listener = Advertiser("dicom-agent-survey")
    await listener.listen()
    try:
        await listener.browse()
        await asyncio.sleep(seconds)
        if listener.resolving:  # seen in time: let them resolve (3 s at most)
            await asyncio.wait(set(listener.resolving), timeout=3.0)
        found = list(listener.found.values())
    finally:
        await listener.withdraw()
    return [census.Advert(f["name"], f["type"], f["aet"], f["hostname"] or None, f["port"],
                          [a for a in f["addresses"] if a.count(".") == 3], "mdns")
            for f in found]


def browse_zones(domains: list[str], nameservers: list[str]) -> list[census.Advert]:
    from profiles.app_config.unicast_dnssd_io import instances

    return [census.Advert(f["name"], f["type"], f["aet"], f["hostname"], f["port"], [],
                          f"dns:{f['domain']}") for f in instances(domains, nameservers)]


async def resolve_all(ctx: Context, hosts: list[str]) -> dict[str, list[str]]:
    gate = asyncio.Semaphore(RESOLVE_AT_ONCE)

    async def one(host: str) -> list[str]:
        async with gate:
            try:
                return list(await ctx.resolver.addresses(host))
            except Exception as exc:
                log.debug("%s: %s", host, exc)
                return []

    answers = await asyncio.gather(*(one(h) for h in hosts))
    return dict(zip(hosts, answers, strict=True))


def read_leases(source: str, now: float) -> lease_files.Leases:
    """--leases SOURCE: a control agent's URL, or a file."""
    if source.startswith(("http://", "https://")):
        def ask(command: str) -> dict:
            body = json.dumps({"command": command, "service": ["dhcp4"]}).encode()
            request = urllib.request.Request(source, body,
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
                return lease_files.kea_answer(answer.read(4 << 20).decode(), command)

        held = lease_files.kea_api_leases(ask("lease4-get-all"), now)
        pools, _ = lease_files.kea_config(ask("config-get"))
        return lease_files.Leases(held, pools, source)
    text = Path(source).read_text()
    return lease_files.from_file(text, now, source, read=lambda p: Path(p).read_text())


def echo_all(targets: list[tuple[str, str, int, bool]], calling: str,
             ca_file: Path | None) -> dict[tuple[str, str, int], str | None]:
    from agent.adapters.health import echo

    def one(target: tuple[str, str, int, bool]) -> str | None:
        title, address, port, tls = target
        return echo(calling, title, address, port, address if tls else None, ca_file,
                    ECHO_TIMEOUT)

    with ThreadPoolExecutor(ECHO_AT_ONCE) as pool:
        answers = list(pool.map(one, targets))
    return {t[:3]: a for t, a in zip(targets, answers, strict=True)}


async def gather(ctx: Context, leases_source: str | None, do_echo: bool) -> dict:
    from profiles.network_address.dhcp_io import lease_search

    primary, trees, unreadable = await read_directory(ctx)
    adverts: list[census.Advert] = []
    try:
        adverts += await browse_link(BROWSE)
    except Exception as exc:
        unreadable.append(("mdns", f"{type(exc).__name__}: {exc}"))
    domains = list(dict.fromkeys(
        d for d in [ctx.domain, *(lease_search(ctx.lease) if ctx.lease else [])] if d))
    if domains and ctx.resolver.servers:
        try:
            adverts += await asyncio.to_thread(browse_zones, domains,
                                               list(ctx.resolver.servers))
        except Exception as exc:
            unreadable.append((f"dns-sd {', '.join(domains)}", str(exc)))
    main = trees.get(primary)
    hosts = sorted({c.hostname for d in (main.devices if main else []) for ae in d.aes
                    for c in ae.connections if c.hostname})
    resolved = await resolve_all(ctx, hosts)
    held = None
    if leases_source:
        try:
            held = await asyncio.to_thread(read_leases, leases_source, time.time())
        except (OSError, ValueError) as exc:
            unreadable.append((f"leases {leases_source}", str(exc)))
    echoes = None
    if do_echo and main is not None:
        echoes = await asyncio.to_thread(
            echo_all, census.echo_targets(main, resolved), ctx.config.agent.health_calling_aet,
            ctx.config.directory.ca_file)
    return census.survey(primary, trees, adverts, resolved, held, echoes, unreadable)


# -- output ------------------------------------------------------------------------------

def _by_type(report: dict) -> list[tuple[str, list[dict]]]:
    """Devices grouped by primary device type; in each group those with problems first."""
    troubled = {p["device"] for p in report["problems"] if p["device"]}
    groups: dict[str, list[dict]] = {}
    for device in report["devices"]:
        groups.setdefault(device["types"][0] if device["types"] else "(no type)",
                          []).append(device)
    return [(kind, sorted(devices, key=lambda d: (d["name"] not in troubled, d["name"])))
            for kind, devices in sorted(groups.items())]


def _connection_text(c: dict) -> str:
    where = f"{c['hostname']}:{c['port'] if c['port'] is not None else '-'}"
    address = ",".join(c["addresses"]) or "unresolved"
    echo = f" echo {c['echo']}" if c["echo"] else ""
    return f"{where}{' tls' if c['tls'] else ''} ({address}){echo}"


def text(report: dict) -> str:
    lines = []
    problems = report["problems"]
    lines.append(f"PROBLEMS ({len(problems)})" if problems else "no problems")
    for p in problems:
        device = f" [{p['device']}]" if p["device"] else ""
        lines.append(f"  {p['kind']:<24} {p['subject']}{device}: {p['detail']}")
    s = report["summary"]
    lines.append(f"\ndirectory: {report['directory'] or 'not read'}"
                 f" ({', '.join(report['providers']) or 'no provider'}); "
                 f"{s['devices']} devices, {s['aes']} AEs, {s['advertised']} DNS-SD services")
    for kind, devices in _by_type(report):
        lines.append(f"\n{kind}")
        for d in devices:
            state = "" if d["installed"] else " (not installed)"
            lines.append(f"  {d['name']}{state}")
            for ae in d["aes"]:
                flags = [f for f, on in (("acceptor", ae["acceptor"]),
                                         ("not installed", not ae["installed"]),
                                         ("unregistered", not ae["registered"])) if on]
                seen = f" dns-sd: {', '.join(ae['advertised'])}" if ae["advertised"] else ""
                lines.append(f"    {ae['title']:<16} {', '.join(flags)}{seen}".rstrip())
                lines += [f"      {_connection_text(c)}" for c in ae["connections"]]
    strays = [a for a in report["advertised"] if not a["registered"]]
    if strays:
        lines.append("\nadvertised, not in the directory")
        lines += [f"  {a['aet']:<16} {a['host']}:{a['port']} ({a['source']})" for a in strays]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left;vertical-align:top}
.problem{background:#fde2e1}.ok{color:#1a7f37}.bad{color:#b42318;font-weight:bold}
h2{margin-top:1.5em}"""


def page(report: dict, generated: str) -> str:
    """One self-contained HTML page (no external assets): problems first, then the devices
    grouped by type."""
    e = html.escape
    troubled = {p["device"] for p in report["problems"] if p["device"]}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>DICOM site survey</title>", f"<style>{STYLE}</style></head><body>",
           "<h1>DICOM site survey</h1>",
           f"<p>{e(generated)}; directory {e(report['directory'] or 'not read')}; "
           f"{report['summary']['devices']} devices, {report['summary']['aes']} AEs, "
           f"{report['summary']['advertised']} DNS-SD services.</p>",
           f'<h2 id="problems">Problems ({len(report["problems"])})</h2>']
    if report["problems"]:
        out.append('<table><tr><th>kind</th><th>subject</th><th>device</th>'
                   "<th>detail</th></tr>")
        out += [f'<tr class="problem" data-kind="{e(p["kind"])}"><td>{e(p["kind"])}</td>'
                f'<td>{e(p["subject"])}</td><td>{e(p["device"] or "")}</td>'
                f'<td>{e(p["detail"])}</td></tr>' for p in report["problems"]]
        out.append("</table>")
    else:
        out.append('<p class="ok">None.</p>')
    for kind, devices in _by_type(report):
        out.append(f'<h2 class="type">{e(kind)}</h2><table><tr><th>device</th><th>AE</th>'
                   "<th>installed</th><th>registered</th><th>DNS-SD</th>"
                   "<th>connections</th></tr>")
        for d in devices:
            cls = ' class="problem"' if d["name"] in troubled else ""
            for i, ae in enumerate(d["aes"] or [None]):
                name = f"<td>{e(d['name'])}</td>" if i == 0 else "<td></td>"
                if ae is None:
                    out.append(f'<tr{cls} data-device="{e(d["name"])}">{name}'
                               "<td colspan=5>no network AE</td></tr>")
                    continue
                conns = "<br>".join(e(_connection_text(c)) for c in ae["connections"])
                out.append(
                    f'<tr{cls} data-device="{e(d["name"])}" data-aet="{e(ae["title"])}">'
                    f"{name}<td>{e(ae['title'])}</td>"
                    f"<td>{'yes' if ae['installed'] else 'no'}</td>"
                    f"<td class=\"{'ok' if ae['registered'] else 'bad'}\">"
                    f"{'yes' if ae['registered'] else 'no'}</td>"
                    f"<td>{e(', '.join(ae['advertised']) or '-')}</td><td>{conns}</td></tr>")
        out.append("</table>")
    strays = [a for a in report["advertised"] if not a["registered"]]
    if strays:
        out.append("<h2>Advertised, not in the directory</h2><table><tr><th>AE title</th>"
                   "<th>service</th><th>where</th><th>source</th></tr>")
        out += [f'<tr class="problem" data-aet="{e(a["aet"] or "")}"><td>{e(a["aet"] or "")}'
                f'</td><td>{e(a["name"])}</td><td>{e(str(a["host"]))}:{a["port"]}</td>'
                f'<td>{e(a["source"])}</td></tr>' for a in strays]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def cmd_survey(args: argparse.Namespace) -> int:
    ctx = command_context(args)  # the `directory` commands' configuration, lease, resolver
    if isinstance(ctx, int):
        return ctx
    report = asyncio.run(gather(ctx, args.leases, args.echo))
    if args.html:
        generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            Path(args.html).write_text(page(report, generated))
        except OSError as exc:
            print(f"site survey: {args.html}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(report))
    elif not args.html:
        sys.stdout.write(text(report))
    else:
        print(f"{args.html}: {len(report['problems'])} problem(s)")
    return EXIT_FAILED if report["problems"] else EXIT_OK
