"""A device with a real systemd as PID 1, for the tests of the shipped package and units.

A minimal Debian root (debootstrap --variant=minbase: systemd, python3, iproute2, chrony —
no build tools) is built once from the apt sources this machine is configured with and
cached outside the repository (CACHE, about a minute and 300 MB the first time); its apt
points at nothing, so the only packages it can install are its own and the .deb. Each
device copies it and, as an image build does, installs the package into the copy
(`dpkg -i` in a chroot: nothing started) — or leaves that to the test, which runs apt in
the booted device. The copy boots with systemd-nspawn joined to a lab device's network
namespace, so the container's eth0 is the lab device's and nothing touches the machine's
own interfaces, clock or host name. The nspawn process runs in a cgroup of its own
(lab-notes: no host systemd here), and is ended by its PID; the copy and the cgroups are
removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import REGISTRAR_DN, REGISTRAR_PASSWORD

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/dicom-agent-lab")
INCLUDE = "systemd,systemd-sysv,dbus,python3,iproute2,chrony"
CODENAME = "bookworm"


def apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of each `deb` source this machine's apt is configured
    with: sources.list and sources.list.d/*.list (one-line form), *.sources (deb822)."""
    out = []
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = words[1:]
            if words and words[0].startswith("["):  # [options], which may hold spaces
                end = next((i for i, w in enumerate(words) if w.endswith("]")), len(words))
                words = words[end + 1:]
            if len(words) >= 2:
                out.append((words[0], [words[1]], words[2:]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0].isspace() and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and \
                    fields.get("enabled", "yes").lower() != "no":
                for uri in fields.get("uris", "").split():
                    out.append((uri, fields.get("suites", "").split(),
                                fields.get("components", "").split()))
    return out


def mirror(etc: Path = Path("/etc/apt"), codename: str = CODENAME) -> str:
    """The mirror this machine takes `codename`'s main component from."""
    for uri, suites, components in apt_sources(etc):
        if codename in suites and "main" in components:
            return uri
    raise DevRootError(f"no apt source of {etc} has {codename} main: debootstrap needs one")


class DevRootError(RuntimeError):
    pass


# The site's part of a lab device image's configuration (the VM's, the package's and the
# units' devices): the directory over TLS as the lab's registrar, one Verification SCP.
SITE_DEVICE = """[directory]
domain = "hospital.test"
security = "tls"
ca_file = "/etc/dicom-agent/ca.pem"
bind_dn = "{registrar}"
# root's, 0600, in the credentials directory: handed over by LoadCredential=
password_file = "/etc/dicom-agent/credentials/registrar.pw"

[device]
name = "{name}"

[[device.connection]]
name = "dicom"
port = 104

[[device.ae]]
title = "{name}_SCP"
connections = ["dicom"]

[[device.ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "SCP"
transfer_syntaxes = ["1.2.840.10008.1.2"]
"""


def site_device(name: str) -> str:
    """SITE_DEVICE for the device `name`."""
    return SITE_DEVICE.format(registrar=REGISTRAR_DN, name=name)


def site_secrets(root: Path, ca: Path) -> None:
    """The files SITE_DEVICE names, in an image: the lab's CA and the registrar's
    password (root's, 0600, in the credentials directory tmpfiles.d makes at boot)."""
    etc = root / "etc" / "dicom-agent"
    etc.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, etc / "ca.pem")
    (etc / "credentials").mkdir(mode=0o700, exist_ok=True)
    secret = etc / "credentials" / "registrar.pw"
    secret.write_text(f"{REGISTRAR_PASSWORD}\n")
    secret.chmod(0o600)


def base_root() -> Path:
    """The cached Debian root, built when missing (a fresh CI machine builds it)."""
    root = CACHE / "rootfs"
    stamp = CACHE / "rootfs.include"
    if root.is_dir() and stamp.exists() and stamp.read_text() == INCLUDE:
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / "rootfs.tmp"
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}",
                           CODENAME, str(building), mirror()], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise DevRootError(f"debootstrap failed: {done.stderr[-2000:]}")
    # The device's apt knows no source: it installs its own packages and the .deb only.
    (building / "etc/apt/sources.list").write_text("")
    subprocess.run(["find", str(building / "var/lib/apt/lists"), "-type", "f", "-delete"],
                   check=True)
    building.rename(root)
    stamp.write_text(INCLUDE)
    return root


@dataclass
class SystemdDevice:
    """A booted container: `systemctl(...)`, `run(...)` inside it, `stop()`."""

    name: str
    root: Path
    netns: str
    nspawn: subprocess.Popen | None = None
    log: Path | None = None
    pid1: int | None = None
    cgroups: list[Path] = field(default_factory=list)

    def boot(self, timeout: float = 60.0) -> None:
        self.log = self.root.parent / f"{self.name}.console"
        script = "".join(f"mkdir -p {c}; echo $$ > {c}/cgroup.procs; " for c in self.cgroups)
        argv = ["sh", "-c", script + 'exec "$@"', "nspawn",
                "systemd-nspawn", "-q", "-D", str(self.root), "--boot", "--register=no",
                "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}",
                "--console=read-only", f"--machine={self.name}",
                # The device's local time zone is its own (nspawn would link it to this
                # machine's at each boot).
                "--timezone=off",
                # Inside the lab device's own namespace: what the agent's unit grants.
                "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_NET_BIND_SERVICE"]
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(self.log, "w") as console:
            self.nspawn = subprocess.Popen(argv, stdout=console, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise DevRootError(f"nspawn ended: {self.log.read_text()[-2000:]}")
            children = subprocess.run(["pgrep", "-P", str(self.nspawn.pid), "-x", "systemd"],
                                      capture_output=True, text=True).stdout.split()
            if children:
                self.pid1 = int(children[0])
                state = self.run(["systemctl", "is-system-running"]).stdout.strip()
                if state in ("starting", "running", "degraded"):  # systemd answers
                    return
            time.sleep(0.2)
        raise DevRootError(f"no running systemd in {timeout} s: {self.log.read_text()[-2000:]}")

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *argv],
                              capture_output=True, text=True, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            if self.pid1 is not None:
                self.run(["systemctl", "poweroff"], timeout=30)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()  # by its PID: the process this object started
                self.nspawn.wait(10)
        for cgroup in self.cgroups:
            if cgroup.exists():
                for sub in sorted(cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        sub.rmdir()
                cgroup.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree("/run/systemd/nspawn", ignore_errors=True)


def install(root: Path, deb: Path) -> None:
    """The package into an image that is not running, as an image build does."""
    shutil.copy(deb, root / "tmp" / deb.name)
    try:
        done = subprocess.run(["chroot", str(root), "dpkg", "-i", f"/tmp/{deb.name}"],
                              capture_output=True, text=True, timeout=600,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    finally:
        (root / "tmp" / deb.name).unlink()
    if done.returncode != 0:
        raise DevRootError(f"dpkg -i failed: {(done.stdout + done.stderr)[-2000:]}")


def make(name: str, workdir: Path, netns: str, config: str | None = None,
         deb: Path | None = None) -> SystemdDevice:
    """A copy of the base root; with `deb`, the package installed into it (nothing
    started) and `config` as the site's /etc/dicom-agent/agent.toml."""
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base_root()), str(root)], check=True)
    if deb is not None:
        try:
            install(root, deb)
        except DevRootError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        if config is not None:
            (root / "etc" / "dicom-agent" / "agent.toml").write_text(config)
    cgroups = [Path("/sys/fs/cgroup") / h / name for h in ("systemd", "unified")
               if (Path("/sys/fs/cgroup") / h).is_dir()]
    return SystemdDevice(name, root, netns, cgroups=cgroups)
