"""`dicom-agent conformance --config FILE`: the PS3.2 conformance statement sections for
the PS3.15 system management profiles, written from the actual configuration."""

from __future__ import annotations

from dataclasses import replace

from agent.config import Config
from profiles.app_config import dnssd_io, plan
from profiles.network_address import options as o

OPTION_NAMES = {1: "Subnet Mask", 2: "Time Offset", 3: "Router", 6: "Domain Name Server",
                12: "Host Name", 15: "Domain Name", 26: "Interface MTU",
                28: "Broadcast Address", 33: "Static Route", 42: "NTP Servers",
                51: "IP Address Lease Time", 54: "Server Identifier", 58: "Renewal (T1) Time",
                59: "Rebinding (T2) Time", 81: "Client FQDN", 100: "POSIX TZ string (PCode)",
                101: "TZ database name (TCode)", 116: "Auto-Configure",
                119: "Domain Search", 121: "Classless Static Route"}
PATTERNS = (  # Table H.1-15, how each is had with this agent
    ("TLS", 'security = "tls" with a bind DN and password file or a client certificate: '
            "every read and update over TLS (StartTLS on ldap://, implicit on ldaps://; the "
            "server's certificate and name verified against ca_file), SASL EXTERNAL or a "
            "simple bind"),
    ("TLS-Manual", 'security = "tls" where the server refuses updates: reads over TLS, the '
                   "device's entries written as LDIF for manual registration"),
    ("Basic", 'security = "basic" with allow_cleartext_password = true: a simple bind over '
              "an unencrypted connection, updates as the bound account"),
    ("Basic-Manual", 'security = "basic" where the server refuses updates: reads bound, '
                     "the entries written as LDIF"),
    ("Anonymous", 'security = "anonymous": reads, and updates (adds, modifies, deletes), '
                  "sent without a bind"),
    ("Anonymous-Manual", 'security = "anonymous" where the server refuses updates: reads '
                         "anonymous, the entries written as LDIF"),
)
IN_FORCE = {"tls": "TLS", "basic": "Basic", "anonymous": "Anonymous"}


def statement(config: Config) -> str:
    d, n, t, dev = config.directory, config.network, config.time, config.device
    if not dev.name:  # lookups only: the same statement, of a device with no entries
        dev = replace(dev, name="(no [device]: lookups only)")
    titles = [ae.title or f"<{ae.title_template}: a title chosen at registration>"
              for ae in dev.aes]
    templated = [ae.title_template for ae in dev.aes if ae.title is None]
    hostnames = {c.name: c.hostname or "<DHCP/DDNS host name>.<domain>"
                 for c in dev.connections}
    entries = plan.device_entries("<DICOM Configuration root>",
                                  plan.with_marker(dev, "<32 hex digits>"), titles, hostnames)
    services = dnssd_io.services(dev, titles)
    mode = {"sntp": "SNTP Client (built in, RFC 4330); it adjusts the clock",
            "chrony": "NTP Client (chronyd, RFC 5905), servers handed over by the agent",
            "observe": "SNTP measurements only (observe): the clock is not maintained"}[t.mode]
    time_actor = {"sntp": "| Basic Time Synchronization (Annex G) | SNTP Client | yes |",
                  "chrony": "| Basic Time Synchronization (Annex G) | NTP Client | yes |",
                  "observe": "| Basic Time Synchronization (Annex G) | SNTP Client | no: "
                             "observe mode measures and reports, it does not perform Maintain "
                             "Time (mandatory, Table G.1-1) |"}[t.mode]
    out = [f"# PS3.15 system management conformance: device {dev.name}", "",
           "## Profiles and actors claimed (PS3.15 sections 6 and 7)", "",
           "| Profile | Actor | Claimed |", "|---|---|---|",
           "| Basic Network Address Management (Annex F) | DHCP Client | yes |",
           "| Basic Network Address Management (Annex F) | DNS Client | yes |",
           time_actor,
           "| Basic Time Synchronization (Annex G) | DHCP Client (Find NTP Servers) | yes |",
           "| Application Configuration Management (Annex H.1) | LDAP Client | "
           + ("yes" if d.enabled else "no (directory disabled)") + " |",
           "| DNS-SD service advertisement (Annex H.2) | advertiser and browser | "
           + ("yes" if services else "yes (browser only: no AE accepts associations)") + " |",
           "", "The agent runs the profiles in this order at boot: address, time, directory, "
           "announcement; a later step may complete before an earlier one. No server actor "
           "of these profiles is implemented.", "",
           "## DHCP client (PS3.15 F.1)", "",
           "Options requested (parameter request list, in this order): "
           + ", ".join(f"{c} ({OPTION_NAMES[c]})" for c in o.REQUESTED) + ".",
           "Absent options take the defaults of Table F.1-2; option 121 takes precedence over "
           "options 3 and 33 (RFC 3442).",
           f"Requested host name: {n.hostname or 'none'}"
           + ("; sent as options 12 and 81 with the S flag, so that the server coordinates DNS "
              "(F.1.5)." if n.hostname else "."),
           f"Auto-configuration (RFC 2563/3927): {'permitted' if n.auto_ip else 'not permitted'}."
           f" DHCPRELEASE on stop: {'yes' if n.release_on_stop else 'no'}."
           + (f" Servers accepted: {', '.join(n.server_allowlist)}." if n.server_allowlist
              else " Any server is accepted (the first acceptable offer)."), "",
           "## Time synchronization (PS3.15 G.1, G.1.5)", "",
           f"Mode: {mode}. Servers: NTP broadcasts heard "
           + ("(autodiscovery on)" if t.broadcast_discovery else "(autodiscovery off)")
           + ", else DHCP option 42, else "
           + (", ".join(t.servers) if t.servers else "no manual servers")
           + ", else the internal clock, reported as not synchronized."
           + (" The manual servers are also the backup (G.1.1.1): asked while no server "
              "of the source in force answers, dropped when one does"
              + (" (chrony: the discovered servers are `prefer`)" if t.mode == "chrony"
                 and not t.nts else "") + "." if t.servers else ""),
           "Secure transactions (G.1.3): " + (
               ("NTS (RFC 8915) through chronyd: a server whose NTS-KE certificate does not "
                "pass the agent's check is " + (
                    "used without NTS (nts_fallback = true: unauthenticated time is "
                    "accepted)." if t.nts_fallback else
                    "not used; with none left, time is reported unauthenticated "
                    "(no fallback to plain NTP).")) if t.nts else
               "none (NTP without authentication; [time] nts is off)." if t.mode == "chrony"
               else "not supported (SNTP has none)."),
           ("Clock corrections (sntp): a step only in the first "
            f"{t.step_updates} updates after start, slewing after; after the first sync a "
            f"correction over {t.step_limit_s:g} s needs three agreeing servers, and no step "
            "sets the clock before the agent's installation or its last saved report "
            "(an operator may accept a refused one); samples with a root distance over "
            "1.5 s are not used; request nonces are unpredictable (secrets)."
            if t.mode == "sntp" else "Clock corrections: " + (
                "chronyd's own policy (makestep, maxchange)." if t.mode == "chrony"
                else "none (observe).")),
           "This device is not an NTP server.",
           *(["Proven on a real machine (a Debian 12 VM booted with the package, its "
              "real-time clock five years ahead): the first update steps the clock, later "
              "ones slew (an independent client in the VM measures the lab server within "
              "0.2 ms a minute on); a server an hour off after the first sync is refused "
              "and reported, the clock kept; a reboot comes back the same way."]
             if t.mode == "sntp" else
             ["Proven on a real machine (a Debian 12 VM, its real-time clock five years "
              "ahead, after a power cut): the image's chronyd sets the clock from the "
              "servers the agent hands it (an independent client in the VM measures the "
              "lab server within 10 ms)."] if t.mode == "chrony" else []),
           f"UTC offset: option 101, else 100, else 2, else the preset {t.utc_offset} s; the "
           "system clock stays UTC. Local time: "
           + ("the lease's zone becomes the device's (option 101's zone, a zone following "
              "option 100's rule, option 2 in whole hours as Etc/GMT-N), proven in the VM "
              "with date." if t.applies_timezone else
              "not set by the agent ([time] set_timezone is off)."), "",
           "## LDAP client (PS3.15 F.1.8, H.1.4)", ""]
    if d.enabled:
        out += [f"Finding the server: DNS SRV _ldap._tcp.<{d.domain or 'DHCP domain'}> in RFC "
                "2782 order, then "
                + (", ".join(d.servers) if d.servers else "no manual servers") + ".",
                "Security patterns supported (H.1.7, Table H.1-15): every one of them:", ""]
        out += [f"- {name}: {how}." for name, how in PATTERNS]
        out += ["", f"In force with this configuration: {IN_FORCE[d.security]} (or "
                f"{IN_FORCE[d.security]}-Manual where the server refuses updates). Update "
                "LDAP Server (H.1.4.3): yes — "
                + {"anonymous": "adds, modifies and deletes are sent anonymously",
                   "basic": "as the bound account",
                   "tls": "as the authenticated identity"}[d.security] + ".",
                "Credentials (bind DN and password, or a client certificate) are sent "
                "only to servers named in the configuration or to SRV targets inside the "
                "configured domain"
                + (f" ({d.domain})" if d.domain else " (none configured: named servers only)")
                + ", over TLS checked against the configured CA; other servers are read "
                "anonymously. Referrals are not followed.",
                "Queries made: the root DSE's namingContexts; "
                "(objectClass=dicomConfigurationRoot) in each; the two roots below it; "
                "(&(objectClass=dicomDevice)(dicomSoftwareVersion=dicom-agent-id <id>)), "
                "else (&(objectClass=dicomDevice)(dicomDeviceName=<name>)), else by serial "
                "number; the Unique AE Titles Registry; "
                "(&(objectClass=dicomNetworkAE)(dicomAETitle=<title>)) for lookups and for "
                "other holders of this device's titles (every provider the SRV record "
                "names), with the device and the referenced connections read by DN; "
                "dicomApplicationCluster for application clusters.",
                "Remote AEs are selected by AE title (and by application cluster or primary "
                "device type); this device's Preferred Called AE Titles are looked up. "
                "Answers are cached and served, marked stale, when the directory cannot be "
                "reached (H.1.6).",
                "Maintain LDAP Server (H.1.4.4): when an update is refused, the device's "
                "entries are written as RFC 2849 LDIF to <state_dir>/manual/<device>.ldif "
                "on the device, and the directory is checked every "
                f"{d.refresh_interval:g} s until an administrator has loaded them. Transfer "
                "mechanism: SSH (scp or sftp from the device), or `dicom-agent ldif` run "
                "where the device's configuration is, its output loaded with ldapadd; "
                "`dicom-agent site ldif` prepares a whole fleet the same way.", ""]
        if templated:
            out += ["AE title creation (H.1.4.3.5): for an AE with a title template ("
                    + ", ".join(f"`{x}`" for x in templated) + "), the agent reads the Unique "
                    "AE Titles Registry, adds dicomAETitle=<the template's next free title> "
                    "under it, takes that title when the add succeeds and tries the next "
                    f"(up to {d.title_attempts}) when it exists already; the title is kept "
                    "for this device from then on.", ""]
        out += ["Operations the agent may issue:", "",
                "- add: the title reservation in the Unique AE Titles Registry, one per AE "
                "(objectClass dicomUniqueAETitle, dicomAETitle); the device, its "
                "connections, its AEs and their transfer capabilities, as listed below; the "
                "device's dicomSoftwareVersion carries its identity marker "
                "`dicom-agent-id <32 hex digits>` (stable for the device);",
                "- modify (replace): the attributes of those entries that differ from the "
                "configuration (a new host name, port, cipher suites, a changed title); "
                "dicomInstalled FALSE on an AE whose health check fails, and back (with "
                "health_updates_directory), and on the device (`dicom-agent directory "
                "unregister --keep-titles`);",
                "- delete: an AE or connection no longer configured (its transfer "
                "capabilities first) and its title reservation; an AE entry given way to "
                "another device that reserved the title first on another replica; what an "
                "interrupted registration had added (from its intent record); the whole "
                "device and its titles (`dicom-agent directory unregister`).", "",
                "Entries and attributes sent in adds (a title reservation per AE first):",
                "", "```"]
        for title in titles:
            if not title.startswith("<"):
                out.append(plan.title_dn("<DICOM Configuration root>", title))
                out.append("  objectClass: dicomUniqueAETitle")
                out.append(f"  dicomAETitle: {title}")
        for entry in entries:
            out.append(entry.dn)
            out += [f"  {k}: {', '.join(v if isinstance(v, str) else '<binary>' for v in vs)}"
                    for k, vs in entry.attributes.items()]
        out.append("```")
    else:
        out.append("The directory is disabled in this configuration.")
    out += ["", "## DNS-SD (PS3.15 H.2)", ""]
    if services:
        out += ["| Instance | Service type | Port | TXT |", "|---|---|---|---|"]
        out += [f"| {s.instance} | {s.type} | {s.port} | "
                + " ".join(f"{k}={v}" for k, v in s.txt.items()) + " |" for s in services]
    else:
        out.append("Nothing is advertised: no AE of this device accepts associations.")
    out += ["", "The agent also browses _dicom._tcp and _dicom-tls._tcp and offers what it "
            "sees to lookups that the directory cannot answer."]
    return "\n".join(out) + "\n"
