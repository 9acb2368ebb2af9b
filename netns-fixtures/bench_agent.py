"""The agent half of `make bench`: process start -> `ready`, and what it costs at rest.

Boots `dicom-agent run` (archive example: two acceptor AEs, so DNS-SD probing is on the
path; ARP probe off, no initial delay) on fresh devices, polling the status socket to
time each boot state; then one agent idles for BENCH_IDLE seconds (300 by default) and
its RSS and the CPU time it used meanwhile are read from /proc. Every boot is a first
registration: the device's entry and titles are deleted after each (a fresh device of the
same name would otherwise meet the last one's entry and stop at `conflict`, cheaper).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

from lab import REGISTRAR_DN, Device, Lab

HERE = Path(__file__).resolve().parent
AGENT = str(HERE.parent / ".venv" / "bin" / "dicom-agent")
PYTHON = str(HERE.parent / ".venv" / "bin" / "python")
# What every boot of the benchmark configuration must import besides the agent's own code.
LIBRARIES = "asyncio, ssl, json, logging, argparse, tomllib, ldap3, zeroconf.asyncio"
IDLE = float(os.environ.get("BENCH_IDLE", "300"))
TICK = os.sysconf("SC_CLK_TCK")


def config(lab: Lab, dev: Device) -> Path:
    secret = dev.run_dir / "registrar.pw"
    secret.write_text("registrarpw\n")
    secret.chmod(0o600)
    text = (HERE.parent / "agent" / "examples" / "archive.toml").read_text()
    text = text.replace('hostname = "archive2"', 'hostname = "archive2"\narp_probe = false\n'
                        "initial_delay = [0.0, 0.0]")
    text = text.replace('[directory]\nsecurity = "anonymous"',
                        f'[directory]\nsecurity = "tls"\ndomain = "hospital.test"\n'
                        f'ca_file = "{lab.run / "tls/ca.pem"}"\n'
                        f'bind_dn = "{REGISTRAR_DN}"\npassword_file = "{secret}"')
    path = dev.run_dir / "bench.toml"
    path.write_text(f'[agent]\nstate_dir = "{dev.run_dir / "agent-state"}"\n'
                    f'runtime_dir = "{dev.run_dir / "agent-run"}"\n\n' + text)
    return path


def status(sock: Path) -> dict | None:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b'{"v":1,"op":"status"}\n')
            return json.loads(s.makefile().readline())
    except (OSError, ValueError):
        return None


def boot(lab: Lab, dev: Device) -> tuple[subprocess.Popen, dict[str, float]]:
    """Start the agent; the time (s) each boot state was first seen, until `ready`, and
    under "directory:<state>" the directory's state at `ready`. One `watch` subscription
    (a snapshot per change), not polling: a poll every few ms would be CPU the agent
    spends answering the bench."""
    sock = dev.run_dir / "agent-run" / "status.sock"
    t0 = time.perf_counter()
    proc = dev.popen([AGENT, "run", "--config", str(config(lab, dev))],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[str, float] = {}
    while time.perf_counter() - t0 < 60:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.settimeout(60)
                s.sendall(b'{"v":1,"op":"watch"}\n')
                for line in s.makefile():
                    snap = json.loads(line)
                    seen.setdefault(snap["state"], time.perf_counter() - t0)
                    if snap["state"] == "ready":
                        seen["directory:" + snap["directory"]["state"]] = seen["ready"]
                        return proc, seen
        except (OSError, ValueError):
            time.sleep(0.005)  # not listening yet
    raise RuntimeError(f"no ready in 60 s: {seen}")


def forget(lab: Lab) -> None:
    """The archive's entry and titles out of the directory: the next boot registers anew."""
    lab.unregister(["ARCHIVE2"], ["ARCHIVE2_STORE", "ARCHIVE2_QR"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def import_cpu(statement: str, reps: int) -> float:
    """CPU (user+sys, s) of a fresh interpreter of the agent's venv up to the end of
    `statement`, median of `reps`: the anchors beside CPU to ready, from the same run."""
    code = f"import time\n{statement}\nprint(time.process_time())"
    return statistics.median(float(subprocess.run([PYTHON, "-c", code], capture_output=True,
                                                  text=True, check=True).stdout)
                             for _ in range(reps))


def agent_bench(lab: Lab, reps: int) -> dict:
    readies, phases, cpus, directory = [], {}, [], {}
    for _ in range(reps):
        dev = lab.add_device()
        proc, seen = boot(lab, dev)
        cpus.append(cpu_seconds(proc.pid))  # user+sys of the agent at ready (issue 18)
        readies.append(seen["ready"])
        for state, at in seen.items():
            if state.startswith("directory:"):
                directory[state[10:]] = directory.get(state[10:], 0) + 1
            else:
                phases.setdefault(state, []).append(at)
        proc.terminate()
        proc.wait(30)
        lab.remove_device(dev)
        forget(lab)
    dev = lab.add_device()
    proc, _ = boot(lab, dev)
    time.sleep(5)  # let the first announcements and rounds settle
    cpu0 = cpu_seconds(proc.pid)
    time.sleep(IDLE)
    idle = {"rss_mib": rss_mib(proc.pid), "cpu_s": cpu_seconds(proc.pid) - cpu0}
    proc.terminate()
    proc.wait(30)
    lab.remove_device(dev)
    anchors = {"interpreter_s": import_cpu("pass", reps),
               "libraries_s": import_cpu(f"import {LIBRARIES}", reps)}
    return {"ready_s": statistics.median(readies), "cpu_ready_s": statistics.median(cpus),
            "directory_at_ready": directory, **anchors,
            "first_seen": {k: statistics.median(v) for k, v in phases.items()}, **idle}
