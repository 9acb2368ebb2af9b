"""A real device: Debian 12 booted in qemu with the package installed, on the lab's link.

What a network namespace cannot prove — a clock really set, a real reboot, a NIC coming up
under systemd at power-on — runs here. The VM root is built once with debootstrap (the
devices' packages and Debian 12's kernel, from this machine's apt sources; about two
minutes and 600 MB) and cached beside the containers' root; each VM copies it, installs
the .deb into the copy as an image build does (dpkg -i in a chroot: nothing started),
gets the test's configuration and a reporter, and becomes an ext4 image (mkfs.ext4 -d: no
loop mount). qemu boots the image's own kernel and initrd with systemd as PID 1:
- KVM where a guest was seen to boot with it (`accelerator`: one probe boot of the kernel
  under KVM per host, cached), else TCG — a KVM guest stalls after the BIOS on this
  machine (nested virtualization, ../shared/lab-notes.md); DICOM_AGENT_VM_KVM=1 or 0
  decides without the probe;
- its NIC a tap on the lab's bridge, created in the lab's switch namespace, where qemu
  runs: one more device on the link, nothing on this machine's interfaces;
- its real-time clock where the test says (`-rtc base=...`): the VM's clock is its own;
- the serial console in a file; a second serial port (ttyS1) carries the reporter's lines:
  a root unit in the image that prints `@@ <unix time> <boot id> <snapshot>` for each
  snapshot `dicom-agent watch` gives, `@@date ... {"z": <date +%z>, "Z": <date +%Z>}`
  once a second (the VM's clock, and the local time as `date` shows it), and every 5 s
  once ready `@@ntp ... <ntpdig -j>` — how the test reads the device without logging
  in; a third (ttyS2) takes a few commands (COMMAND_SH).
qemu is ended by its PID (SIGTERM; `power_cut` SIGKILLs it), the tap goes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import devroot

CACHE = devroot.CACHE
VM_INCLUDE = devroot.INCLUDE + ",linux-image-amd64,ntpsec-ntpdig"
# Test fixtures inside the image (root units, never part of the package): the reporter
# writes the device's state to ttyS1 once a second and, every 5 s, an independent SNTP
# client's measurement (ntpdig) of the lab's first NTP server; the command reader runs
# what the test writes on ttyS2 (reboot, poweroff: nothing else).
REPORT_SH = """#!/bin/sh
# dicom-agent lab: the device's state on ttyS1 — each snapshot of the agent as it changes
# (one `dicom-agent watch`, started once the status socket exists: a Python process per
# second would take the CPU the agent boots with, which the stock stack never pays),
# once a second the local time as `date` shows it, and every 5 s once the device is
# ready what an independent SNTP client (ntpdig) measures against the lab's first NTP
# server.
boot=$(cat /proc/sys/kernel/random/boot_id)
(
  while :; do
    if [ -S /run/dicom-agent/status.sock ]; then
      dicom-agent watch 2>/dev/null | while IFS= read -r line; do
        echo "@@ $(date +%s.%N) $boot $line" > /dev/ttyS1
      done
    fi
    sleep 1
  done
) &
n=0
while :; do
  local=$(date "+{\\"z\\": \\"%z\\", \\"Z\\": \\"%Z\\"}")
  echo "@@date $(date +%s.%N) $boot $local" > /dev/ttyS1
  n=$((n + 1))
  if [ $((n % 5)) = 0 ] && systemctl -q is-active dicom-ready.target; then
    ntp=$(ntpdig -t 1 -j 192.0.2.11 2>/dev/null | tr -d '\\n')
    echo "@@ntp $(date +%s.%N) $boot ${ntp:-null}" > /dev/ttyS1
  fi
  sleep 1
done
"""
COMMAND_SH = """#!/bin/sh
# dicom-agent lab: what the test writes on ttyS2 — reboot, poweroff, renew (the
# operator's command), chrony (the clock to the image's chronyd from the next boot: the
# lab's sntp choice taken out, chronyd unmasked, as the package decided), journal (this
# boot's journal on ttyS1, each line after "## ") — nothing else.
# Each command done is said on ttyS1.
stty -F /dev/ttyS2 raw -echo
while read -r cmd < /dev/ttyS2; do
  case "$cmd" in
    reboot) systemctl reboot ;;
    poweroff) systemctl poweroff ;;
    renew) dicom-agent renew ;;
    chrony) rm -f /etc/dicom-agent/agent.toml.d/40-lab-sntp.toml \\
              /etc/systemd/system/dicom-agent.service.d/60-sntp.conf \\
              /etc/systemd/system/chrony.service
            systemctl enable chrony.service; sync ;;
    journal) journalctl -b -o short-monotonic --no-pager | sed 's/^/## /' > /dev/ttyS1 ;;
    *) continue ;;
  esac
  echo "@@cmd $(date +%s.%N) $(cat /proc/sys/kernel/random/boot_id) \\"$cmd\\"" > /dev/ttyS1
done
"""
UNIT = """[Unit]
Description=dicom-agent lab: {what}
After=local-fs.target

[Service]
ExecStart=/bin/sh /usr/local/lib/dicom-lab/{script}
Restart=always

[Install]
WantedBy=multi-user.target
"""
FIXTURES = {"dicom-lab-report": ("the device's state on ttyS1", "report.sh", REPORT_SH),
            "dicom-lab-command": ("commands from ttyS2", "command.sh", COMMAND_SH)}


def sntp_device(root: Path, ca: Path) -> None:
    """The image of the device the VM tests and the bench boot (devroot.site_device: it
    registers over TLS): the site's files, and — this image has chronyd, so the package
    chose chrony — sntp mode (a drop-in of its own, which the command `chrony` removes),
    chronyd masked and the sntp drop-in over the package's."""
    devroot.site_secrets(root, ca)
    etc = root / "etc/dicom-agent"
    (etc / "agent.toml.d").mkdir(exist_ok=True)
    (etc / "agent.toml.d/40-lab-sntp.toml").write_text('[time]\nmode = "sntp"\n')
    units = root / "etc/systemd/system"
    (units / "chrony.service").unlink(missing_ok=True)
    (units / "chrony.service").symlink_to("/dev/null")
    shutil.copy(root / "usr/lib/dicom-agent/sntp.conf",
                units / "dicom-agent.service.d/60-sntp.conf")


# The reporter's lines, by their first word: the key of the report they become.
KINDS = {"@@": "status", "@@ntp": "ntp", "@@date": "date", "@@cmd": "cmd"}


class VMError(RuntimeError):
    pass


def vm_root() -> Path:
    """The cached VM root: the devices' packages and Debian 12's kernel; apt points at
    nothing."""
    root = CACHE / "vmroot"
    stamp = CACHE / "vmroot.include"
    if root.is_dir() and stamp.exists() and stamp.read_text() == VM_INCLUDE:
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / "vmroot.tmp"
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={VM_INCLUDE}",
                           devroot.CODENAME, str(building), devroot.mirror()],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise VMError(f"debootstrap failed: {done.stderr[-2000:]}")
    (building / "etc/apt/sources.list").write_text("")
    subprocess.run(["find", str(building / "var/lib/apt/lists"), "-type", "f", "-delete"],
                   check=True)
    building.rename(root)
    stamp.write_text(VM_INCLUDE)
    return root


KVM_PROBE = CACHE / "kvm-probe"  # "<what was probed>\n<kvm|tcg>\n"
KVM_PROBE_TIMEOUT = 20.0  # s: a KVM guest prints its kernel banner within a few


def accelerator(kernel: Path, initrd: Path, workdir: Path) -> str:
    """`kvm` where a guest was seen to boot with it on this machine, else `tcg`.
    DICOM_AGENT_VM_KVM=1 or 0 decides without a probe; without a usable /dev/kvm it is
    TCG. Otherwise the kernel is booted once under KVM (no disk, no NIC) and KVM is used
    when its banner reaches the serial console in time — a nested KVM that stalls after
    the BIOS, as on the machine lab-notes describes, does not; the finding is cached for
    this host kernel, qemu and guest kernel."""
    forced = os.environ.get("DICOM_AGENT_VM_KVM")
    if forced in ("0", "1"):
        return "kvm" if forced == "1" else "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.split("\n")[0]
    what = f"{os.uname().release} | {qemu} | {kernel.name}"
    try:
        cached_what, cached = KVM_PROBE.read_text().splitlines()[:2]
        if cached_what == what and cached in ("kvm", "tcg"):
            return cached
    except (OSError, ValueError):
        pass
    found = "kvm" if _boots_with_kvm(kernel, initrd, workdir) else "tcg"
    KVM_PROBE.parent.mkdir(parents=True, exist_ok=True)
    KVM_PROBE.write_text(f"{what}\n{found}\n")
    return found


def _boots_with_kvm(kernel: Path, initrd: Path, workdir: Path) -> bool:
    """The guest kernel's banner on the serial console under KVM, within the timeout;
    qemu ended by its PID either way."""
    console = workdir / "kvm-probe.console"
    console.unlink(missing_ok=True)
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-smp", "1",
                             "-nographic", "-nodefaults", "-nic", "none", "-no-reboot",
                             "-serial", f"file:{console}", "-kernel", str(kernel),
                             "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + KVM_PROBE_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if console.exists() and b"Linux version" in console.read_bytes():
                return True
            time.sleep(0.2)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise VMError(f"no kernel or initrd in {root / 'boot'}")
    return kernels[-1], initrds[-1]


@dataclass
class VM:
    """One booted (or bootable) VM: `boot()`, `reports()`, `shutdown()`, `power_cut()`."""

    name: str
    workdir: Path
    switch: str  # the lab's switch namespace
    mac: str
    image: Path
    kernel: Path
    initrd: Path
    tap: str = "vmtap0"
    rtc: str | None = None
    proc: subprocess.Popen | None = None
    accel: str | None = None  # what the last boot ran under: kvm or tcg
    boots: int = 0
    started: list[float] = field(default_factory=list)

    @property
    def console(self) -> Path:
        return self.workdir / f"{self.name}.console"

    @property
    def report_log(self) -> Path:
        return self.workdir / f"{self.name}.report"

    @property
    def command_socket(self) -> Path:
        return self.workdir / f"{self.name}.cmd"

    def command(self, text: str) -> None:
        """A line for the command reader on the VM's ttyS2 (COMMAND_SH); once it has run
        (reboot and poweroff aside), a report `{"cmd": text}` follows."""
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.command_socket))
            s.sendall(text.encode() + b"\n")

    def boot(self, rtc: str | None = None) -> None:
        """Power on (the image as the last boot left it)."""
        if self.proc is not None and self.proc.poll() is None:
            raise VMError("already running")
        subprocess.run(["ip", "-n", self.switch, "tuntap", "add", "dev", self.tap, "mode",
                        "tap"], capture_output=True)
        for args in (["master", "br0"], ["up"]):
            subprocess.run(["ip", "-n", self.switch, "link", "set", self.tap, *args],
                           check=True, capture_output=True)
        for log in (self.console, self.report_log):  # qemu truncates them: keep each boot's
            if log.exists():
                log.rename(log.with_name(f"{log.name}.{self.boots}"))
        accel = self.accel = accelerator(self.kernel, self.initrd, self.workdir)
        rtc = rtc or self.rtc
        argv = ["ip", "netns", "exec", self.switch, "qemu-system-x86_64", "-accel", accel,
                "-m", "1024", "-smp", "1", "-nographic", "-nodefaults",
                "-serial", f"file:{self.console}", "-serial", f"file:{self.report_log}",
                "-serial", f"unix:{self.command_socket},server=on,wait=off",
                "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", "root=/dev/vda rw console=ttyS0 quiet",
                "-drive", f"file={self.image},format=raw,if=virtio",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
                *(["-rtc", f"base={rtc}"] if rtc else [])]
        self.boots += 1
        self.started.append(time.time())
        with open(self.workdir / f"{self.name}.qemu.log", "a") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def reports(self) -> list[dict]:
        """The reporter's lines so far: host time read, VM time, boot id, status (or None)."""
        out = []
        logs = [self.report_log.with_name(f"{self.report_log.name}.{n}")
                for n in range(self.boots)] + [self.report_log]
        text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
        for n, line in enumerate(text.splitlines()):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[0] not in KINDS:
                continue
            try:
                value = json.loads(parts[3])
            except ValueError:
                continue
            try:
                report = {"n": n, "vm_time": float(parts[1]), "boot_id": parts[2]}
            except ValueError:
                continue
            report[KINDS[parts[0]]] = value
            out.append(report)
        return out

    def wait(self, predicate, timeout: float, after: dict | None = None) -> dict:
        """The first report (after `after`, when given) for which predicate(report) holds;
        reports are the reporter's lines in order, a state (`status`) or an independent
        client's measurement (`ntp`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise VMError(f"qemu ended ({self.proc.returncode}): "
                              f"{self.console.read_text(errors='replace')[-2000:]}")
            for report in self.reports():
                if (after is None or report["n"] > after["n"]) and predicate(report):
                    return report
            time.sleep(0.5)
        raise VMError(f"not within {timeout:.0f} s; console:\n"
                      f"{self.console.read_text(errors='replace')[-3000:]}")

    def journal(self, timeout: float = 60.0) -> list[str]:
        """This boot's journal (`journal` on ttyS2), as the reporter's port carried it."""
        mark = self.last(lambda r: True)
        self.command("journal")
        self.wait(lambda r: r.get("cmd") == "journal", timeout, after=mark)
        text = self.report_log.read_text(errors="replace")
        return [line[3:] for line in text.splitlines() if line.startswith("## ")]

    def last(self, predicate) -> dict | None:
        """The latest report so far for which predicate(report) holds."""
        found = [r for r in self.reports() if predicate(r)]
        return found[-1] if found else None

    def power_cut(self) -> None:
        """qemu killed: no shutdown, no sync beyond what the guest already did."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # by its PID: the qemu this object started
            self.proc.wait(30)
        self._untap()

    def stop(self) -> None:
        """qemu ended by its PID (SIGTERM: the guest has no say), the tap removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._untap()

    def _untap(self) -> None:
        subprocess.run(["ip", "-n", self.switch, "link", "del", self.tap], capture_output=True)

    def remove(self) -> None:
        self.stop()
        self.image.unlink(missing_ok=True)


def make(name: str, workdir: Path, switch: str, mac: str, deb: Path,
         files: dict[str, str], prepare: Callable[[Path], None] | None = None,
         rtc: str | None = None, size: str = "2G") -> VM:
    """A VM image: the cached root copied, the package installed, `files` (path in the
    image -> text) written, the reporter and the command reader enabled, `prepare(root)`
    for the rest (modes, links); the NIC configured by nobody but the agent; then an ext4
    image of it."""
    base = vm_root()
    kernel, initrd = _boot_files(base)
    for stale in workdir.glob(f"{name}.*"):  # an earlier VM of this name: its logs are not ours
        if stale.is_file() or stale.is_socket():
            stale.unlink()
    root = workdir / f"{name}.root"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(root)], check=True)
    try:
        devroot.install(root, deb)
        for path, text in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
        conf = root / "etc/chrony/chrony.conf"  # chronyd's Debian pool: not outside the lab
        conf.write_text("".join(f"# {line}" if line.startswith("pool ") else line
                                for line in conf.read_text().splitlines(keepends=True)))
        (root / "etc/hostname").write_text(f"{name}\n")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for name_, (what, script, text) in FIXTURES.items():
            lib = root / "usr/local/lib/dicom-lab"
            lib.mkdir(parents=True, exist_ok=True)
            (lib / script).write_text(text)
            unit = root / f"etc/systemd/system/{name_}.service"
            unit.write_text(UNIT.format(what=what, script=script))
            (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
        if prepare is not None:
            prepare(root)
        kernel_copy, initrd_copy = workdir / "vmlinuz", workdir / "initrd.img"
        shutil.copy(kernel, kernel_copy)
        shutil.copy(initrd, initrd_copy)
        image = workdir / f"{name}.img"
        image.unlink(missing_ok=True)
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        done = subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise VMError(f"mkfs.ext4 -d: {done.stderr[-2000:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return VM(name, workdir, switch, mac, image, kernel_copy, initrd_copy, rtc=rtc)
