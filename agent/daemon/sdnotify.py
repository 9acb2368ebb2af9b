"""systemd's notify protocol (sd_notify(3)) with a plain datagram socket: READY=1,
STATUS=..., WATCHDOG=1. Without NOTIFY_SOCKET (not under systemd) it does nothing."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # Ping at half the watchdog interval, when the watchdog is meant for us.
        self.watchdog_interval = (int(usec) / 2e6 if usec.isdigit() and int(usec) > 0
                                  and (not pid or pid == str(os.getpid())) else None)

    def send(self, **fields: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(message, self.address)
            except OSError:
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready="1", status=status)

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog="1")
