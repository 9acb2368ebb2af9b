"""A small hospital network made of Linux network namespaces, with real servers in it.

Theory of operation
-------------------
Everything lives in namespaces named `<prefix>-*`; the machine's own namespace gets no
interface, address or route, so no lab packet can leave the machine.

    <prefix>-sw   bridge br0 (STP off, multicast snooping off, no address)
    <prefix>-srv  eth0 192.0.2.1/24 (DHCP, DNS, LDAP), 192.0.2.2 (ldap-backup: nothing
                  listens, for failover), 192.0.2.11-13 (three chronyd NTP servers);
                  lo 198.51.100.1/24, the routed remote network (pacs1 = .10)
    <prefix>-devN eth0 up with no address, MAC 02:dc:00:00:00:NN

One DHCP flavour per lab (both want ports 53 and 67): `dnsmasq` (DHCP + DNS) or `kea`
(Kea DHCPv4 + kea-dhcp-ddns + BIND 9 taking TSIG-signed RFC 2136 updates). Two labs with
different prefixes are independent (their own namespaces), so the tests run a dnsmasq lab
and a Kea lab side by side.

Every server runs inside the server namespace under `ip netns exec`; its log goes to
`<run>/logs/NAME.log`. Tear-down never trusts a PID file: it ends the processes that
`ip netns pids` finds in the lab's own namespaces (all of them ours), then deletes the
namespaces, so it also cleans up after a crashed run (`lab.py down --all`).

Commands run "on a device" through `Device.run`/`Device.popen`: the device's network
namespace plus private mount and UTS namespaces, with /etc/resolv.conf and the stock DHCP
clients' lease directories bind-mounted from the device's run directory, so nothing a
client writes reaches the machine's own files and a hostname set there stays there.

Standard library only: the Makefile runs this with the system Python.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONF = HERE / "conf"
REPO = HERE.parent
SCHEMA_LDIF = REPO / "profiles" / "app_config" / "schema" / "dicom.ldif"
RUN_ROOT = Path("/run/dicom-agent-lab")

DOMAIN = "hospital.test"
SERVER_ADDRESS = "192.0.2.1"
LDAP_BACKUP_ADDRESS = "192.0.2.2"  # nothing listens here: failover target
# The replicated directory (issue 14): providers ldap1, ldap2... in their own namespaces.
PROVIDER_ADDRESSES = ("192.0.2.251", "192.0.2.252", "192.0.2.253")  # clear of 20+index
NTP_ADDRESSES = ("192.0.2.11", "192.0.2.12", "192.0.2.13")
REMOTE_NET = "198.51.100.0/24"
PACS_ADDRESS = "198.51.100.10"
BASE_DN = "dc=hospital,dc=test"
CONFIG_ROOT_DN = f"cn=DICOM Configuration,{BASE_DN}"
DEVICES_DN = f"cn=Devices,{CONFIG_ROOT_DN}"
REGISTRY_DN = f"cn=Unique AE Titles Registry,{CONFIG_ROOT_DN}"
REGISTRAR_DN = f"cn=dicom-registrar,{BASE_DN}"
REGISTRAR_PASSWORD = "registrarpw"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "adminpw"

# A records served in both flavours (name -> address); PTRs follow for 192.0.2.0/24.
HOSTS = {
    "dhcp": SERVER_ADDRESS,
    "ldap": SERVER_ADDRESS,
    "ldap-backup": LDAP_BACKUP_ADDRESS,
    "ldap-alias": SERVER_ADDRESS,  # a name the LDAP certificate does not carry
    "ntp1": NTP_ADDRESSES[0],
    "ntp2": NTP_ADDRESSES[1],
    "ntp3": NTP_ADDRESSES[2],
    "pacs1": PACS_ADDRESS,
    **{f"ldap{i}": a for i, a in enumerate(PROVIDER_ADDRESSES, 1)},
    # Addresses nobody holds: a connection gets no ARP answer, let alone a SYN-ACK.
    **{f"ldap-silent{i}": f"192.0.2.{240 + i}" for i in (1, 2, 3)},
}
# SRV layouts for _ldap._tcp (PS3.15 H.1.4.1): (priority, weight, port, target).
SRV_LAYOUTS = {
    "live-first": [(0, 100, 389, "ldap"), (10, 100, 389, "ldap-backup")],
    "dead-first": [(0, 100, 389, "ldap-backup"), (10, 100, 389, "ldap")],
    # Three priority-0 targets that never answer before the live one (weight 0: drawn
    # last but for a 1-in-301 chance, RFC 2782).
    "silent-first": [(0, 100, 389, "ldap-silent1"), (0, 100, 389, "ldap-silent2"),
                     (0, 100, 389, "ldap-silent3"), (0, 0, 389, "ldap")],
    # The live server alone (the site survey's clean lab: every target answers).
    "live-only": [(0, 100, 389, "ldap")],
    # The replicated providers (start_replicated), equal priority and weight (issue 14).
    "replicated": [(0, 50, 389, "ldap1"), (0, 50, 389, "ldap2")],
}
FLAVOURS = ("dnsmasq", "kea")
# Directories the agent uses by default, replaced on a device by its own (run dir subdir).
DEVICE_PRIVATE_DIRS = (("agent-run", "/run/dicom-agent"), ("agent-state", "/var/lib/dicom-agent"),
                       ("agent-etc", "/etc/dicom-agent"), ("chrony-dhcp", "/run/chrony-dhcp"))


class LabError(RuntimeError):
    """The lab could not be built or a server did not come up (the message has its log)."""


def _run(argv: list[str], check: bool = True, timeout: float = 30,
         **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _template(name: str, **values: object) -> str:
    return string.Template((CONF / name).read_text()).substitute(
        {k: str(v) for k, v in values.items()}
    )


def list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def destroy_namespaces(names: list[str], grace: float = 3.0) -> None:
    """End every process in these namespaces (TERM, then KILL after `grace`), delete them."""
    pids = [pid for ns in names for pid in _pids_in(ns)]
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        pids = [pid for ns in names for pid in _pids_in(ns)]
        if not pids:
            break
        time.sleep(0.05)
    else:
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.1)
    for ns in names:
        _run(["ip", "netns", "del", ns], check=False)


def down_prefix(prefix: str) -> list[str]:
    """Tear down every namespace of the lab `prefix` (what a crashed run left included)."""
    names = [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    destroy_namespaces(names)
    return names


def all_lab_prefixes() -> list[str]:
    """Prefixes of labs present now: namespaces named dcm*-(sw|srv|devN)."""
    prefixes = set()
    for ns in list_namespaces():
        head, _, tail = ns.rpartition("-")
        if head.startswith("dcm") and (tail in ("sw", "srv") or tail.startswith("dev")):
            prefixes.add(head)
    return sorted(prefixes)


@dataclass
class Device:
    """A device namespace: eth0 on the lab bridge, no address until something asks DHCP."""

    lab: Lab
    index: int
    ns: str
    mac: str
    run_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return f"dev{self.index}"

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run in this device's network, mount and UTS namespaces."""
        mounts = [(self.run_dir / "resolv.conf", "/etc/resolv.conf")]
        for sub, target in (("dhcpcd", "/var/lib/dhcpcd"), ("dhclient", "/var/lib/dhcp")):
            if os.path.isdir(target):
                mounts.append((self.run_dir / sub, target))
        # The agent's default directories: what it writes there stays on the device.
        mounts += [(self.run_dir / sub, target) for sub, target in DEVICE_PRIVATE_DIRS]
        # Each device its own machine ID, as real machines have (identifiers the agent
        # derives from it when it cannot save them must differ between devices).
        if os.path.isfile("/etc/machine-id") and (self.run_dir / "machine-id").is_file():
            mounts.append((self.run_dir / "machine-id", "/etc/machine-id"))
        script = "set -e; "  # ${N}: positional parameters past 9 need the braces
        for i, (_, target) in enumerate(mounts):
            if target not in ("/etc/resolv.conf", "/etc/machine-id"):
                script += f'mkdir -p "${{{2 * i + 2}}}"; '
            script += f'mount --bind "${{{2 * i + 1}}}" "${{{2 * i + 2}}}"; '
        n = 2 * len(mounts) + 1
        script += f'hostname "${{{n}}}"; shift {n}; exec "$@"'
        args = [str(a) for pair in mounts for a in pair] + [self.hostname]
        return ["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts",
                "--propagation", "private", "sh", "-c", script, "device-shell", *args, *argv]

    def run(self, argv: list[str], timeout: float = 60, check: bool = False,
            env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(argv), capture_output=True, text=True, timeout=timeout,
                              check=check, env=env, input=input)

    def popen(self, argv: list[str], env: dict[str, str] | None = None,
              **kw) -> subprocess.Popen:
        """Start a long-running command on the device; ended by stop() or the lab's tear-down."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.wrap(argv), env=env, text=True, start_new_session=True, **kw)
        self.processes.append(proc)
        return proc

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.ns, *args]).stdout

    @property
    def static_address(self) -> str:
        """The address `configure_static` gives: outside the DHCP pool (100-199)."""
        return f"192.0.2.{20 + self.index % 80}"

    def configure_static(self) -> str:
        """Give eth0 its static address and a default route, for tests that need no DHCP."""
        self.ip("addr", "replace", f"{self.static_address}/24", "dev", "eth0")
        self.ip("route", "replace", "default", "via", SERVER_ADDRESS)
        (self.run_dir / "resolv.conf").write_text(f"nameserver {SERVER_ADDRESS}\nsearch {DOMAIN}\n")
        return self.static_address

    def start_chronyd(self, nts_ca: Path | None = None) -> tuple[Path, Path]:
        """A chronyd client on this device (-x: never touches the clock) reading servers
        from a sourcedir; returns (sourcedir, command socket). `nts_ca`: the CA it trusts
        for NTS (chronyd reads trust anchors only from its configuration)."""
        sourcedir, sockdir = self.run_dir / "chrony-dhcp", self.run_dir / "chronyd"
        sockdir.mkdir(mode=0o700, exist_ok=True)  # else chronyd has no command socket
        conf = self.run_dir / "chrony-client.conf"
        conf.write_text(f"sourcedir {sourcedir}\ncmdport 0\n"
                        f"bindcmdaddress {sockdir}/chronyd.sock\n"
                        f"pidfile {sockdir}/chronyd.pid\nuser root\n"
                        + (f"ntstrustedcerts {nts_ca}\nntsdumpdir {sockdir}\n" if nts_ca
                           else ""))
        proc = self.popen(["chronyd", "-x", "-d", "-f", str(conf)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (sockdir / "chronyd.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError("chronyd client did not start")
            time.sleep(0.02)
        return sourcedir, sockdir / "chronyd.sock"

    def addresses(self) -> list[str]:
        """IPv4 addresses on eth0 as 'a.b.c.d/len'."""
        data = json.loads(self.ip("-j", "-4", "addr", "show", "dev", "eth0"))
        return [f"{a['local']}/{a['prefixlen']}" for i in data for a in i.get("addr_info", [])]

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(3)
        self.processes.clear()


class Lab:
    """The lab: build it with up(), remove it with down() (safe to call twice)."""

    def __init__(self, prefix: str = "dcm", flavour: str = "dnsmasq",
                 srv_layout: str = "live-first", devices: int = 3,
                 lease_time: int | None = None, run_dir: Path | None = None):
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
        if srv_layout not in SRV_LAYOUTS:
            raise ValueError(f"srv_layout must be one of {sorted(SRV_LAYOUTS)}")
        self.prefix = prefix
        self.flavour = flavour
        self._device_options: dict[str, dict[int, str]] = {}  # device_options, by MAC
        self._dnsmasq_loaded: list[str] = []  # load_dnsmasq's lines
        self.srv_layout = srv_layout
        self.initial_devices = devices
        # dnsmasq's minimum lease is 120 s; Kea takes 20 s (short leases for renewal tests).
        self.lease_time = lease_time or (120 if flavour == "dnsmasq" else 20)
        self.run = run_dir or RUN_ROOT / prefix
        self.switch = f"{prefix}-sw"
        self.server = f"{prefix}-srv"
        self.devices: dict[int, Device] = {}
        self.tsig_secret = ""
        self.timings: dict[str, float] = {}
        self._procs: list[subprocess.Popen] = []
        self._next_index = 9

    # -- building ---------------------------------------------------------------------

    def up(self) -> Lab:
        t0 = time.monotonic()
        down_prefix(self.prefix)  # whatever a crashed run with this prefix left
        if self.run.exists():
            shutil.rmtree(self.run)
        for sub in ("logs", "pids"):
            (self.run / sub).mkdir(parents=True)
        try:
            self._topology()
            self._tls()
            self._start_ntp()
            self._start_ldap()
            if self.flavour == "dnsmasq":
                self._start_dnsmasq()
            else:
                self._start_kea()
            for n in range(1, self.initial_devices + 1):
                self.add_device(n)
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def down(self) -> None:
        for dev in list(self.devices.values()):
            dev.stop()
        self.devices.clear()
        down_prefix(self.prefix)
        for proc in self._procs:  # reap them: down_prefix already ended them by PID
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        self._procs.clear()

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _topology(self) -> None:
        sw, srv = self.switch, self.server
        for ns in (sw, srv):
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge",
              "stp_state", "0", "mcast_snooping", "0"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        self._plug(srv, "p-srv", "02:dc:00:00:01:01")
        for addr in (SERVER_ADDRESS, LDAP_BACKUP_ADDRESS, *NTP_ADDRESSES):
            _run(["ip", "-n", srv, "addr", "add", f"{addr}/24", "dev", "eth0"])
        # The routed remote network sits on the server's loopback (no dummy module here):
        # devices reach it through the route DHCP gives them (option 121).
        _run(["ip", "-n", srv, "addr", "add", "198.51.100.1/24", "dev", "lo"])
        _run(["ip", "-n", srv, "addr", "add", f"{PACS_ADDRESS}/24", "dev", "lo"])
        # Multicast leaves by the lab link (NTP servers announce to 224.0.1.1, G.1.1.1).
        _run(["ip", "-n", srv, "route", "add", "224.0.0.0/4", "dev", "eth0"])

    def _plug(self, ns: str, port: str, mac: str) -> None:
        """A veth from the bridge to `ns`, named eth0 there."""
        _run(["ip", "-n", self.switch, "link", "add", port, "type", "veth",
              "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
        _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def add_device(self, index: int | None = None) -> Device:
        """A new device namespace on the bridge (index: next free one when None)."""
        if index is None:
            # Never reuse an index in one lab: a new device is a new MAC to the servers.
            index = self._next_index = max(self._next_index, *self.devices, 9) + 1
        if index in self.devices or not 1 <= index <= 250:
            raise ValueError(f"device index {index} is taken or out of range")
        ns = f"{self.prefix}-dev{index}"
        mac = f"02:dc:00:00:00:{index:02x}"
        run_dir = self.run / f"dev{index}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        for sub in ("dhcpcd", "dhclient", "state", *(d for d, _ in DEVICE_PRIVATE_DIRS)):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        (run_dir / "resolv.conf").write_text("")
        (run_dir / "machine-id").write_text(secrets.token_hex(16) + "\n")
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._plug(ns, f"p-dev{index}", mac)
        dev = Device(self, index, ns, mac, run_dir)
        self.devices[index] = dev
        return dev

    def remove_device(self, dev: Device) -> None:
        dev.stop()
        self.devices.pop(dev.index, None)
        destroy_namespaces([dev.ns])
        _run(["ip", "-n", self.switch, "link", "del", f"p-dev{dev.index}"], check=False)

    # -- servers ----------------------------------------------------------------------

    def srv_exec(self, argv: list[str], timeout: float = 30, check: bool = False,
                 env: dict[str, str] | None = None, input: str | None = None
                 ) -> subprocess.CompletedProcess:
        """Run a command in the server namespace."""
        return subprocess.run(["ip", "netns", "exec", self.server, *argv], capture_output=True,
                              text=True, timeout=timeout, check=check, env=env, input=input)

    def unregister(self, names: list[str], titles: list[str],
                   address: str = SERVER_ADDRESS) -> None:
        """Devices (their whole subtrees) and registry titles out of the directory at
        `address`, as the administrator; what is not there is passed over."""
        admin = ["-x", "-H", f"ldap://{address}", "-D", ADMIN_DN, "-w", ADMIN_PASSWORD]
        for name in names:
            self.srv_exec(["ldapdelete", *admin, "-r", f"dicomDeviceName={name},{DEVICES_DN}"])
        for title in titles:
            self.srv_exec(["ldapdelete", *admin, f"dicomAETitle={title},{REGISTRY_DN}"])

    def srv_popen(self, argv: list[str]) -> subprocess.Popen:
        """A long-running command in the server namespace (ended by down() at the latest)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.server, *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               ns: str | None = None) -> subprocess.Popen:
        log = open(self.run / "logs" / f"{name}.log", "a")  # noqa: SIM115 (child keeps it)
        proc = subprocess.Popen(["ip", "netns", "exec", ns or self.server, *argv],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        log.close()
        # ip netns exec exec()s the command, so this is the server's own PID.
        (self.run / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
        self._procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.run / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_listening(self, name: str, proc: subprocess.Popen | None, proto: str,
                        port: int, address: str | None = None, timeout: float = 15) -> None:
        """Poll `ss` in the server namespace until something listens on proto/port."""
        flt = f"sport = :{port}" + (f" and src {address}" if address else "")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            out = self.srv_exec(["ss", "-H", "-ln", f"-{proto[0]}", flt]).stdout
            if out.strip():
                return
            time.sleep(0.02)
        raise LabError(f"{name} not listening on {proto}/{port} after {timeout}s:\n"
                       f"{self.log(name)[-3000:]}")

    def _tls(self) -> None:
        """A lab CA, a server certificate for ldap.hospital.test / 192.0.2.1, a client one."""
        tls = self.run / "tls"
        tls.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _run(["openssl", "req", "-x509", *ec, "-keyout", tls / "ca.key", "-out", tls / "ca.pem",
              "-days", "30", "-subj", "/O=dicom-agent lab/CN=dicom-agent lab CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        leaves = {
            "ldap": ("/CN=ldap.hospital.test",
                     "subjectAltName=DNS:ldap.hospital.test,IP:192.0.2.1\n"
                     "extendedKeyUsage=serverAuth\n"),
            # Subject = the registrar's entry, for SASL EXTERNAL (PS3.15 Table H.1-15).
            "registrar": ("/DC=test/DC=hospital/CN=dicom-registrar",
                          "extendedKeyUsage=clientAuth\n"),
            # The first NTP server's NTS-KE (RFC 8915): named by its address, as DHCP
            # option 42 gives it.
            "ntp1": (f"/CN={NTP_ADDRESSES[0]}", f"subjectAltName=IP:{NTP_ADDRESSES[0]}\n"
                     "extendedKeyUsage=serverAuth\n"),
        }
        for name, (subject, ext) in leaves.items():
            (tls / f"{name}.ext").write_text(ext)
            _run(["openssl", "req", *ec, "-keyout", tls / f"{name}.key",
                  "-out", tls / f"{name}.csr", "-subj", subject])
            _run(["openssl", "x509", "-req", "-in", tls / f"{name}.csr", "-CA", tls / "ca.pem",
                  "-CAkey", tls / "ca.key", "-CAcreateserial", "-days", "30",
                  "-out", tls / f"{name}.pem", "-extfile", tls / f"{name}.ext"])
        for key in tls.glob("*.key"):
            key.chmod(0o600)

    def _start_ntp(self) -> None:
        t0 = time.monotonic()
        procs = []
        for n, address in enumerate(NTP_ADDRESSES, 1):
            d = self.run / f"chrony{n}"
            d.mkdir(mode=0o700)  # chronyd wants its command-socket directory private
            # PS3.15 G.1.1.1 autodiscovery (mode 5): the third server broadcasts, the
            # second announces to the NTP multicast group.
            broadcast = {len(NTP_ADDRESSES): "broadcast 2 192.0.2.255",
                         2: "broadcast 2 224.0.1.1"}.get(n, "")
            # The first one also serves NTS (G.1.3), with the lab CA's certificate.
            tls = self.run / "tls"
            nts = (f"ntsservercert {tls / 'ntp1.pem'}\nntsserverkey {tls / 'ntp1.key'}\n"
                   f"ntsdumpdir {d}") if n == 1 else ""
            (d / "chrony.conf").write_text(
                _template("chrony-server.conf", address=address, dir=d, broadcast=broadcast,
                          nts=nts))
            procs.append(self._spawn(f"chronyd{n}", ["chronyd", "-x", "-d", "-f",
                                                     str(d / "chrony.conf")]))
        for n, (address, proc) in enumerate(zip(NTP_ADDRESSES, procs, strict=True), 1):
            self._wait_listening(f"chronyd{n}", proc, "udp", 123, address)
        self._wait_listening("chronyd1", procs[0], "tcp", 4460, NTP_ADDRESSES[0])  # NTS-KE
        self.timings["ntp"] = time.monotonic() - t0

    def _start_ldap(self) -> None:
        t0 = time.monotonic()
        d = self.run / "slapd"
        (d / "slapd.d").mkdir(parents=True)
        (d / "db-staff").mkdir()
        (d / "db-hospital").mkdir()
        (d / "config.ldif").write_text(
            _template("slapd-config.ldif", run=self.run, schema_ldif=SCHEMA_LDIF))
        _run(["slapadd", "-q", "-n0", "-F", d / "slapd.d", "-l", d / "config.ldif"])
        _run(["slapadd", "-q", "-F", d / "slapd.d", "-b", "dc=staff,dc=test",
              "-l", CONF / "base-staff.ldif"])
        _run(["slapadd", "-q", "-F", d / "slapd.d", "-b", BASE_DN,
              "-l", CONF / "base-hospital.ldif"])
        ldapi = "ldapi://" + str(d / "ldapi").replace("/", "%2F")
        urls = f"ldap://{SERVER_ADDRESS}:389/ ldaps://{SERVER_ADDRESS}:636/ {ldapi}"
        self.ldapi_url = ldapi
        self._slapd_urls = urls
        self.start_ldap()
        self.timings["ldap"] = time.monotonic() - t0

    def start_ldap(self) -> None:
        """Start slapd on the databases built by up() (again, after stop_ldap())."""
        d = self.run / "slapd"
        # Daemon mode: the parent returns once slapd is ready; -d would keep it in front.
        log = self.run / "logs" / "slapd.log"
        with open(log, "a") as fh:
            proc = subprocess.run(["ip", "netns", "exec", self.server, "slapd",
                                   "-F", str(d / "slapd.d"), "-h", self._slapd_urls],
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=30)
        if proc.returncode != 0:
            raise LabError(f"slapd failed to start ({proc.returncode}): {log.read_text()}")
        pid = (d / "slapd.pid").read_text().strip()
        (self.run / "pids" / "slapd.pid").write_text(pid + "\n")

    def stop_ldap(self) -> None:
        """Stop slapd (its PID is in its own pid file; it runs in our server namespace)."""
        pid = int((self.run / "slapd" / "slapd.pid").read_text())
        if pid not in _pids_in(self.server):
            raise LabError(f"slapd pid {pid} is not in {self.server}")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid in _pids_in(self.server) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _dns_names(self) -> list[tuple[str, int, int, int, str]]:
        return [(f"_ldap._tcp.{DOMAIN}", prio, weight, port, f"{target}.{DOMAIN}")
                for prio, weight, port, target in SRV_LAYOUTS[self.srv_layout]]

    def _start_dnsmasq(self) -> None:
        t0 = time.monotonic()
        d = self.run / "dnsmasq"
        d.mkdir(exist_ok=True)
        srv = "\n".join(f"srv-host={name},{target},{port},{prio},{weight}"
                        for name, prio, weight, port, target in self._dns_names())
        hosts = "\n".join(f"host-record={name}.{DOMAIN},{addr}" for name, addr in HOSTS.items())
        (d / "hosts").touch()
        (d / "device-options.conf").touch()
        (d / "dnsmasq.conf").write_text(_template(
            "dnsmasq.conf", run=self.run, lease_time=self.lease_time,
            srv_records=srv, host_records=hosts))
        proc = self._spawn("dnsmasq", ["dnsmasq", "--keep-in-foreground", "--log-facility=-",
                                       f"--conf-file={d / 'dnsmasq.conf'}"])
        self._wait_listening("dnsmasq", proc, "udp", 67)
        self._wait_listening("dnsmasq", proc, "udp", 53, SERVER_ADDRESS)
        self.dhcp_procs = [proc]
        self.timings["dhcp"] = time.monotonic() - t0

    def _zone_files(self, d: Path) -> None:
        soa = (f"$TTL 60\n@ IN SOA dhcp.{DOMAIN}. hostmaster.{DOMAIN}. "
               "( 1 3600 600 86400 60 )\n")
        fwd = soa + f"@ IN NS dhcp.{DOMAIN}.\n"
        fwd += "".join(f"{name} IN A {addr}\n" for name, addr in HOSTS.items())
        fwd += "".join(f"{name}. IN SRV {prio} {weight} {port} {target}.\n"
                       for name, prio, weight, port, target in self._dns_names())
        rev = soa + f"@ IN NS dhcp.{DOMAIN}.\n"
        rev += "".join(f"{addr.rsplit('.', 1)[1]} IN PTR {name}.{DOMAIN}.\n"
                       for name, addr in HOSTS.items() if addr.startswith("192.0.2."))
        (d / f"{DOMAIN}.zone").write_text(fwd)
        (d / "2.0.192.in-addr.arpa.zone").write_text(rev)

    def _start_kea(self) -> None:
        t0 = time.monotonic()
        self.tsig_secret = base64.b64encode(os.urandom(32)).decode()
        bind, kea = self.run / "bind", self.run / "kea"
        bind.mkdir()
        kea.mkdir()
        self._zone_files(bind)
        (bind / "named.conf").write_text(
            _template("named.conf", run=self.run, tsig_secret=self.tsig_secret))
        hooks = glob.glob("/usr/lib/*/kea/hooks/libdhcp_lease_cmds.so")
        if not hooks:
            raise LabError("libdhcp_lease_cmds.so not found: is kea-dhcp4-server installed?")
        (kea / "kea-dhcp4.json").write_text(_template(
            "kea-dhcp4.json", run=self.run, lease_cmds=hooks[0], lease_time=self.lease_time))
        (kea / "kea-dhcp-ddns.json").write_text(
            _template("kea-dhcp-ddns.json", tsig_secret=self.tsig_secret))
        named = self._spawn("named", ["named", "-g", "-c", str(bind / "named.conf")])
        env = dict(os.environ, KEA_PIDFILE_DIR=str(kea), KEA_LOCKFILE_DIR=str(kea))
        d2 = self._spawn("kea-dhcp-ddns", ["kea-dhcp-ddns", "-c", str(kea / "kea-dhcp-ddns.json")],
                         env=env)
        self._wait_listening("named", named, "udp", 53, SERVER_ADDRESS)
        self._wait_listening("kea-dhcp-ddns", d2, "udp", 53001)
        self.dhcp_procs = [named, d2, self._start_kea_dhcp4()]
        self.timings["dhcp"] = time.monotonic() - t0

    def _start_kea_dhcp4(self) -> subprocess.Popen:
        kea = self.run / "kea"
        env = dict(os.environ, KEA_PIDFILE_DIR=str(kea), KEA_LOCKFILE_DIR=str(kea))
        dhcp4 = self._spawn("kea-dhcp4", ["kea-dhcp4", "-c", str(kea / "kea-dhcp4.json")], env=env)
        self._wait_listening("kea-dhcp4", dhcp4, "udp", 67)
        return dhcp4

    def stop_dhcp_server(self) -> None:
        """Stop the DHCP server only (DNS stays), as a failed server would: for expiry tests."""
        self._stop([self.dhcp_procs[-1]])

    def start_dhcp_server(self) -> None:
        """Start the DHCP server stopped by stop_dhcp_server(); its leases are kept."""
        if self.dhcp_procs[-1].poll() is None:
            return
        if self.flavour == "dnsmasq":
            self._start_dnsmasq()
        else:
            self.dhcp_procs[-1] = self._start_kea_dhcp4()

    def start_ntp_liar(self, address: str, lie: float) -> subprocess.Popen:
        """An NTP server `lie` seconds wrong on an extra server address (a falseticker)."""
        self.srv_exec(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        proc = self.srv_popen([str(REPO / ".venv" / "bin" / "python"),
                               str(HERE / "clients" / "ntp_liar.py"), address, str(lie)])
        if proc.stdout.readline().strip() != "listening":
            raise LabError(f"ntp_liar did not start: {proc.stderr.read()}")
        return proc

    def start_ntp_announcer(self, address: str, destination: str) -> subprocess.Popen:
        """One more chronyd NTP server on an extra server address, announcing itself
        (mode 5) to `destination` (a broadcast address or 224.0.1.1) every 2 s; -x: the
        clock is never touched. Stop it with stop_ntp_announcer (by its PID)."""
        if address not in self.srv_exec(["ip", "-4", "addr", "show", "dev", "eth0"]).stdout:
            self.srv_exec(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        d = self.run / f"chrony-{address}"
        d.mkdir(mode=0o700, exist_ok=True)
        (d / "chrony.conf").write_text(_template(
            "chrony-server.conf", address=address, dir=d, nts="",
            broadcast=f"broadcast 2 {destination}"))
        proc = self._spawn(f"chronyd-{address}", ["chronyd", "-x", "-d", "-f",
                                                   str(d / "chrony.conf")])
        self._wait_listening(f"chronyd-{address}", proc, "udp", 123, address)
        return proc

    def stop_ntp_announcer(self, proc: subprocess.Popen) -> None:
        self._stop([proc])

    def reserve(self, mac: str, address: str) -> None:
        """Give `mac` a fixed address from now on (dnsmasq re-reads its hosts file on HUP)."""
        if self.flavour != "dnsmasq":
            raise LabError("reserve needs the dnsmasq flavour")
        hosts = self.run / "dnsmasq" / "hosts"
        with open(hosts, "a") as fh:
            fh.write(f"{mac},{address}\n")
        marker = f"read {hosts}"
        before = self.dhcp_log().count(marker)
        self.dhcp_procs[-1].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.dhcp_log().count(marker) == before:  # re-read: the reservation holds now
            if time.monotonic() > deadline:
                raise LabError(f"dnsmasq did not re-read {hosts}")
            time.sleep(0.05)

    def device_options(self, mac: str, options: dict[int, str | None]) -> None:
        """Send `mac` these options from now on, each value as dnsmasq's dhcp-option
        writes it (a misconfigured or hostile server, for one device only; a tagged
        option replaces the global one of its code); None gives the code back to the
        global option. A later call replaces the codes it names, keeps the others.
        dnsmasq restarts to read them, its leases kept. Device indices are never reused
        in a lab, so nothing else gets them."""
        if self.flavour != "dnsmasq":
            raise LabError("device_options needs the dnsmasq flavour")
        mine = self._device_options.setdefault(mac, {})
        for code, value in options.items():
            if value is None:
                mine.pop(code, None)
            else:
                mine[code] = value
        self._write_dnsmasq_extra()

    def _write_dnsmasq_extra(self) -> None:
        """device-options.conf again — what load_dnsmasq added, then each device's tagged
        options — and dnsmasq restarted to read it."""
        lines = list(self._dnsmasq_loaded)
        for mac, options in self._device_options.items():
            tag = "opts" + mac.replace(":", "")
            lines.append(f"dhcp-host={mac},set:{tag}\n")
            # An empty value: the option with no data (dnsmasq's way to leave it out).
            lines += [f"dhcp-option=tag:{tag},{code}" + (f",{value}" if value else "") + "\n"
                      for code, value in options.items()]
        (self.run / "dnsmasq" / "device-options.conf").write_text("".join(lines))
        self.stop_dhcp_server()
        self.start_dhcp_server()

    # -- the replicated directory (issue 14) -----------------------------------------------

    def start_replicated(self, n: int = 2) -> list[str]:
        """`n` OpenLDAP providers in multi-provider replication (syncrepl, olcMultiProvider),
        each in a namespace of its own (<prefix>-ldapN on the lab bridge, 192.0.2.25N, a
        lab-CA certificate for ldapN.hospital.test and its address). The hospital tree is
        loaded on the first; the others receive it by replication. Returns their LDAP
        URLs. Ended with the lab (their namespaces are the lab's)."""
        if getattr(self, "providers", None):
            return [f"ldap://{p['address']}:389" for p in self.providers]
        tls = self.run / "tls"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        urls = []
        self.providers = []
        for i in range(1, n + 1):
            name, address = f"ldap{i}", PROVIDER_ADDRESSES[i - 1]
            ns = f"{self.prefix}-{name}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self._plug(ns, f"p-{name}", f"02:dc:00:00:02:{i:02x}")
            _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
            (tls / f"{name}.ext").write_text(
                f"subjectAltName=DNS:{name}.{DOMAIN},IP:{address}\n"
                "extendedKeyUsage=serverAuth\n")
            _run(["openssl", "req", *ec, "-keyout", tls / f"{name}.key", "-out",
                  tls / f"{name}.csr", "-subj", f"/CN={name}.{DOMAIN}"])
            _run(["openssl", "x509", "-req", "-in", tls / f"{name}.csr", "-CA", tls / "ca.pem",
                  "-CAkey", tls / "ca.key", "-CAcreateserial", "-days", "30",
                  "-out", tls / f"{name}.pem", "-extfile", tls / f"{name}.ext"])
            (tls / f"{name}.key").chmod(0o600)
            d = self.run / f"slapd-{name}"
            (d / "slapd.d").mkdir(parents=True)
            (d / "db").mkdir()
            self.providers.append({"name": name, "ns": ns, "address": address, "dir": d,
                                   "sid": i})
        for p in self.providers:
            (p["dir"] / "config.ldif").write_text(_template(
                "slapd-provider.ldif", sid=p["sid"], dir=p["dir"], tls=tls, provider=p["name"],
                schema_ldif=SCHEMA_LDIF, syncrepl=self._syncrepl(p["sid"])))
            _run(["slapadd", "-q", "-n0", "-F", p["dir"] / "slapd.d", "-l",
                  p["dir"] / "config.ldif"])
        first = self.providers[0]
        _run(["slapadd", "-q", "-S", "1", "-w", "-F", first["dir"] / "slapd.d", "-b", BASE_DN,
              "-l", CONF / "base-hospital.ldif"])
        for p in self.providers:
            self.start_provider(p["sid"])
            urls.append(f"ldap://{p['address']}:389")
        return urls

    def _syncrepl(self, sid: int) -> str:
        """olcSyncrepl lines: provider `sid` consumes from every other provider."""
        lines = []
        for other in self.providers:
            if other["sid"] == sid:
                continue
            lines.append(
                f'olcSyncrepl: {{{len(lines)}}}rid={other["sid"]:03d} '
                f'provider=ldap://{other["address"]}:389 bindmethod=simple '
                f'binddn="{ADMIN_DN}" credentials={ADMIN_PASSWORD} '
                f'searchbase="{BASE_DN}" type=refreshAndPersist retry="1 +" timeout=3 '
                'network-timeout=3')
        return "\n".join(lines)

    def provider(self, sid: int) -> dict:
        return self.providers[sid - 1]

    def start_provider(self, sid: int) -> None:
        p = self.provider(sid)
        ldapi = "ldapi://" + str(p["dir"] / "ldapi").replace("/", "%2F")
        p["ldapi"] = ldapi
        with open(self.run / "logs" / f"slapd-{p['name']}.log", "a") as fh:
            done = subprocess.run(["ip", "netns", "exec", p["ns"], "slapd", "-F",
                                   str(p["dir"] / "slapd.d"), "-h",
                                   f"ldap://{p['address']}:389/ {ldapi}"],
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=30)
        if done.returncode != 0:
            raise LabError(f"slapd {p['name']} failed to start ({done.returncode})")

    def provider_pid(self, sid: int) -> int:
        p = self.provider(sid)
        pid = int((p["dir"] / "slapd.pid").read_text())
        if pid not in _pids_in(p["ns"]):
            raise LabError(f"slapd pid {pid} is not in {p['ns']}")
        return pid

    def provider_exec(self, sid: int, argv: list[str], input: str | None = None
                      ) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.provider(sid)["ns"], *argv], check=False,
                    input=input)

    def pause_provider(self, sid: int) -> None:
        """A lagging replica: SIGSTOP, by its PID (resume_provider: SIGCONT)."""
        os.kill(self.provider_pid(sid), signal.SIGSTOP)

    def resume_provider(self, sid: int) -> None:
        os.kill(self.provider_pid(sid), signal.SIGCONT)

    def kill_provider(self, sid: int) -> None:
        """A provider dying (SIGKILL, by its PID); start_provider brings it back."""
        pid = self.provider_pid(sid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid in _pids_in(self.provider(sid)["ns"]):
            if time.monotonic() > deadline:
                raise LabError(f"slapd {pid} did not end")
            time.sleep(0.05)

    def cut_replication(self, sid: int) -> None:
        """Provider `sid` stops consuming from the others (its olcSyncrepl removed through
        ldapi); devices still reach it."""
        p = self.provider(sid)
        self.provider_exec(sid, ["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", p["ldapi"]],
                           input="dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\n"
                                 "delete: olcSyncrepl\n-\n")

    def restore_replication(self, sid: int) -> None:
        p = self.provider(sid)
        lines = self._syncrepl(sid)
        self.provider_exec(sid, ["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", p["ldapi"]],
                           input="dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\n"
                                 f"add: olcSyncrepl\n{lines}\n-\n")

    def load_dnsmasq(self, text: str) -> None:
        """Add configuration lines (e.g. `dicom-agent site dnsmasq`'s dhcp-host lines) to
        the lab's dnsmasq, which restarts to read them, its leases kept."""
        if self.flavour != "dnsmasq":
            raise LabError("load_dnsmasq needs the dnsmasq flavour")
        self._dnsmasq_loaded.append(text if text.endswith("\n") else text + "\n")
        self._write_dnsmasq_extra()

    def dhcp_log(self) -> str:
        return self.log("dnsmasq" if self.flavour == "dnsmasq" else "kea-dhcp4")

    def set_srv_layout(self, layout: str) -> None:
        """Switch the _ldap._tcp SRV layout: restart the DNS server with the new records."""
        if layout not in SRV_LAYOUTS:
            raise ValueError(f"srv_layout must be one of {sorted(SRV_LAYOUTS)}")
        if layout == self.srv_layout:
            return
        self.srv_layout = layout
        if self.flavour == "dnsmasq":
            self._stop(self.dhcp_procs)
            self._start_dnsmasq()
        else:
            # A dynamic update keeps the DDNS records BIND already holds.
            lines = [f"server {SERVER_ADDRESS}", f"zone {DOMAIN}",
                     f"update delete _ldap._tcp.{DOMAIN}. SRV"]
            lines += [f"update add {name}. 60 SRV {prio} {weight} {port} {target}."
                      for name, prio, weight, port, target in self._dns_names()]
            self.srv_exec(["nsupdate", "-y", f"hmac-sha256:ddns-key:{self.tsig_secret}"],
                          input="\n".join([*lines, "send", ""]), check=True)

    @staticmethod
    def _stop(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kea_command(self, command: str, arguments: dict | None = None) -> dict:
        """Send a command (e.g. lease4-del) to kea-dhcp4's control socket; return the answer."""
        if self.flavour != "kea":
            raise LabError("kea_command needs the kea flavour")
        request = {"command": command}
        if arguments is not None:
            request["arguments"] = arguments
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.run / "kea" / "kea4.sock"))
            s.sendall(json.dumps(request).encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))

    # -- mDNS browser (started on first use) ---------------------------------------------

    def avahi_browse(self, service_type: str, timeout: float = 15,
                     until=bool) -> list[dict[str, object]]:
        """Resolved DNS-SD instances of `service_type` seen from the server namespace.

        avahi-daemon runs there with its own D-Bus; `avahi-browse -rtp` lists and resolves
        what it sees. A browse right after start-up can come back empty, so this repeats
        until `until(found)` is true (default: something found) or `timeout` passes, and
        returns the last list: dicts with name, type, host, address, port, txt.
        """
        self._start_avahi()
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self._dbus_address)
        deadline = time.monotonic() + timeout
        while True:
            out = self.srv_exec(["avahi-browse", "-r", "-t", "-p", "-k", service_type],
                                env=env, timeout=timeout).stdout
            found = [_avahi_record(line.split(";")) for line in out.splitlines()
                     if line.startswith("=;")]
            if until(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    def avahi_publish(self, name: str, service_type: str, port: int, txt: dict[str, str],
                      host: str | None = None, address: str | None = None
                      ) -> list[subprocess.Popen]:
        """A DNS-SD service published by the server namespace's avahi-daemon (another
        host on the link than any device) — with `host` and `address`, on that host name
        with its address record too — until the returned processes are terminated;
        returns once avahi says each is established."""
        self._start_avahi()
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self._dbus_address)
        commands = []
        if host and address:
            commands.append(["avahi-publish", "-a", "-R", f"{host}.local", address])
        commands.append(["avahi-publish", "-s", *(["-H", f"{host}.local"] if host else []),
                         name, service_type, str(port), *(f"{k}={v}" for k, v in txt.items())])
        procs = []
        for argv in commands:
            proc = subprocess.Popen(["ip", "netns", "exec", self.server, *argv],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env, start_new_session=True)
            self._procs.append(proc)
            procs.append(proc)
            line = ""
            while "Established" not in line:
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    for p in procs:
                        p.terminate()
                    raise LabError(f"avahi-publish {name}: {line or 'ended'}")
        return procs

    def _start_avahi(self) -> None:
        if getattr(self, "_dbus_address", None):
            return
        d = self.run / "avahi"
        (d / "run").mkdir(parents=True)
        (d / "dbus-lab.conf").write_text(f"""<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={d}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
""")
        (d / "avahi-daemon.conf").write_text(
            "[server]\nhost-name=lab-srv\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\n"
            "enable-dbus=yes\nratelimit-burst=1000\n[publish]\npublish-addresses=no\n"
            "publish-hinfo=no\npublish-workstation=no\n[reflector]\n[rlimits]\n")
        self._spawn("dbus", ["dbus-daemon", "--nofork", f"--config-file={d / 'dbus-lab.conf'}"])
        deadline = time.monotonic() + 10
        while not (d / "system_bus_socket").exists():
            if time.monotonic() > deadline:
                raise LabError(f"dbus-daemon did not start:\n{self.log('dbus')}")
            time.sleep(0.02)
        address = f"unix:path={d}/system_bus_socket"
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
        # avahi-daemon hard-codes /run/avahi-daemon: give it a private one.
        self._spawn("avahi", ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              'mkdir -p /run/avahi-daemon && mount --bind "$1" /run/avahi-daemon'
                              ' && shift && exec "$@"', "avahi", str(d / "run"),
                              "avahi-daemon", "-f", str(d / "avahi-daemon.conf"), "--no-chroot",
                              "--no-drop-root", "--no-rlimits"], env=env)
        deadline = time.monotonic() + 15
        while "Server startup complete" not in self.log("avahi"):
            if time.monotonic() > deadline:
                raise LabError(f"avahi-daemon did not start:\n{self.log('avahi')}")
            time.sleep(0.05)
        self._dbus_address = address

    # -- description --------------------------------------------------------------------

    def describe(self) -> str:
        lines = [f"lab {self.prefix} ({self.flavour}, SRV {self.srv_layout}, lease "
                 f"{self.lease_time}s) run dir {self.run}",
                 f"  {self.switch}: bridge br0",
                 f"  {self.server}: {SERVER_ADDRESS} dhcp/dns/ldap, {LDAP_BACKUP_ADDRESS} "
                 f"ldap-backup (dead), {', '.join(NTP_ADDRESSES)} ntp, {REMOTE_NET} remote"]
        lines += [f"  {d.ns}: eth0 {d.mac}" for d in self.devices.values()]
        lines.append("  timings: " + ", ".join(f"{k} {v * 1000:.0f} ms"
                                               for k, v in self.timings.items()))
        return "\n".join(lines)


def _avahi_record(parts: list[str]) -> dict[str, object]:
    """One resolved `avahi-browse -p` line: =;if;proto;name;type;domain;host;addr;port;txt."""
    txt = {}
    for item in ";".join(parts[9:]).split('" "'):
        key, _, value = item.strip('"').partition("=")
        if key:
            txt[key] = value
    return {"name": parts[3].replace("\\032", " "), "type": parts[4], "host": parts[6],
            "address": parts[7], "port": parts[8], "txt": txt}


def device_for(prefix: str, index: int) -> Device:
    """A Device handle for an existing lab namespace (for the shell entry's `exec`)."""
    lab = Lab(prefix=prefix, devices=0)
    ns = f"{prefix}-dev{index}"
    if ns not in list_namespaces():
        raise LabError(f"no namespace {ns}: is the lab up (make lab-up)?")
    return Device(lab, index, ns, f"02:dc:00:00:00:{index:02x}", lab.run / f"dev{index}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n")[0])
    parser.add_argument("--prefix", default="dcm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab and start its servers")
    up.add_argument("--flavour", choices=(*FLAVOURS, "replicated"), default="dnsmasq",
                    help="replicated: dnsmasq DHCP and two LDAP providers in multi-provider "
                         "replication behind an equal-weight SRV (issue 14)")
    up.add_argument("--srv-layout", choices=sorted(SRV_LAYOUTS), default="live-first")
    up.add_argument("--devices", type=int, default=3)
    up.add_argument("--lease-time", type=int)
    down = sub.add_parser("down", help="tear the lab down")
    down.add_argument("--all", action="store_true", help="every dcm* lab, crashed ones too")
    ex = sub.add_parser("exec", help="run a command on device N")
    ex.add_argument("device", type=int)
    ex.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("status", help="list the lab's namespaces and their processes")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("lab.py: must run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    if args.cmd == "up":
        replicated = args.flavour == "replicated"
        lab = Lab(prefix=args.prefix, flavour="dnsmasq" if replicated else args.flavour,
                  srv_layout="replicated" if replicated else args.srv_layout,
                  devices=args.devices, lease_time=args.lease_time)
        lab.up()
        if replicated:
            for url in lab.start_replicated(2):
                print(f"replicated provider: {url}")
        print(lab.describe())
    elif args.cmd == "down":
        prefixes = all_lab_prefixes() if args.all else [args.prefix]
        for prefix in prefixes:
            removed = down_prefix(prefix)
            print(f"lab {prefix}: removed {len(removed)} namespaces")
    elif args.cmd == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("exec needs a command")
        dev = device_for(args.prefix, args.device)
        return subprocess.call(dev.wrap(command))
    elif args.cmd == "status":
        names = [ns for ns in list_namespaces() if ns.startswith(args.prefix + "-")]
        for ns in sorted(names):
            pids = _pids_in(ns)
            comms = [Path(f"/proc/{p}/comm").read_text().strip()
                     for p in pids if Path(f"/proc/{p}/comm").exists()]
            print(f"{ns}: {', '.join(comms) or '-'}")
        if not names:
            print(f"lab {args.prefix}: down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
