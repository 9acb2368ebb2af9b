"""Running the agent on a lab device, and reading what it prints."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

from device_toml import CT_IMAGE, device_toml

REPO = Path(__file__).resolve().parents[2]
AGENT = str(REPO / ".venv" / "bin" / "dicom-agent")
PYTHON = str(REPO / ".venv" / "bin" / "python")


def agent(device, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return device.run([AGENT, *args], timeout=timeout)


def dhcp_once(device, *extra: str, timeout: float = 90) -> dict:
    proc = agent(device, "dhcp", "--interface", "eth0", "--no-probe", "--initial-delay", "0",
                 "--once", "--json", *extra, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def read_line(proc: subprocess.Popen, timeout: float) -> dict | None:
    """The next JSON line the process prints, or None after `timeout` seconds (or at
    its end). Reads the raw descriptor into a buffer kept on the process, so a second
    line that arrived in the same read is not lost (select() on a buffered text pipe
    would not see it). Do not mix with proc.stdout.readline()."""
    fd = proc.stdout.fileno()
    buffer: bytearray = proc.__dict__.setdefault("_lines", bytearray())
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def wait_until(predicate, timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def pcap_records(path: Path) -> int:
    """How many packets a pcap file written so far holds (its record headers)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    count, pos = 0, 24
    while pos + 16 <= len(data):
        length = int.from_bytes(data[pos + 8: pos + 12], "little")
        if pos + 16 + length > len(data):
            break
        count, pos = count + 1, pos + 16 + length
    return count


def ip_json(device, *args: str) -> list:
    return json.loads(device.ip("-j", *args))


def write_config(device, network: str = "", agent_section: str = "",
                 time_section: str = 'mode = "observe"', directory: str = "",
                 device_section: str | None = None, name: str = "agent.toml",
                 state_dir: str | None = None) -> str:
    """A minimal valid configuration on the device's run dir; returns its path.
    `device_section` replaces the whole [device] part (tables included)."""
    path = device.run_dir / name
    path.write_text(f"""
[agent]
state_dir = "{state_dir or device.run_dir / 'agent-state'}"
runtime_dir = "{device.run_dir / 'agent-run'}"
{agent_section}

[network]
interface = "eth0"
{network}

[time]
{time_section}

[directory]
{directory}

{device_section or default_device(device.index)}
""")
    return str(path)


def default_device(index: int, name: str | None = None, title: str | None = None,
                   extra_connection: str = "") -> str:
    """A CT image SCU (no port unless `extra_connection` gives one)."""
    name = name or f"DEV{index}"
    return device_toml(name, title, port=None, role="SCU", sop_class=CT_IMAGE,
                       connection_extra=extra_connection)
