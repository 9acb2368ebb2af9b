"""`dicom-agent` command line (docs/dicom-agent.8.rst, COMMANDS).

Exit codes: 0 success, 1 the operation failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from typing import TYPE_CHECKING

from profiles.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@contextlib.contextmanager
def importing():
    """A command's own imports, made with the collector paused and then frozen: they
    make tens of thousands of objects and no garbage, which the collector walked again
    and again — ~30 ms of CPU per daemon boot (8 boots each way, A/B in one
    run, median 0.37 -> 0.34 s). Frozen, they are never walked again."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def load_or_report(path: str | None) -> Config | None:
    """The configuration (FILE and FILE.d/, or the system's files when `path` is None),
    or None after printing every problem as `FILE[:LINE]: key.path: reason`."""
    # Imported where needed: `wait`, `status`... without --config never read one.
    from agent.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def cmd_wait(args: argparse.Namespace) -> int:
    """`dicom-agent wait`: 0 once the boot state is at or past --state, 1 on timeout."""
    from agent.client import BOOT_ORDER, AgentClient

    if args.state not in BOOT_ORDER:
        print(f"wait: --state must be one of {', '.join(BOOT_ORDER)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        path = _socket_path(args)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_USAGE
    try:
        snap = AgentClient(path).wait_ready(args.timeout, args.state)
    except TimeoutError as exc:
        print(f"wait: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{snap['state']}" + _degraded(snap))
    return EXIT_OK


def _degraded(snap: dict) -> str:
    return f" (degraded: {', '.join(snap['degraded'])})" if snap.get("degraded") else ""


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file and args.config and args.file != args.config:
        print("check-config: give the file once (FILE or --config FILE)", file=sys.stderr)
        return EXIT_USAGE
    path = args.config or args.file
    config = load_or_report(path)
    if config is None:
        return EXIT_USAGE
    if args.show:
        from pathlib import Path

        from agent import config_files

        merged, _ = config_files.load(config_files.files(Path(path) if path else None),
                                      required=Path(path) if path else None)
        sys.stdout.write(config_files.render(merged))
        return EXIT_OK
    device = config.device
    titles = [ae.title or f"template {ae.title_template!r}" for ae in device.aes]
    read = ", ".join(str(f) for f in config.files) or "no file: every default"
    print(f"{read}: valid (" + (f"device {device.name}, {len(device.connections)} "
                                f"connection(s), AEs: {', '.join(titles)})" if device.name
                                else "no [device]: lookups only, nothing registered or "
                                     "advertised)"))
    return EXIT_OK


def cmd_dhcp(args: argparse.Namespace) -> int:
    with importing():
        from agent.commands.dhcp_command import run_dhcp_command

    return run_dhcp_command(args)


def cmd_time(args: argparse.Namespace) -> int:
    with importing():
        from agent.commands.time_command import run_time_command

    return run_time_command(args)


def cmd_directory(args: argparse.Namespace) -> int:
    with importing():
        from agent.commands import directory_command

    return getattr(directory_command, f"cmd_{args.action}")(args)


def cmd_ldif(args: argparse.Namespace) -> int:
    from agent.commands.directory_command import cmd_ldif as run

    return run(args)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    with importing():  # ~50,000 objects
        from agent.daemon.router import Agent

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    logging.basicConfig(level=os.environ.get("DICOM_AGENT_LOG", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        asyncio.run(Agent(config).run())
    except OSError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _socket_path(args: argparse.Namespace):
    from pathlib import Path

    if getattr(args, "socket", None):
        return Path(args.socket)
    from agent.config import load_config  # see load_or_report

    config = getattr(args, "config", None)
    try:  # FILE (and FILE.d), else the system's files, as `run` reads them
        return load_config(config).agent.status_socket
    except ConfigError:
        if config:
            raise
        return Path("/run/dicom-agent/status.sock")  # the daemon says what is wrong


def _ask(args: argparse.Namespace, op: str, **fields: object) -> dict | None:
    """One request through the socket client (agent/client.py, the applications' one);
    None (said on stderr) when the agent is not reachable or answers with an error."""
    from agent.client import AgentClient, AgentError, AgentRefused

    try:
        return AgentClient(_socket_path(args)).request(op, **fields)
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
    except AgentRefused as exc:
        print(f"dicom-agent: the agent refused: {exc}", file=sys.stderr)
    except (AgentError, OSError) as exc:
        print(f"dicom-agent: the agent is not reachable: {exc}", file=sys.stderr)
    return None


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from agent.commands.summary import summary

    snap = _ask(args, "status")
    if snap is None:
        return EXIT_FAILED
    print(json.dumps(snap) if args.json else summary(snap))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    import json

    from agent.client import AgentClient, AgentError

    try:
        for snap in AgentClient(_socket_path(args)).watch():
            print(json.dumps(snap), flush=True)
    except (AgentError, OSError) as exc:
        print(f"dicom-agent: the agent is not reachable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return EXIT_OK


MUTATING = {
    "reload": ("re-read the configuration (as SIGHUP and systemctl reload do): the device "
               "part takes effect, other sections need a restart",
               "dicom-agent reload"),
    "renew": ("renew the DHCP lease now and read the directory's word on this device again",
              "dicom-agent renew --socket /run/dicom-agent/status.sock"),
    "purge-cache": ("forget every cached lookup answer (H.1.6)",
                    "dicom-agent purge-cache"),
    "accept-time-step": ("accept the clock correction the step policy refused "
                         "(degraded clock-step-refused): the next round applies it",
                         "dicom-agent accept-time-step"),
}


def cmd_mutate(args: argparse.Namespace) -> int:
    """The mutating socket ops (root or status_group): 0 done, 1 unreachable or refused."""
    reply = _ask(args, args.op)
    if reply is None:
        return EXIT_FAILED
    if reply.get("ok") is False:
        print(f"{args.op}: the agent did not do it (started without a configuration "
              "file to read again)", file=sys.stderr)
        return EXIT_FAILED
    if args.op == "reload":
        restart = reply.get("restart_needed") or []
        print("reloaded" + (f"; a restart is needed for [{'], ['.join(restart)}]"
                            if restart else ""))
    elif args.op == "accept-time-step":
        refused = reply.get("refused")
        print("accepted: the next round applies "
              + (f"the {refused} s correction" if refused is not None else "its correction"))
    else:
        print({"renew": "renewing", "purge-cache": "cache purged"}[args.op])
    return EXIT_OK


class _Version(argparse.Action):
    """--version, read from the installed package's metadata only when asked."""

    def __init__(self, **kwargs) -> None:
        super().__init__(nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"dicom-agent {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dicom-agent")
    except PackageNotFoundError:
        return "unknown (not installed)"


def cmd_lookup(args: argparse.Namespace) -> int:
    import json

    from agent.commands.summary import lookup_text

    answer = _ask(args, "lookup", aet=args.aet, refresh=args.refresh)
    if answer is None:
        return EXIT_FAILED
    print(json.dumps(answer) if args.json else lookup_text(answer))
    return EXIT_OK if answer.get("found") else EXIT_FAILED


def cmd_query(args: argparse.Namespace) -> int:
    import json

    from agent.commands.summary import lookup_text

    reply = _ask(args, "query", cluster=args.cluster, device_type=args.device_type)
    if reply is None or "results" not in reply:
        return EXIT_FAILED
    print(json.dumps(reply) if args.json else
          "\n".join(lookup_text(a) for a in reply["results"]) or "no AEs")
    return EXIT_OK


def cmd_site(args: argparse.Namespace) -> int:
    """`dicom-agent site OUTPUT --site FILE DEVICE_DIR`: 0 written, 1 conflicts found in
    the fleet (listed on stderr; nothing written), 2 usage (a bad site or device file)."""
    from pathlib import Path

    from agent.commands import site

    try:
        fleet = site.load_site(Path(args.site), Path(args.device_dir))
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_USAGE
    found = site.conflicts(fleet)
    if args.output == "check":
        print("\n".join(found) if found else
              f"no conflicts among {len(fleet.members)} device(s)")
        return EXIT_FAILED if found else EXIT_OK
    if found:
        print("\n".join(["site: conflicts in the fleet, nothing written:", *found]),
              file=sys.stderr)
        return EXIT_FAILED
    try:
        sys.stdout.write(getattr(site, args.output)(fleet))
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_conformance(args: argparse.Namespace) -> int:
    from agent.commands.conformance import statement

    config = load_or_report(args.config)
    if config is None:
        return EXIT_USAGE
    sys.stdout.write(statement(config))
    return EXIT_OK


def cmd_survey(args: argparse.Namespace) -> int:
    """`dicom-agent site survey` (agent/commands/survey.py)."""
    from agent.commands.survey import cmd_survey as survey

    return survey(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-agent",
        description="Boot-time network agent for DICOM devices (PS3.15 Annexes F, G, H).",
        epilog="example: dicom-agent status")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str, description: str | None = None):
        return sub.add_parser(name, help=help, description=description or
                              help[0].upper() + help[1:] + ".", epilog=f"example: {example}")

    def where(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--config", metavar="FILE",
                           help="find the socket from FILE's [agent] status_socket")
        group.add_argument("--socket", metavar="PATH",
                           help="the agent's status socket (default: "
                                "/run/dicom-agent/status.sock)")

    def as_json(p: argparse.ArgumentParser, what: str = "the answer") -> None:
        p.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    run = command("run", "the daemon, in the foreground, logging to stderr",
                  "dicom-agent run --config /etc/dicom-agent/agent.toml",
                  "The daemon, in the foreground, logging to stderr: address, time, "
                  "directory and DNS-SD as PS3.15 describes them, observed through the "
                  "status socket. SIGTERM stops it (exit 0), SIGHUP reloads; a "
                  "configuration that does not validate exits 2.")
    run.add_argument("--config", metavar="FILE",
                     help="read FILE and FILE.d/*.toml (default: the system's files, "
                          "/usr/lib/dicom-agent/agent.toml.d/, /etc/dicom-agent/agent.toml, "
                          "/etc/dicom-agent/agent.toml.d/)")
    run.set_defaults(func=cmd_run)

    status = command("status", "one snapshot of the running agent", "dicom-agent status --json",
                     "One snapshot of the running agent: a readable summary, or the JSON "
                     "of the status socket. Exit 1 when the agent is not reachable.")
    as_json(status, "the snapshot")
    where(status)
    status.set_defaults(func=cmd_status)
    watch = command("watch", "a snapshot per line: now, then one per change",
                    "dicom-agent watch | jq -c '{state, degraded}'")
    where(watch)
    watch.set_defaults(func=cmd_watch)
    wait = command("wait", "until the boot state is at or past STATE (ready)",
                   "dicom-agent wait --state registering --timeout 60",
                   "Wait until the boot state is at or past STATE in boot order (what "
                   "dicom-agent-wait-ready.service runs). Exit 0 reached, 1 timeout or "
                   "unreachable.")
    wait.add_argument("--state", default="ready", metavar="STATE",
                      help="a boot state (default ready)")
    wait.add_argument("--timeout", type=float, default=120.0, metavar="S",
                      help="give up after S seconds (default 120)")
    where(wait)
    wait.set_defaults(func=cmd_wait)
    lookup = command("lookup", "a remote AE through the running agent",
                     "dicom-agent lookup ARCHIVE --json",
                     "A remote AE through the running agent: the directory, else its cache "
                     "(stale), else DNS-SD. Exit 0 found, 1 not found or unreachable.")
    lookup.add_argument("aet", metavar="AET", help="the AE title to look up")
    as_json(lookup)
    lookup.add_argument("--refresh", action="store_true",
                        help="drop the cached entry first (H.1.6)")
    where(lookup)
    lookup.set_defaults(func=cmd_lookup)
    query = command("query", "AEs of an application cluster or device type",
                    "dicom-agent query --cluster neuroradiology")
    query.add_argument("--cluster", metavar="NAME", help="an application cluster (H.1.1.2)")
    query.add_argument("--device-type", metavar="CODE",
                       help="a primary device type (CT, MR, ARCHIVE...)")
    as_json(query, "the answers")
    where(query)
    query.set_defaults(func=cmd_query)
    for op, (what, example) in MUTATING.items():
        mutate = command(op, what, example)
        where(mutate)
        mutate.set_defaults(func=cmd_mutate, op=op)
    check = command("check-config", "validate the configuration",
                    "dicom-agent check-config --show",
                    "Validate the configuration the daemon would read (FILE and "
                    "FILE.d/*.toml, or the system's files); every error on stderr as "
                    "'FILE[:LINE]: key.path: reason'. Exit 0 valid, 2 invalid.")
    check.add_argument("file", metavar="FILE", nargs="?", help="the same as --config FILE")
    check.add_argument("--config", metavar="FILE", help="read FILE and FILE.d/*.toml")
    check.add_argument("--show", action="store_true",
                       help="print the merged configuration, each value with its file")
    check.set_defaults(func=cmd_check_config)

    dhcp = command("dhcp", "PS3.15 Annex F alone: get and keep a DHCP lease",
                   "dicom-agent dhcp --interface eth0 --once --json",
                   "Acquire (or confirm) a lease, apply it and print it. With --once exit "
                   "when bound; without, keep the lease and print one JSON line per lease "
                   "event. Settings come from [network]/[agent] of --config; flags override. "
                   "Exit 0, 1 no lease in time, 2 usage.")
    dhcp.add_argument("--config", metavar="FILE", help="[network] and [agent] from FILE")
    dhcp.add_argument("--interface", metavar="IF", help="the interface (default: the "
                                                        "configuration's)")
    dhcp.add_argument("--hostname", metavar="NAME", help="the host name to ask for")
    dhcp.add_argument("--no-probe", action="store_true", help="skip the RFC 5227 ARP probe")
    dhcp.add_argument("--initial-delay", type=float, metavar="S",
                      help="wait a random 0..S seconds before the first message")
    dhcp.add_argument("--state-dir", metavar="DIR", help="where the lease and client id are")
    dhcp.add_argument("--once", action="store_true", help="exit once bound")
    as_json(dhcp, "the lease")
    dhcp.add_argument("--timeout", type=float, metavar="S",
                      help="with --once: give up after S seconds (default 60)")
    dhcp.add_argument("--print-client-id", action="store_true",
                      help="print the client identifier the device uses (made and saved "
                           "the first time) and exit: for a site's DHCP reservations")
    dhcp.set_defaults(func=cmd_dhcp)

    st = command("site", "the administrator's side: a fleet's DHCP reservations, DNS "
                         "records and directory pre-configuration; the site's census",
                 "dicom-agent site kea --site site.toml devices/ > kea-dhcp4.conf",
                 "From a folder of device files and a site file (see "
                 "agent/commands/site.py): kea (a whole Kea DHCPv4 configuration), dnsmasq "
                 "(dhcp-host lines), dns (a zone fragment), ldif (the directory's "
                 "pre-configuration), check (conflicts): exit 0, 1 conflicts found, 2 "
                 "usage. survey: what the directory, DNS-SD, the DHCP server and the AEs "
                 "say of the DICOM network, and where they disagree: exit 0 nothing "
                 "wrong, 1 something wrong (a source not read counts), 2 usage.")
    site_sub = st.add_subparsers(dest="output", required=True, metavar="OUTPUT")
    for output, what in (("kea", "a whole Kea DHCPv4 configuration"),
                         ("dnsmasq", "dnsmasq dhcp-host lines"),
                         ("dns", "a DNS zone fragment (host names, _ldap._tcp SRV)"),
                         ("ldif", "the directory's pre-configuration"),
                         ("check", "the conflicts among the fleet's devices")):
        out = site_sub.add_parser(output, help=what, description=what[0].upper() + what[1:]
                                  + " from a site file and a folder of device files.",
                                  epilog=f"example: dicom-agent site {output} --site "
                                         "site.toml devices/")
        out.add_argument("--site", metavar="FILE", required=True,
                         help="the site file (TOML)")
        out.add_argument("device_dir", metavar="DEVICE_DIR",
                         help="the folder of device files")
        out.set_defaults(func=cmd_site)
    survey = site_sub.add_parser(
        "survey", help="the site's census: what each source says, and where they disagree",
        description="Read the directory (every provider its SRV records name), DNS-SD "
                    "(mDNS on the link, unicast in the site's zone), optionally the DHCP "
                    "server's leases and a C-ECHO to every installed acceptor; report per "
                    "device and AE, problems first. Read-only. Exit 0 nothing wrong, 1 "
                    "something wrong (a source that could not be read counts, and is "
                    "named), 2 usage.",
        epilog="example: dicom-agent site survey --echo --html site.html")
    survey.add_argument("--config", metavar="FILE",
                        help="the configuration whose [directory] to read (default: the "
                             "system's files)")
    formats = survey.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print the report as JSON")
    formats.add_argument("--html", metavar="FILE",
                         help="write the report as one self-contained HTML page")
    survey.add_argument("--echo", action="store_true",
                        help="C-ECHO every installed acceptor AE")
    survey.add_argument("--leases", metavar="SOURCE",
                        help="the DHCP server's leases: a Kea control agent's URL, a Kea "
                             "configuration or lease file, or a dnsmasq lease file")
    survey.set_defaults(func=cmd_survey)

    tm = command("time", "PS3.15 Annex G alone: find NTP servers, measure",
                 "dicom-agent time --servers 192.0.2.11 --once --json",
                 "Find the NTP servers (--servers, else the saved lease's option 42, else "
                 "time.servers), measure them and print the status's time object. Mode: "
                 "--mode, else observe. Exit 0, 1 no server answered.")
    tm.add_argument("--config", metavar="FILE", help="[time] and [agent] from FILE")
    tm.add_argument("--interface", metavar="IF", help="whose saved lease to read")
    tm.add_argument("--servers", metavar="A,B", help="these servers, comma-separated")
    tm.add_argument("--state-dir", metavar="DIR", help="where the saved lease is")
    tm.add_argument("--mode", choices=("observe", "sntp", "chrony"),
                    help="what to do with the clock (default observe: nothing)")
    tm.add_argument("--once", action="store_true", help="one round, then exit")
    as_json(tm, "the time object")
    tm.set_defaults(func=cmd_time)

    directory = command("directory", "PS3.15 Annex H.1 alone: LDAP configuration",
                        "dicom-agent directory find --config /etc/dicom-agent/agent.toml")
    actions = directory.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text, example in (
            ("find", "SRV result in the order tried, server chosen, base DN",
             "dicom-agent directory find --config agent.toml --json"),
            ("register", "register or adopt; prints device DN and titles owned",
             "dicom-agent directory register --config agent.toml"),
            ("unregister", "take this device out of the directory (its own entries only)",
             "dicom-agent directory unregister --config agent.toml --keep-titles"),
            ("lookup", "a remote AE straight from the directory (or cache)",
             "dicom-agent directory lookup ARCHIVE --config agent.toml")):
        p = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".",
                               epilog=f"example: {example}")
        if action == "lookup":
            p.add_argument("aet", metavar="AET", help="the AE title to look up")
        if action == "unregister":
            p.add_argument("--keep-titles", action="store_true",
                           help="keep entries and titles, set dicomInstalled FALSE (out of "
                                "service, not gone)")
        p.add_argument("--config", metavar="FILE", required=True,
                       help="the device's configuration (FILE and FILE.d/)")
        as_json(p, "the result")
    directory.set_defaults(func=cmd_directory)

    ldif = command("ldif", "RFC 2849 LDIF registering this device, for an administrator to "
                           "load",
                   "dicom-agent ldif --config agent/examples/ct.toml --domain "
                   "hospital.example > ct01.ldif",
                   "The LDIF of this device's entries (the -Manual patterns of PS3.15 Table "
                   "H.1-15), written offline and writing no state. It carries no identity "
                   "marker: the device adopts the entry by its serial number, manufacturer "
                   "and model.")
    ldif.add_argument("--config", metavar="FILE", required=True,
                      help="the device's configuration (FILE and FILE.d/)")
    ldif.add_argument("--title", metavar="AET", action="append", default=[],
                      help="the title for a templated AE (one per templated AE, in order)")
    ldif.add_argument("--base-dn", metavar="DN",
                      help="the DICOM configuration root (cn=DICOM Configuration,...)")
    ldif.add_argument("--domain", metavar="DOMAIN",
                      help="the site's domain: the base DN and host names follow from it")
    ldif.set_defaults(func=cmd_ldif)

    conf = command("conformance", "the PS3.15 conformance statement (Markdown)",
                   "dicom-agent conformance --config agent/examples/archive.toml > cs.md",
                   "The PS3.2 conformance statement sections of the PS3.15 profiles, "
                   "written from the configuration in force (Markdown).")
    conf.add_argument("--config", metavar="FILE", required=True,
                      help="the device's configuration (FILE and FILE.d/)")
    conf.set_defaults(func=cmd_conformance)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
