"""Readable forms of a status snapshot and of a lookup answer, for the CLI."""

from __future__ import annotations


def lookup_text(a: dict) -> str:
    if not a.get("found"):
        return f"{a.get('aet')}: not found"
    head = (f"{a['aet']}: device {a.get('device') or '-'}, "
            f"{'installed' if a.get('installed') else 'NOT installed'}, from {a['source']}"
            + (" (stale)" if a.get("stale") else ""))
    conns = [f"  {c['hostname']}:{c['port'] if c['port'] is not None else '-'}"
             + (" TLS" if c.get("tls_cipher_suites") else "") for c in a["connections"]]
    return "\n".join([head, *conns])


def summary(s: dict) -> str:
    n, t, d = s["network"], s["time"], s["directory"]
    lines = [f"state: {s['state']}"
             + (f" (degraded: {', '.join(s['degraded'])})" if s["degraded"] else "")]
    if n.get("address"):
        lines.append(f"address: {n['address']}/{n.get('prefix')} on {n['interface']} "
                     f"({n['state']}"
                     + (f", lease {n['lease_expires_in']:.0f} s left" if "lease_expires_in"
                        in n else "") + ")"
                     + (f", name {n['fqdn']}" if n.get("fqdn") else ""))
    else:
        lines.append(f"address: none yet on {n['interface']} ({n['state']})")
    offset = "-" if t.get("offset_ms") is None else f"{t['offset_ms']:+.3f} ms"
    lines.append(f"time: {t['mode']}, source {t.get('source') or '-'}, selected "
                 f"{t.get('selected') or '-'}, offset {offset}, "
                 f"{'synchronized' if t.get('synced') else 'not synchronized'}, "
                 f"UTC offset {t.get('utc_offset_s', 0):+d} s")
    lines.append(f"directory: {d['state']}" + (f" at {d['server']}" if d.get("server") else "")
                 + (f", titles {', '.join(d['ae_titles'])}" if d.get("ae_titles") else ""))
    services = s["dnssd"]["services"]
    lines.append("dns-sd: " + (", ".join(f"{x['name']} port {x['port']}" for x in services)
                               or "nothing advertised"))
    return "\n".join(lines)
