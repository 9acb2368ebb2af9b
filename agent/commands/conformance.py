"""`dicom-agent conformance --config FILE`: the PS3.2 conformance statement sections for
the PS3.15 system management profiles, written from the actual configuration."""

from __future__ import annotations

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
SECURITY = {
    "anonymous": ("anonymous access, no TLS", "no: updates are refused by a server that "
                  "protects them, and the device's entries are written as LDIF for manual "
                  "registration (the -Manual patterns of Table H.1-15)"),
    "basic": ("simple bind over an unencrypted connection (permitted by "
              "allow_cleartext_password)", "yes, as the bound account"),
    "tls": ("TLS (StartTLS on ldap://, implicit on ldaps://; server certificate and host "
            "name verified), then SASL EXTERNAL with a client certificate, else a simple "
            "bind, else anonymous over TLS", "yes, as the authenticated identity"),
}


def statement(config: Config) -> str:
    d, n, t, dev = config.directory, config.network, config.time, config.device
    titles = [ae.title or ae.title_template.format(n=1) for ae in dev.aes]
    hostnames = {c.name: c.hostname or "<DHCP/DDNS host name>.<domain>"
                 for c in dev.connections}
    entries = plan.device_entries("<DICOM Configuration root>", dev, titles, hostnames)
    services = dnssd_io.services(dev, titles)
    mode = {"sntp": "SNTP Client (built in, RFC 4330); it adjusts the clock",
            "chrony": "NTP Client (chronyd, RFC 5905), servers handed over by the agent",
            "observe": "SNTP Client that measures and reports only"}[t.mode]
    out = [f"# PS3.15 system management conformance: device {dev.name}", "",
           "## Profiles and actors claimed (PS3.15 sections 6 and 7)", "",
           "| Profile | Actor | Claimed |", "|---|---|---|",
           "| Basic Network Address Management (Annex F) | DHCP Client | yes |",
           "| Basic Network Address Management (Annex F) | DNS Client | yes |",
           f"| Basic Time Synchronization (Annex G) | {mode.split(' (')[0]} | yes |",
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
           + ", else the internal clock, reported as not synchronized.",
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
           f"UTC offset: option 101, else 100, else 2, else the preset {t.utc_offset} s; the "
           "system clock stays UTC.", "",
           "## LDAP client (PS3.15 F.1.8, H.1.4)", ""]
    if d.enabled:
        pattern, updates = SECURITY[d.security]
        out += [f"Finding the server: DNS SRV _ldap._tcp.<{d.domain or 'DHCP domain'}> in RFC "
                "2782 order, then "
                + (", ".join(d.servers) if d.servers else "no manual servers") + ".",
                f"Security: {pattern}. Update LDAP Server option: {updates}.",
                "Credentials (bind DN and password, or a client certificate) are sent "
                "only to servers named in the configuration or to SRV targets inside the "
                "configured domain"
                + (f" ({d.domain})" if d.domain else " (none configured: named servers only)")
                + ", over TLS checked against the configured CA; other servers are read "
                "anonymously. Referrals are not followed.",
                "Queries made: the root DSE's namingContexts; "
                "(objectClass=dicomConfigurationRoot) in each; the two roots below it; "
                "(&(objectClass=dicomDevice)(dicomDeviceName=<name>)) (else by serial "
                "number); the Unique AE Titles Registry; "
                "(&(objectClass=dicomNetworkAE)(dicomAETitle=<title>)) for lookups, with the "
                "device and the referenced connections read by DN; dicomApplicationCluster "
                "for application clusters.",
                "Remote AEs are selected by AE title (and by application cluster or primary "
                "device type); this device's Preferred Called AE Titles are looked up. "
                "Answers are cached and served, marked stale, when the directory cannot be "
                "reached (H.1.6).",
                "Manual update mechanism (H.1.4.4): when an update is refused the entries "
                "below are written as RFC 2849 LDIF for an administrator and the directory "
                f"is checked every {d.refresh_interval:g} s; `dicom-agent ldif` prints them.",
                "", "Entries and attributes sent in updates (a title reservation per AE "
                "first):", "", "```"]
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
