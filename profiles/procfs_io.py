"""This machine's processes, read from /proc: what the clock guards (another NTP client)
and the address task (another DHCP client or network manager) look for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def processes(proc: Path = Path("/proc")) -> Iterator[tuple[str, str]]:
    """(pid, command name) of every process that can still be read. Plain open(), not
    Path: this runs over every process of the machine."""
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/comm", "rb") as fh:
                yield pid, fh.read().strip().decode(errors="replace")
        except OSError:
            continue
