"""A replication partition and its healing, for the test and for `make bench`.

Two providers with replication cut; two devices, each cut off from the other provider
(a blackhole route: the registration's replica check cannot reach it), run the agent with
one AE title template and register the same first title, each on its own provider.
Replication is restored; `heal` measures how long until every provider holds each title
once and the two agents report different titles."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

from device_toml import device_toml
from lab import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    DOMAIN,
    PROVIDER_ADDRESSES,
    REGISTRAR_DN,
    Device,
    Lab,
    LabError,
)

AGENT = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "dicom-agent")
DEVICES = f"cn=Devices,cn=DICOM Configuration,{BASE_DN}"
REGISTRY = f"cn=Unique AE Titles Registry,cn=DICOM Configuration,{BASE_DN}"


def config(lab: Lab, dev: Device, name: str, template: str, provider: int) -> Path:
    """The agent's configuration for `dev` as device `name`, whose directory record says
    provider `provider` (1 or 2) answered last."""
    state = dev.run_dir / f"state-{name}"
    state.mkdir(exist_ok=True)
    (state / "directory.json").write_text(json.dumps({
        "server": f"ldap://ldap{provider}.{DOMAIN}:389", "base_dn": None,
        "device_dn": None, "titles": []}))
    secret = dev.run_dir / "registrar.pw"
    secret.write_text("registrarpw\n")
    secret.chmod(0o600)
    path = dev.run_dir / f"{name}.toml"
    path.write_text(f"""
[agent]
state_dir = "{state}"
runtime_dir = "{dev.run_dir / f'run-{name}'}"
[network]
interface = "eth0"
hostname = "{name.lower()}"
arp_probe = false
initial_delay = [0.0, 0.0]
[time]
mode = "observe"
[directory]
domain = "{DOMAIN}"
security = "tls"
ca_file = "{lab.run / 'tls' / 'ca.pem'}"
bind_dn = "{REGISTRAR_DN}"
password_file = "{secret}"
{device_toml(name, template)}""")
    return path


def status(dev: Device, name: str) -> dict:
    sock = dev.run_dir / f"run-{name}" / "status.sock"
    proc = subprocess.run([AGENT, "status", "--json", "--socket", str(sock)],
                          capture_output=True, text=True, timeout=10)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def holders(lab: Lab, address: str, title: str) -> list[str]:
    """The DNs of AE entries with `title` on one provider."""
    out = lab.srv_exec(["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H",
                        f"ldap://{address}", "-b", DEVICES,
                        f"(&(objectClass=dicomNetworkAE)(dicomAETitle={title}))", "dn"]).stdout
    return [x[4:] for x in out.splitlines() if x.startswith("dn: ")]


def until(predicate, timeout: float, step: float = 0.5) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


class Partition:
    """The scenario on `lab` (replicated layout, providers started) with two devices."""

    def __init__(self, lab: Lab, devices: tuple[Device, Device], tag: str):
        self.lab, self.devices = lab, devices
        self.names = [f"PT{tag}A", f"PT{tag}B"]
        self.template = f"PT{tag}_{{n}}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Partition:
        lab = self.lab
        lab.cut_replication(1)
        lab.cut_replication(2)
        for i, (dev, name) in enumerate(zip(self.devices, self.names, strict=True)):
            other = PROVIDER_ADDRESSES[1 - i]  # device A only reaches ldap1, B only ldap2
            dev.ip("route", "add", "blackhole", f"{other}/32")
            path = config(lab, dev, name, self.template, i + 1)
            self.procs.append(dev.popen([AGENT, "run", "--config", str(path)],
                                        stdout=subprocess.DEVNULL))
        return self

    def titles(self) -> list[list[str]]:
        return [status(dev, name).get("directory", {}).get("ae_titles", [])
                for dev, name in zip(self.devices, self.names, strict=True)]

    def registered_twice(self, timeout: float = 60) -> str:
        """Both agents registered, holding the same first title: that title."""
        first = self.template.format(n=1)
        took = until(lambda: self.titles() == [[first], [first]], timeout)
        if took is None:
            raise AssertionError(f"not both on {first}: {self.titles()}")
        return first

    def healed(self, title: str) -> bool:
        """Each provider holds `title` once and the agents report different titles."""
        a, b = self.titles()
        return bool(a and b and a != b) and all(
            len(holders(self.lab, address, title)) == 1 for address in PROVIDER_ADDRESSES[:2])

    def heal(self, title: str, timeout: float = 120) -> float | None:
        """Restore replication; seconds until healed (None: not within `timeout`)."""
        self.lab.restore_replication(1)
        self.lab.restore_replication(2)
        return until(lambda: self.healed(title), timeout)

    def __exit__(self, *exc: object) -> None:
        lab = self.lab
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for i, dev in enumerate(self.devices):
            with contextlib.suppress(LabError):
                dev.ip("route", "del", "blackhole", f"{PROVIDER_ADDRESSES[1 - i]}/32")
        lab.restore_replication(1)
        lab.restore_replication(2)
        admin = ["-x", "-H", f"ldap://{PROVIDER_ADDRESSES[0]}", "-D", ADMIN_DN,
                 "-w", ADMIN_PASSWORD]
        for name in self.names:
            lab.srv_exec(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES}"])
        for n in (1, 2, 3):
            lab.srv_exec(["ldapdelete", *admin,
                          f"dicomAETitle={self.template.format(n=n)},{REGISTRY}"])


SEARCHES = r'''
import sys, time
from ldap3 import Connection, Server
conn = Connection(Server(sys.argv[1]), auto_bind=True)
base, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    conn.search(base, f"(&(objectClass=dicomNetworkAE)(dicomAETitle=PTCOST_{i % 50}))",
                attributes=["dicomAETitle", "entryCSN"])
print("ok")
'''


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def search_cost(lab: Lab, dev: Device, n: int = 3000) -> float:
    """slapd's CPU seconds per title-check search (the agent's: objectClass and
    dicomAETitle equality under cn=Devices, two attributes), over one connection."""
    python = str(Path(AGENT).with_name("python"))
    pid = lab.provider_pid(1)
    before = _cpu(pid)
    done = dev.run([python, "-c", SEARCHES, f"ldap://{PROVIDER_ADDRESSES[0]}", DEVICES,
                    str(n)], timeout=300)
    if done.returncode != 0:
        raise LabError(f"searches failed: {done.stderr[-500:]}")
    return (_cpu(pid) - before) / n


def bench(lab: Lab) -> dict:
    """make bench: the heal time of one partition (two devices), and slapd's cost of the
    periodic title check for a site of 10,000 devices with two titles each."""
    a, b = lab.add_device(), lab.add_device()
    try:
        with Partition(lab, (a, b), "B") as part:
            title = part.registered_twice()
            healed = part.heal(title, timeout=400)
        per_search = search_cost(lab, a)
    finally:
        lab.remove_device(a)
        lab.remove_device(b)
    site_rate = 10_000 * 2 / 30.0  # searches per second, all providers together
    return {"heal_s": healed, "search_cpu_ms": per_search * 1000,
            "site_searches_per_s": site_rate,
            "provider_cpu_share": per_search * site_rate / 2}  # of one core, two providers
