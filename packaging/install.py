"""Install dicom-agent on a device image (`make install`, `make uninstall`, the systemd tests).

    python3 packaging/install.py --root ROOT --wheelhouse DIR [--prefix /opt/dicom-agent]
    python3 packaging/install.py --uninstall --root ROOT [--prefix /opt/dicom-agent]

Stdlib only, so it runs before anything is installed. Into ROOT (`/` for this machine; a
device image's directory otherwise — commands then run inside it with chroot, on the
image's own python3, which no /root or /home path can hide from ProtectHome):
- a virtual environment at PREFIX/.venv with dicom-agent from the wheelhouse (no index:
  an image being built, or a container in a lab namespace, has none);
- the units: dicom-agent.service, dicom-agent-wait-ready.service, dicom-ready.target; the
  sntp drop-in as dicom-agent.service.d/sntp.conf.example (copy it to sntp.conf for
  time.mode = "sntp"); when the image has chronyd, the drop-in chrony.conf
  (SupplementaryGroups=) and one for chronyd's unit that opens its command socket to
  its group;
- the `dicom-agent` system user (sysusers.d) and tmpfiles.d: the credentials directory,
  chronyd's sourcedir, and /etc/resolv.conf owned by the agent when it is a plain file;
- /etc/dicom-agent/agent.toml from the CT example when none exists, and the hooks
  directory;
- /usr/local/bin/dicom-agent.

Uninstall removes what install made and keeps what the site made or the device learned:
/etc/dicom-agent (configuration, credentials, hooks), /var/lib/dicom-agent (lease, AE
titles owned) and the user (a system user's uid may still own files), as `apt remove`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "agent"  # units and examples: package data
UNITS = ("dicom-agent.service", "dicom-agent-wait-ready.service", "dicom-ready.target")
USER = "dicom-agent"
CHRONY_GROUPS = ("_chrony", "chrony")  # Debian, Fedora
CHRONY_UNITS = ("chrony.service", "chronyd.service")  # Debian, Fedora
SYSUSERS = "etc/sysusers.d/dicom-agent.conf"
TMPFILES = "etc/tmpfiles.d/dicom-agent.conf"
DROPINS = "etc/systemd/system/dicom-agent.service.d"
LINK = "usr/local/bin/dicom-agent"


def run_in(root: Path, argv: list[str]) -> None:
    if root != Path("/"):
        argv = ["chroot", str(root), *argv]
    subprocess.run(argv, check=True)


def chrony_group(root: Path) -> str | None:
    """chronyd's group in the image, if it has one."""
    try:
        names = {line.split(":", 1)[0] for line in (root / "etc/group").read_text().splitlines()}
    except OSError:
        return None
    return next((g for g in CHRONY_GROUPS if g in names), None)


def sysusers_text() -> str:
    return ("# The DICOM network agent's own user (dicom-agent.service: User=).\n"
            f'u {USER} - "DICOM network agent" /var/lib/dicom-agent -\n')


def tmpfiles_text(resolv_conf_is_file: bool) -> str:
    lines = [
        "# Private files handed to dicom-agent.service by LoadCredential= (root's only).",
        "d /etc/dicom-agent/credentials 0700 root root -",
        "# chronyd's sourcedir (time.mode = \"chrony\"): the agent writes <interface>.sources.",
        f"d /run/chrony-dhcp 0755 {USER} {USER} -",
    ]
    if resolv_conf_is_file:
        lines += ["# The device's resolver file, written by the agent in place (F.1.3.4).",
                  f"f /etc/resolv.conf 0644 {USER} {USER} -"]
    return "\n".join(lines) + "\n"


def chrony_unit(root: Path) -> str | None:
    """chronyd's unit in the image, if it has one."""
    for name in CHRONY_UNITS:
        for base in ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"):
            if (root / base / name).exists():
                return name
    return None


def chrony_dropin_text(group: str) -> str:
    return ("# Written by the install: this image has chronyd. time.mode = \"chrony\" runs\n"
            "# chronyc on chronyd's command socket, as a member of chronyd's group.\n"
            f"[Service]\nSupplementaryGroups={group}\n")


def chrony_socket_dropin_text() -> str:
    # chronyd's command socket is 0755 and its directory (the unit's RuntimeDirectory)
    # 0700: root and chronyd's user only. chronyc binds its own socket in that directory
    # and connects to chronyd's, so the group needs both; chronyd accepts up to 0770.
    return ("# Written by the dicom-agent install: chronyd's group may use the command\n"
            "# socket, so that dicom-agent (a member) can reload DHCP's NTP sources.\n"
            "[Service]\nRuntimeDirectoryMode=0770\n"
            "ExecStartPost=/bin/chmod g+w /run/chrony/chronyd.sock\n")


def write_system_files(root: Path, prefix: str) -> list[str]:
    """Units, drop-ins, sysusers.d and tmpfiles.d, the configuration: every file but the
    virtual environment. Returns the paths written (relative to ROOT)."""
    written = []

    def put(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(rel)

    for name in UNITS:
        put(f"etc/systemd/system/{name}",
            (HERE / "systemd" / name).read_text().replace("/opt/dicom-agent", prefix))
    put(f"{DROPINS}/sntp.conf.example", (HERE / "systemd" / "sntp.conf").read_text())
    group, unit = chrony_group(root), chrony_unit(root)
    if group and unit:
        put(f"{DROPINS}/chrony.conf", chrony_dropin_text(group))
        put(f"etc/systemd/system/{unit}.d/dicom-agent.conf", chrony_socket_dropin_text())
    put(SYSUSERS, sysusers_text())
    resolv = root / "etc/resolv.conf"
    put(TMPFILES, tmpfiles_text(not resolv.is_symlink()))
    etc = root / "etc/dicom-agent"
    (etc / "hooks.d").mkdir(parents=True, exist_ok=True)
    (etc / "credentials").mkdir(mode=0o700, exist_ok=True)
    if not (etc / "agent.toml").exists():
        shutil.copy(HERE / "examples" / "ct.toml", etc / "agent.toml")
        (etc / "agent.toml").chmod(0o644)
        written.append("etc/dicom-agent/agent.toml")
    return written


def install(root: Path, wheelhouse: Path, prefix: str = "/opt/dicom-agent") -> None:
    venv = f"{prefix}/.venv"
    inside = Path("/tmp/dicom-agent-wheels")
    staged = root / inside.relative_to("/")
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(wheelhouse, staged)
    try:
        run_in(root, ["python3", "-m", "venv", venv])
        run_in(root, [f"{venv}/bin/pip", "install", "-q", "--no-index", "--find-links",
                      str(inside), "dicom-agent"])
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    write_system_files(root, prefix)
    # The user and the paths now, not only at the next boot (systemd-sysusers.service and
    # systemd-tmpfiles-setup.service apply the same files then).
    run_in(root, ["systemd-sysusers", f"/{SYSUSERS}"])
    # tmpfiles needs /proc, which a chroot has not: the build host's, on the image's files
    # and user database (--root); systemd-tmpfiles-setup applies them at boot regardless.
    if root == Path("/"):
        subprocess.run(["systemd-tmpfiles", "--create", f"/{TMPFILES}"], check=True)
    elif shutil.which("systemd-tmpfiles"):
        subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                        Path(TMPFILES).name], check=True)
    link = root / LINK
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"{venv}/bin/dicom-agent")


def uninstall(root: Path, prefix: str = "/opt/dicom-agent") -> list[str]:
    """Remove what install made; returns what it kept, for the message."""
    if shutil.which("systemctl"):
        subprocess.run(["systemctl", f"--root={root}", "disable", *UNITS],
                       capture_output=True)
    chrony = [f"etc/systemd/system/{u}.d/dicom-agent.conf" for u in CHRONY_UNITS]
    for rel in (*(f"etc/systemd/system/{u}" for u in UNITS), f"{DROPINS}/sntp.conf.example",
                f"{DROPINS}/chrony.conf", *chrony, SYSUSERS, TMPFILES, LINK):
        path = root / rel
        if path.is_symlink() or path.exists():
            path.unlink()
    for rel in (DROPINS, *(str(Path(c).parent) for c in chrony)):
        dropins = root / rel
        if dropins.is_dir() and not any(dropins.iterdir()):
            dropins.rmdir()  # a site's own drop-ins (sntp.conf) keep it
    shutil.rmtree(root / prefix.lstrip("/"), ignore_errors=True)
    return [p for p in ("etc/dicom-agent", "var/lib/dicom-agent", DROPINS)
            if (root / p).exists()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/", type=Path)
    p.add_argument("--wheelhouse", type=Path)
    p.add_argument("--prefix", default="/opt/dicom-agent")
    p.add_argument("--uninstall", action="store_true")
    args = p.parse_args(argv)
    root = args.root.resolve()
    if args.uninstall:
        for kept in uninstall(root, args.prefix):
            print(f"kept /{kept} (remove it by hand to purge)")
        return 0
    if args.wheelhouse is None:
        p.error("--wheelhouse is required to install")
    install(root, args.wheelhouse.resolve(), args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
