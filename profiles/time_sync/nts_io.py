"""NTS (RFC 8915) as PS3.15 G.1.3's secure time, through chronyd: which servers can be
told to use it.

chronyd authenticates a server by the TLS certificate of its NTS-KE service (TCP 4460)
against the name it was given. Servers learned from DHCP option 42 are addresses, so a
certificate must name the address (an IP subjectAltName) for NTS to work with them. Before
writing `nts` on a server's line, the agent makes the same check chronyd would — a
TLS 1.3 handshake with ALPN "ntske/1", the certificate verified against `nts_ca_file`
(else the system's trust store) and the server's name or address — so a server that
cannot pass is named with its reason, instead of a source chronyd would silently never
use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

NTS_KE_PORT = 4460  # RFC 8915 section 4
ALPN = "ntske/1"


def context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # RFC 8915 section 3: TLS 1.3 or later
    ctx.set_alpn_protocols([ALPN])
    return ctx


async def certificate_problem(server: str, ca_file: Path | None, port: int = NTS_KE_PORT,
                              timeout: float = 3.0) -> str | None:
    """None when `server`'s NTS-KE service presents a certificate chronyd would accept
    for that name or address; else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            server, port, ssl=context(ca_file), server_hostname=server), timeout)
    except ssl.SSLCertVerificationError as exc:
        return f"certificate not accepted: {exc.verify_message}"
    except ssl.SSLError as exc:
        return f"TLS: {exc.reason or exc}"
    except TimeoutError:
        return f"no NTS-KE answer on port {port} in {timeout} s"
    except OSError as exc:
        return f"no NTS-KE service on port {port}: {exc.strerror or exc}"
    try:
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if chosen != ALPN:
            return f"the server does not speak {ALPN} (ALPN {chosen!r})"
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def usable(servers: list[str], ca_file: Path | None) -> dict[str, str | None]:
    """Each server -> None (NTS will work) or the reason it will not, checked at once."""
    problems = await asyncio.gather(*(certificate_problem(s, ca_file) for s in servers))
    return dict(zip(servers, problems, strict=True))
