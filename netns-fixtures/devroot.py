"""A device with a real systemd as PID 1, for the tests of the shipped units (issue 12).

A minimal Debian root (debootstrap --variant=minbase, systemd, python3-venv, iproute2,
chrony) is built once and cached outside the repository (CACHE, about a minute and 300 MB
the first time). Each device copies it, installs the product into the copy with packaging/install.py
from a wheelhouse built on the host (a container joined to a lab namespace has no package
index), writes the agent's configuration, enables the units and boots the copy with
systemd-nspawn joined to a lab device's network namespace — so the container's eth0 is
the lab device's and nothing touches the machine's own interfaces, clock or host name.
The nspawn process runs in a cgroup of its own (lab-notes: no host systemd here), and is
ended by its PID; the copy and the cgroups are removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/dicom-agent-lab")
INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,chrony"
MIRROR = "http://deb.debian.org/debian"


class DevRootError(RuntimeError):
    pass


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
                           "bookworm", str(building), MIRROR], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise DevRootError(f"debootstrap failed: {done.stderr[-2000:]}")
    building.rename(root)
    stamp.write_text(INCLUDE)
    return root


def wheelhouse(dest: Path) -> Path:
    """The agent's wheel and its dependencies', built on the host from this checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("dicom_agent-*.whl"):
        old.unlink()  # the checkout's code, not an earlier build's
    done = subprocess.run([str(REPO / ".venv" / "bin" / "pip"), "wheel", "-q", "--wheel-dir",
                           str(dest), str(REPO)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise DevRootError(f"pip wheel failed: {done.stderr[-2000:]}")
    return dest


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


def make(name: str, workdir: Path, netns: str, config: str, wheels: Path) -> SystemdDevice:
    """A copy of the base root with the product installed, configured and enabled."""
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base_root()), str(root)], check=True)
    done = subprocess.run(["python3", str(REPO / "packaging" / "install.py"), "--root", str(root),
                           "--wheelhouse", str(wheels)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise DevRootError(f"install failed: {done.stderr[-2000:]}")
    (root / "etc" / "dicom-agent" / "agent.toml").write_text(config)
    subprocess.run(["systemctl", f"--root={root}", "enable", "dicom-agent.service",
                    "dicom-agent-wait-ready.service", "dicom-ready.target"],
                   check=True, capture_output=True)
    cgroups = [Path("/sys/fs/cgroup") / h / name for h in ("systemd", "unified")
               if (Path("/sys/fs/cgroup") / h).is_dir()]
    return SystemdDevice(name, root, netns, cgroups=cgroups)
