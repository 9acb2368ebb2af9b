"""Install dicom-agent on a device image (`make install`, and the systemd tests).

    python3 agent/install.py --root ROOT --wheelhouse DIR [--prefix /opt/dicom-agent]

Stdlib only, so it runs before anything is installed. Into ROOT (`/` for this machine; a
device image's directory otherwise — commands then run inside it with chroot, on the
image's own python3, which no /root or /home path can hide from ProtectHome):
- a virtual environment at PREFIX/.venv with dicom-agent from the wheelhouse (no index:
  an image being built, or a container in a lab namespace, has none);
- the units: dicom-agent.service, dicom-agent-wait-ready.service, dicom-ready.target, and
  the sntp drop-in as dicom-agent.service.d/sntp.conf.example (copy it to sntp.conf for
  time.mode = "sntp");
- /etc/dicom-agent/agent.toml from the CT example when none exists, and the hooks
  directory;
- /usr/local/bin/dicom-agent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNITS = ("dicom-agent.service", "dicom-agent-wait-ready.service", "dicom-ready.target")


def run_in(root: Path, argv: list[str]) -> None:
    if root != Path("/"):
        argv = ["chroot", str(root), *argv]
    subprocess.run(argv, check=True)


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
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (HERE / "systemd" / name).read_text().replace("/opt/dicom-agent", prefix)
        (units / name).write_text(text)
    dropins = units / "dicom-agent.service.d"
    dropins.mkdir(exist_ok=True)
    shutil.copy(HERE / "systemd" / "sntp.conf", dropins / "sntp.conf.example")
    etc = root / "etc/dicom-agent"
    (etc / "hooks.d").mkdir(parents=True, exist_ok=True)
    if not (etc / "agent.toml").exists():
        shutil.copy(HERE / "examples" / "ct.toml", etc / "agent.toml")
    link = root / "usr/local/bin/dicom-agent"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"{venv}/bin/dicom-agent")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/", type=Path)
    p.add_argument("--wheelhouse", required=True, type=Path)
    p.add_argument("--prefix", default="/opt/dicom-agent")
    args = p.parse_args(argv)
    install(args.root.resolve(), args.wheelhouse.resolve(), args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
