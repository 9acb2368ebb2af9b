"""AE health (issue 16): is an acceptor AE the agent advertises actually answering?

A C-ECHO (Verification SOP Class) from `[agent] health_calling_aet` to the AE's title on
the device's own address and the port of its first listening connection — over TLS when
that connection has TLS cipher suites, trusting the directory's `ca_file`. pynetdicom is
imported here only, and only when an AE has `health_check = true` (check-config says
when it is missing). Blocking: the daemon runs it in a thread, never on the event loop.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
TIMEOUT = 5.0  # s: connect, association, the C-ECHO each


@dataclass
class AeHealth:
    """The last health check of one AE title."""

    state: str = "unchecked"  # unchecked, up, down
    checked_at: float | None = None  # wall clock
    reason: str | None = None  # why down


def echo(calling: str, called: str, host: str, port: int, tls_hostname: str | None = None,
         ca_file: Path | None = None, timeout: float = TIMEOUT) -> str | None:
    """None when `called` at host:port accepted an association and answered a C-ECHO
    with Success; else why not."""
    from pynetdicom import AE  # only when a health check is configured

    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = None
    if tls_hostname is not None:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        tls_args = (context, tls_hostname)
    try:
        assoc = ae.associate(host, port, ae_title=called, tls_args=tls_args)
    except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    if not assoc.is_established:
        if assoc.is_rejected:
            return "association rejected"
        return "no association (nothing listening, or it did not answer)"
    try:
        status = assoc.send_c_echo()
        if status is None or "Status" not in status:
            return "no C-ECHO response"
        if int(status.Status) != 0:
            return f"C-ECHO status 0x{int(status.Status):04X}"
        return None
    finally:
        assoc.release()


def checked(health: AeHealth, problem: str | None, now: float | None = None) -> bool:
    """Record a check's outcome; True when the state changed."""
    new = "up" if problem is None else "down"
    changed = new != health.state
    health.state, health.reason = new, problem
    health.checked_at = time.time() if now is None else now
    return changed
