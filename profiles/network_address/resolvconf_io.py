"""DNS servers and search list applied to the device's own resolver (PS3.15 F.1.3.4: "The
DHCP client shall apply these parameters to the TCP/IP stack").

`<runtime_dir>/resolv.conf` is always written (the agent's record). Then, by mode:

- `auto`: systemd-resolved when it runs (per-link DNS and domains with `resolvectl`),
  else resolvconf(8) when installed (`resolvconf -a <if>.dhcp`), else /etc/resolv.conf
  itself — atomically by rename, or in place where the file is a bind mount (rename
  gives EBUSY there: containers, the lab). The file's previous contents are kept and put
  back when the lease is lost or the agent stops, as dhcpcd does;
- `file`: only `<runtime_dir>/resolv.conf`;
- `none`: nothing beyond that record either.

A failure to apply is logged and reported, never raised: the lease still stands.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from profiles import statefile_io

log = logging.getLogger(__name__)
ETC_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_SOCKET = Path("/run/systemd/resolve/io.systemd.Resolve")
MODES = ("auto", "file", "none")


def resolv_conf_text(servers: tuple[str, ...] | list[str], search: list[str]) -> bytes:
    lines = ["# written by dicom-agent from the DHCP lease; do not edit"]
    lines += [f"nameserver {server}" for server in list(servers)[:3]]
    if search:
        lines.append("search " + " ".join(search[:6]))
    return ("\n".join(lines) + "\n").encode()


@dataclass
class DnsApplier:
    """Hands the lease's DNS servers and search list to the system resolver."""

    mode: str
    interface: str
    record: Path  # <runtime_dir>/resolv.conf
    etc: Path = ETC_RESOLV_CONF
    how: str | None = None  # what `auto` chose: "resolved", "resolvconf" or "etc"
    _saved: bytes | None = field(default=None, repr=False)  # /etc/resolv.conf before us
    applied: bool = False
    failures: int = 0

    def _choose(self) -> str:
        if self.how is None:
            if RESOLVED_SOCKET.exists() and shutil.which("resolvectl"):
                self.how = "resolved"
            elif shutil.which("resolvconf"):
                self.how = "resolvconf"
            else:
                self.how = "etc"
        return self.how

    def apply(self, servers: tuple[str, ...], search: list[str]) -> None:
        text = resolv_conf_text(servers, search)
        try:
            if self.record.read_bytes() != text:
                statefile_io.atomic_write(self.record, text)
        except FileNotFoundError:
            statefile_io.atomic_write(self.record, text)
        if self.mode != "auto":
            return
        try:
            match self._choose():
                case "resolved":
                    self._run(["resolvectl", "dns", self.interface, *servers])
                    self._run(["resolvectl", "domain", self.interface, *search])
                case "resolvconf":
                    self._run(["resolvconf", "-a", f"{self.interface}.dhcp"], text)
                case _:
                    self._write_etc(text)
            self.applied = True
        except (OSError, subprocess.SubprocessError) as exc:
            self.failures += 1
            log.warning("DNS not applied to the system (%s): %s", self.how, exc)

    def withdraw(self) -> None:
        """The lease is gone (or the agent stops): take back what was applied."""
        try:
            statefile_io.atomic_write(self.record, resolv_conf_text((), []))
        except OSError as exc:
            log.warning("resolv.conf record not cleared: %s", exc)
        if self.mode != "auto" or not self.applied:
            return
        try:
            match self.how:
                case "resolved":
                    self._run(["resolvectl", "revert", self.interface])
                case "resolvconf":
                    self._run(["resolvconf", "-d", f"{self.interface}.dhcp"])
                case _:
                    if self._saved is not None:
                        self._put(self._saved)
            self.applied = False
        except (OSError, subprocess.SubprocessError) as exc:
            self.failures += 1
            log.warning("DNS not withdrawn from the system (%s): %s", self.how, exc)

    def _write_etc(self, text: bytes) -> None:
        if self._saved is None:
            try:
                current = self.etc.read_bytes()
            except FileNotFoundError:
                current = b""
            if not current.startswith(b"# written by dicom-agent"):
                self._saved = current  # someone else's: put back when we are done
        try:
            if self.etc.read_bytes() == text:
                return
        except FileNotFoundError:
            pass
        self._put(text)

    def _put(self, text: bytes) -> None:
        try:
            statefile_io.atomic_write(self.etc, text)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EROFS):
                raise  # EBUSY: a bind mount; EROFS: /etc read-only but the file writable
            # A bind-mounted file cannot be replaced by rename: write it in place.
            fd = os.open(self.etc, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, text)
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _run(argv: list[str], stdin: bytes | None = None) -> None:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=10)
        if done.returncode != 0:
            raise OSError(f"{argv[0]} exited {done.returncode}: "
                          f"{done.stderr.decode(errors='replace').strip()[:200]}")
