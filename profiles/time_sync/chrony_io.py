"""`time.mode = "chrony"`: hand the servers to a real chronyd, the distribution way.

The servers go to `<chrony_sourcedir>/<interface>.sources` (chronyd's `sourcedir`
directive reads it), then `chronyc reload sources` on the command socket; chronyd does
the rest — NTP proper, NTS where configured (PS3.15 G.1.3). What chronyd reports
(`chronyc -c tracking` and `sources`) becomes the status.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from profiles import statefile_io

# chronyc -c sources: the state column (RFC-less, chronyc(1)).
SOURCE_STATES = {"*": "selected", "+": "combined", "-": "not-combined", "?": "unusable",
                 "x": "falseticker", "~": "too-variable"}


class ChronyError(Exception):
    pass


def sources_text(servers: list[str], nts: frozenset[str] | set[str] = frozenset(),
                 backup: list[str] = ()) -> str:
    """The sources file; the servers in `nts` authenticated with NTS (G.1.3). With
    `backup` (the manual servers, G.1.1.1), the discovered servers are `prefer`: chronyd
    selects a backup server only while none of them is selectable."""
    lines = ["# written by dicom-agent: NTP servers from PS3.15 G.1.1 discovery"]
    extra = [b for b in backup if b not in servers]
    lines += [f"server {address} iburst" + (" prefer" if extra else "")
              + (" nts" if address in nts else "") for address in servers]
    if extra:
        lines.append("# the manual servers (G.1.1.1): a backup, selected only without the above")
    lines += [f"server {address} iburst" + (" nts" if address in nts else "")
              for address in extra]
    return "\n".join(lines) + "\n"


async def chronyc(socket: Path, *args: str, timeout: float = 5.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        "chronyc", "-h", str(socket), "-n", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ChronyError(f"chronyc {' '.join(args)}: no answer in {timeout} s") from None
    if proc.returncode != 0:
        raise ChronyError(f"chronyc {' '.join(args)}: {err.decode().strip() or out.decode()}")
    return out.decode()


async def hand_over(sourcedir: Path, interface: str, servers: list[str], socket: Path,
                    nts: frozenset[str] | set[str] = frozenset(),
                    backup: list[str] = ()) -> None:
    statefile_io.atomic_write(sourcedir / f"{interface}.sources",
                           sources_text(servers, nts, backup).encode())
    reply = await chronyc(socket, "reload", "sources")
    if "200 OK" not in reply:
        raise ChronyError(f"chronyc reload sources: {reply.strip()}")


def parse_tracking(csv: str) -> dict:
    """`chronyc -c tracking`: one CSV line, fields as chronyc(1) lists them."""
    f = csv.strip().split(",")
    if len(f) < 14:
        raise ChronyError(f"unexpected tracking output: {csv.strip()[:120]}")
    return {"reference": f[1], "stratum": int(f[2]), "offset_ms": float(f[4]) * 1000,
            "last_offset_ms": float(f[5]) * 1000, "rms_offset_ms": float(f[6]) * 1000,
            "frequency_ppm": float(f[7]), "root_delay_ms": float(f[10]) * 1000,
            "root_dispersion_ms": float(f[11]) * 1000, "leap": f[13]}


def parse_sources(csv: str) -> list[dict]:
    """`chronyc -c sources`: mode, state, address, stratum, poll, reach, last rx, offsets."""
    sources = []
    for line in csv.strip().splitlines():
        f = line.split(",")
        if len(f) < 10:
            continue
        sources.append({"address": f[2], "state": SOURCE_STATES.get(f[1], f[1]),
                        "stratum": int(f[3]), "poll": int(f[4]), "reach": int(f[5], 8),
                        "offset_ms": float(f[7]) * 1000, "error_ms": float(f[9]) * 1000})
    return sources


def parse_authdata(csv: str) -> dict[str, dict]:
    """`chronyc -c authdata`: per source its authentication mode, the NTS-KE attempts
    and NAKs, and the cookies held (a source has NTS working once it holds cookies)."""
    out = {}
    for line in csv.strip().splitlines():
        f = line.split(",")
        if len(f) < 10:
            continue
        try:
            out[f[0]] = {"mode": f[1], "ke_attempts": int(f[6]), "naks": int(f[7]),
                         "cookies": int(f[8])}
        except ValueError:
            continue
    return out


async def state(socket: Path, authdata: bool = False) -> dict:
    tracking = parse_tracking(await chronyc(socket, "-c", "tracking"))
    out = {"tracking": tracking, "sources": parse_sources(await chronyc(socket, "-c",
                                                                        "sources"))}
    if authdata:
        out["authdata"] = parse_authdata(await chronyc(socket, "-c", "authdata"))
    return out
