"""Stage dicom-agent for an image: `make install DESTDIR=... PREFIX=...` (files only).

    python3 packaging/stage.py --destdir DIR [--prefix /usr] --wheelhouse WHEELS
                               [--no-deps] [--man build/man] [--unitdir DIR] [--package]
    python3 packaging/stage.py --uninstall --destdir DIR [--prefix /usr]

What the packagers' conventions expect of a staging install (Debian's debian/tmp, Yocto's
and Buildroot's DESTDIR): it writes files under DESTDIR for the final paths and runs
nothing inside it — no chroot, no interpreter of the image, no user created, no unit
enabled; those belong to the package's maintainer scripts or the image build. Stdlib only;
pip (the build host's) writes the Python files.

Under PREFIX (default /usr):
- lib/dicom-agent/python/: the product, and with it its Python dependencies from the
  wheelhouse (no virtual environment: nothing remembers the build machine; --no-deps leaves
  them to the image); no bytecode (compiled on the device, as dh_python3 does);
- bin/dicom-agent: the launcher, the system python3 in isolated mode (-I: no user site,
  no PYTHON* variables) with lib/dicom-agent/python first on its path;
- lib/systemd/system/: dicom-agent.service (`run` reads the system's configuration files),
  dicom-agent-wait-ready.service, dicom-ready.target;
- lib/sysusers.d/dicom-agent.conf, lib/tmpfiles.d/dicom-agent.conf;
- share/man/man8/dicom-agent.8, man5/dicom-agent.toml.5 (from --man: `make man`);
- share/doc/dicom-agent/: the examples and the sntp drop-in for the unit (and
  lib/dicom-agent/sntp.conf, which the package's postinst installs without chronyd);
and /etc/dicom-agent/agent.toml (comments only: it describes no device) and hooks.d/.
Every file written is listed in lib/dicom-agent/installed-files: --uninstall removes those
(but the site's /etc/dicom-agent/agent.toml when it was edited) and the directories left
empty. --package (debian/rules) writes no such list, dpkg keeps its own; --unitdir puts the
units where the package's tools expect them (Debian 12: /lib/systemd/system).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNITS = ("dicom-agent.service", "dicom-agent-wait-ready.service", "dicom-ready.target")
USER = "dicom-agent"
DEFAULT_CONFIG = """\
# dicom-agent's site configuration (dicom-agent.toml(5)). Read after the vendor's
# /usr/lib/dicom-agent/agent.toml.d/*.toml and before /etc/dicom-agent/agent.toml.d/*.toml;
# `dicom-agent check-config --show` prints what is in force, each value with its file.
# It describes no device: the device's name, AEs and connections come from the vendor's
# drop-in or from here.
"""


def launcher_text(prefix: str) -> str:
    return (f"#!/usr/bin/python3 -I\n"
            f'"""dicom-agent (installed under {prefix}: the product and its bundled '
            'dependencies in lib/dicom-agent/python)."""\n'
            "import os\nimport sys\n\n"
            "if os.environ.get(\"PYTHONFAULTHANDLER\"):  # which -I ignores; the unit sets it\n"
            "    import faulthandler\n\n"
            "    faulthandler.enable()  # a watchdog abort prints every thread's stack\n"
            f'sys.path.insert(0, "{prefix}/lib/dicom-agent/python")\n'
            "from agent.commands.cli import main  # noqa: E402\n\n"
            "sys.exit(main())\n")


def unit_text(name: str, prefix: str) -> str:
    text = (REPO / "agent" / "systemd" / name).read_text()
    return text.replace("/usr/bin/dicom-agent", f"{prefix}/bin/dicom-agent")


def sysusers_text() -> str:
    return ("# The DICOM network agent's own user (dicom-agent.service: User=).\n"
            f'u {USER} - "DICOM network agent" /var/lib/dicom-agent -\n')


def tmpfiles_text() -> str:
    return ("# Private files handed to dicom-agent.service by LoadCredential= (root's only).\n"
            "d /etc/dicom-agent/credentials 0700 root root -\n"
            '# chronyd\'s sourcedir (time.mode = "chrony"): the agent writes <if>.sources.\n'
            f"d /run/chrony-dhcp 0755 {USER} {USER} -\n")


class Stage:
    def __init__(self, destdir: Path, prefix: str, unitdir: str | None = None,
                 package: bool = False):
        self.destdir = destdir
        self.prefix = prefix.rstrip("/") or "/usr"
        self.unitdir = unitdir or f"{self.prefix}/lib/systemd/system"
        self.package = package  # a package's tree: dpkg lists the files
        self.written: list[str] = []

    def path(self, rel: str) -> Path:
        return self.destdir / rel.lstrip("/")

    def put(self, rel: str, text: str, mode: int = 0o644) -> None:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        self.written.append(rel)

    def copy(self, source: Path, rel: str) -> None:
        self.put(rel, source.read_text())

    def python(self, wheelhouses: list[Path], deps: bool) -> None:
        """The product (and its dependencies) with the build host's pip: files only."""
        target = self.path(f"{self.prefix}/lib/dicom-agent/python")
        if target.exists():
            shutil.rmtree(target)
        links = [arg for w in wheelhouses for arg in ("--find-links", str(w))]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                        *links, "--target", str(target),
                        "--no-compile", "--no-warn-script-location",
                        *([] if deps else ["--no-deps"]), "dicom-agent"], check=True)
        shutil.rmtree(target / "bin", ignore_errors=True)  # the launcher is ours
        for path in sorted(target.rglob("*")):
            if path.is_file():
                self.written.append(str(path.relative_to(self.destdir)))

    def everything(self, wheelhouses: list[Path], deps: bool, man: Path | None) -> None:
        p = self.prefix
        self.python(wheelhouses, deps)
        self.put(f"{p}/bin/dicom-agent", launcher_text(p), 0o755)
        for name in UNITS:
            self.put(f"{self.unitdir}/{name}", unit_text(name, p))
        self.put(f"{p}/lib/sysusers.d/dicom-agent.conf", sysusers_text())
        self.put(f"{p}/lib/tmpfiles.d/dicom-agent.conf", tmpfiles_text())
        doc = f"{p}/share/doc/dicom-agent"
        self.copy(REPO / "agent" / "systemd" / "sntp.conf", f"{doc}/sntp.conf.example")
        # The package's postinst installs it as the unit's drop-in where the image has no
        # chronyd (share/doc may be left out of a minimal image).
        self.copy(REPO / "agent" / "systemd" / "sntp.conf", f"{p}/lib/dicom-agent/sntp.conf")
        for example in sorted((REPO / "agent" / "examples").glob("*.toml")):
            self.copy(example, f"{doc}/examples/{example.name}")
        if man is not None:
            for page, section in (("dicom-agent.8", 8), ("dicom-agent.toml.5", 5)):
                self.copy(man / page, f"{p}/share/man/man{section}/{page}")
        if self.package or not self.path("/etc/dicom-agent/agent.toml").exists():
            self.put("/etc/dicom-agent/agent.toml", DEFAULT_CONFIG)
        self.path("/etc/dicom-agent/hooks.d").mkdir(parents=True, exist_ok=True)
        if self.package:
            return
        manifest = f"{p}/lib/dicom-agent/installed-files"
        self.written.append(manifest)
        self.put(manifest, "".join(f"{rel.lstrip('/')}\n" for rel in self.written))


def uninstall(destdir: Path, prefix: str) -> list[str]:
    """Remove what the stage wrote; the site's edited configuration stays."""
    manifest = destdir / prefix.strip("/") / "lib/dicom-agent/installed-files"
    if not manifest.exists():
        return []
    kept = []
    # Ours, with whatever the device compiled in it (bytecode is made on the device).
    shutil.rmtree(destdir / prefix.strip("/") / "lib/dicom-agent/python", ignore_errors=True)
    for rel in manifest.read_text().splitlines():
        path = destdir / rel
        if rel == "etc/dicom-agent/agent.toml" and path.exists() and \
                hashlib.sha256(path.read_bytes()).digest() != \
                hashlib.sha256(DEFAULT_CONFIG.encode()).digest():
            kept.append(rel)  # edited by the site
            continue
        if path.is_file() or path.is_symlink():
            path.unlink()
        parent = path.parent
        while parent != destdir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--destdir", type=Path, required=True)
    p.add_argument("--prefix", default="/usr")
    p.add_argument("--wheelhouse", type=Path, action="append", default=[],
                   help="a folder of wheels (repeat it: the product's, pre-fetched ones)")
    p.add_argument("--no-deps", action="store_true",
                   help="leave the Python dependencies to the image (BUNDLE_DEPS=0)")
    p.add_argument("--man", type=Path, help="the built man pages (make man)")
    p.add_argument("--unitdir", help="where the units go [PREFIX/lib/systemd/system]")
    p.add_argument("--package", action="store_true",
                   help="a package's tree (debian/rules): no installed-files list")
    p.add_argument("--uninstall", action="store_true")
    args = p.parse_args(argv)
    destdir = args.destdir.resolve()
    if args.uninstall:
        for rel in uninstall(destdir, args.prefix):
            print(f"kept /{rel} (edited)")
        return 0
    if not args.wheelhouse:
        p.error("--wheelhouse is required")
    destdir.mkdir(parents=True, exist_ok=True)
    Stage(destdir, args.prefix, args.unitdir, args.package).everything(
        [w.resolve() for w in args.wheelhouse], not args.no_deps,
        args.man.resolve() if args.man else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
